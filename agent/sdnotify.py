"""systemd's notification protocol (``sd_notify``), standard library only.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: an ``AF_UNIX``/``SOCK_DGRAM`` socket, a
filesystem path or, with a leading ``@``, a name in the abstract namespace. Each notification is one
datagram of ``KEY=value`` lines (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``). With
``WatchdogSec=`` set, systemd also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``); the service must send
``WATCHDOG=1`` at least that often, and this module suggests every half of it.

Outside systemd (no ``$NOTIFY_SOCKET``) a :class:`Notifier` does nothing and every call returns ``False``,
so callers never need to check. Sending never raises: a failure is logged once at debug level.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Mapping
from types import TracebackType

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SEND_TIMEOUT_S = 1.0
_MAX_VALUE = 1024  # systemd reads at most a few KiB per datagram; a status line needs far less


class Notifier:
    """Sends notifications to the service manager; a no-op when not started by systemd."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """``address``: the socket (a path, or ``"@name"`` for the abstract namespace); ``None``: disabled.

        ``watchdog_usec``: the watchdog timeout in microseconds, ``None`` or ``0`` when there is none.
        Prefer :meth:`from_env`.
        """
        self._lock = threading.Lock()
        self._failing = False
        self._address = self._parse_address(address)
        self._sock: socket.socket | None = None
        if self._address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receive queue blocks sendto(); never let that stall the caller for long.
                self._sock.settimeout(_SEND_TIMEOUT_S)
            except OSError as exc:
                log.debug("cannot create the notification socket: %s", exc)
        # Without a socket there is nobody to send WATCHDOG=1 to, so no watchdog either.
        self.watchdog_interval_s: float | None = (
            watchdog_usec / 2 / 1_000_000
            if self._sock is not None and watchdog_usec is not None and watchdog_usec > 0
            else None
        )

    @staticmethod
    def _parse_address(address: str | None) -> str | None:
        if not address:
            return None
        if address.startswith("@"):
            return "\0" + address[1:]  # abstract namespace: the name starts with a NUL byte, not '@'
        if address.startswith("/"):
            return address
        log.debug("NOTIFY_SOCKET %r is neither a path nor an abstract name: notifications disabled", address)
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier:
        """Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` the way systemd sets them.

        The watchdog is ignored when ``WATCHDOG_PID`` names another process (the variables were inherited
        by a child of the service's main process) or when ``WATCHDOG_USEC`` is not a positive integer.
        """
        usec: int | None = None
        raw_usec = environ.get("WATCHDOG_USEC", "").strip()
        if raw_usec:
            try:
                usec = int(raw_usec)
            except ValueError:
                log.debug("ignoring WATCHDOG_USEC=%r: not an integer", raw_usec)
        raw_pid = environ.get("WATCHDOG_PID", "").strip()
        if usec is not None and raw_pid:
            try:
                pid = int(raw_pid)
            except ValueError:
                pid = -1
            if pid != os.getpid():
                log.debug("ignoring the watchdog: WATCHDOG_PID=%s, we are %d", raw_pid, os.getpid())
                usec = None
        return cls(environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a socket to send to."""
        return self._sock is not None and self._address is not None

    def notify(self, **fields: str) -> bool:
        """Sends ``KEY=value`` lines in one datagram, in the order given; True when it was sent.

        Newlines in values are replaced by spaces (they would start a new field) and values are cut at
        1024 characters. Keys must be upper-case ``[A-Z][A-Z0-9_]*``; anything else sends nothing.
        """
        if not fields:
            return False
        lines = []
        for key, value in fields.items():
            if not _KEY_RE.match(key):
                log.warning("not sending notification: invalid key %r", key)
                return False
            text = str(value).replace("\r", " ").replace("\n", " ")[:_MAX_VALUE]
            lines.append(f"{key}={text}")
        data = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            sock, address = self._sock, self._address
            if sock is None or address is None:
                return False
            try:
                sock.sendto(data, address)
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    log.debug("sd_notify to %r failed: %s", self._printable_address(), exc)
                return False
            self._failing = False
            return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (systemd then starts the watchdog clock)."""
        if status is None:
            return self.notify(READY="1")
        return self.notify(READY="1", STATUS=status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``; does nothing (False) when no watchdog was configured for this process."""
        if self.watchdog_interval_s is None:
            return False
        return self.notify(WATCHDOG="1")

    def status(self, text: str) -> bool:
        """``STATUS=text``: the one line ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify(STOPPING="1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: asks for ``seconds`` more of the start (or stop) timeout from now on.

        For a long start-up step, such as building a TensorRT engine, before ``READY=1``.
        """
        return self.notify(EXTEND_TIMEOUT_USEC=str(max(0, int(seconds * 1_000_000))))

    def close(self) -> None:
        """Closes the socket; later calls do nothing and return False."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Notifier(address={self._printable_address()!r}, "
            f"watchdog_interval_s={self.watchdog_interval_s!r}, enabled={self.enabled})"
        )

    def _printable_address(self) -> str | None:
        address = self._address
        if address is not None and address.startswith("\0"):
            return "@" + address[1:]
        return address
