"""Logging for a systemd service: one line per event, secrets redacted.

:func:`setup_logging` installs one handler on the root logger. When stderr is connected to the journal
(systemd sets ``$JOURNAL_STREAM`` to its ``device:inode``), lines carry no timestamp (journald adds its own)
and start with a ``<N>`` syslog priority that journald turns into the entry's priority; elsewhere they read
``2026-11-27T12:00:00.123Z INFO agent.capture: message`` (UTC).

Redaction: :func:`redact` is the one place that hides credentials, in log records and in any text that may
reach a log, an exception or a status message. :func:`add_secret` registers a string (the API key, the MQTT
password) that is then replaced by ``***`` wherever it appears in a log record: the message, its arguments,
exception text and stack; :func:`redact` also takes strings to hide just this once. Values of
``api_key=``/``token=``/``password=`` query parameters, the password in ``scheme://user:pass@host`` URLs and
``Authorization:`` header values are always redacted, registered or not. :func:`redact_loggers` puts the
redacting filter on named loggers, for handlers that aren't ours. Nothing happens at import time.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TextIO
from urllib.parse import quote, quote_plus

__all__ = [
    "RedactingFilter",
    "Throttle",
    "add_secret",
    "clear_secrets",
    "redact",
    "redact_loggers",
    "reset_logging",
    "setup_logging",
    "stream_is_journal",
]

REDACTED = "***"

# ``key=value`` pairs whose value is always a credential (URL queries, form bodies, "k=v" text).
_PARAM_RE = re.compile(
    r"(?i)((?<![\w-])[\w-]*?(?:api[_-]?key|key|token|password|passwd|pass|pwd|secret|auth|signature)=)[^&#;\s'\"<>]+"
)
# ``scheme://user:password@host``: keep the user, hide the password.
# The password may itself hold '@': the authority ends at the last '@' before the path.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/@:]*):([^\s/]*)@")
# ``Authorization: Bearer <token>`` / ``Basic <base64>`` (e.g. from urllib3/http.client debug output).
_AUTH_HEADER_RE = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic|token)\s+)[^\s'\",}]+")

_secrets_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()  # replaced whole, never changed in place: read without the lock


def _forms(secret: str) -> set[str]:
    """``secret`` as it may appear in text: plain and URL-encoded (``/`` kept or escaped, space as ``+``)."""
    if not secret.strip():
        return set()
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}


@lru_cache(maxsize=16)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str]:
    # Longest first, so that a secret containing another is hidden whole.
    return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)))


def add_secret(secret: str) -> None:
    """Registers a string to hide in every log record from now on (empty or blank strings are ignored).

    Its URL-encoded forms are registered too, since keys and passwords travel in URLs.
    """
    global _secrets
    forms = _forms(secret)
    with _secrets_lock:
        if forms and not forms <= _secrets:
            _secrets = _secrets | forms


def clear_secrets() -> None:
    """Forgets every registered secret (for tests)."""
    global _secrets
    with _secrets_lock:
        _secrets = frozenset()


def redact(text: str, *secrets: str) -> str:
    """``text`` with credential parameters, URL passwords, authorization headers, the registered secrets and
    ``secrets`` (plain or URL-encoded; hidden this once, not registered) replaced by ``***``."""
    hidden = _secrets
    if secrets:
        hidden = hidden.union(*(_forms(s) for s in secrets))
    if hidden:
        text = _pattern(hidden).sub(REDACTED, text)
    if "=" in text:
        text = _PARAM_RE.sub(r"\1" + REDACTED, text)
    if "://" in text:
        text = _USERINFO_RE.sub(r"\1\2:" + REDACTED + "@", text)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER_RE.sub(r"\1" + REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so that no handler after it sees a secret.

    The message is formatted with its arguments and redacted (``args`` becomes ``None``); exception and
    stack text are formatted now and redacted too (``logging.Formatter`` reuses ``record.exc_text``).
    Attach it to every handler that writes somewhere: a filter on a logger only sees records logged on that
    very logger, not those propagated from its children.
    """

    _exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as logging does
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_LOGGER_FILTER = RedactingFilter()


def redact_loggers(*names: str) -> None:
    """Puts the redacting filter on the loggers ``names`` (idempotent), so that handlers that aren't ours
    (pytest's caplog, an embedding application) see their records redacted too. A logger's filters see
    only the records made by that very logger, not its children's: name each one."""
    with _secrets_lock:
        for name in names:
            logger = logging.getLogger(name)
            if _LOGGER_FILTER not in logger.filters:
                logger.addFilter(_LOGGER_FILTER)


# sd-daemon(3) priorities: <2> crit, <3> err, <4> warning, <5> notice, <6> info, <7> debug.
def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno > logging.INFO:
        return 5
    if levelno >= logging.INFO:
        return 6
    return 7


class _LineFormatter(logging.Formatter):
    """``<N>logger: message`` for the journal, ``ISO-time LEVEL logger: message`` otherwise."""

    def __init__(self, journal: bool) -> None:
        super().__init__("%(name)s: %(message)s")
        self.journal = journal

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        # Redacting the finished text as well covers records that reach this formatter without the filter.
        text = redact(super().format(record))
        if self.journal:
            # journald stores each line as its own entry: give every line of a traceback the priority.
            prefix = f"<{_syslog_priority(record.levelno)}>"
            return "\n".join(prefix + line for line in text.split("\n"))
        return f"{self.formatTime(record)} {record.levelname} {text}"


class _AgentHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`setup_logging` owns; found again by type so a second call replaces it."""


def stream_is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal's stream socket, as ``$JOURNAL_STREAM`` (``dev:inode``) says."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (AttributeError, OSError, ValueError):
        return False


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def setup_logging(level: str, *, stream: TextIO | None = None, journal: bool | None = None) -> None:
    """Sends every log record to ``stream`` (default: ``sys.stderr`` at call time), one line per event.

    ``level``: debug, info, warning, error or critical (any case). ``journal``: force the journal format
    on or off; by default it is used when ``stream`` is the journal. Calling it again replaces the handler
    it installed before (level, stream, format), never adds a second one; other handlers are left alone.
    """
    levelno = _LEVELS.get(level.strip().lower())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}; one of {', '.join(sorted(set(_LEVELS) - {'warn'}))}")
    target = sys.stderr if stream is None else stream
    use_journal = stream_is_journal(target) if journal is None else journal

    handler = _AgentHandler(target)
    handler.setFormatter(_LineFormatter(use_journal))
    handler.addFilter(RedactingFilter())

    reset_logging()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(levelno)
    logging.captureWarnings(True)  # warnings.warn() -> the "py.warnings" logger, same format


def reset_logging() -> None:
    """Removes the handler :func:`setup_logging` installed (for tests and in-process command runs)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _AgentHandler)]:
        root.removeHandler(handler)
        handler.close()
    logging.captureWarnings(False)


class Throttle:
    """Rate-limits a repeated log line: the first of each ``key`` is written, then at most one per
    ``interval_s``, saying how many like it were held back meanwhile. Thread-safe; the clock is injectable."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Write ``message % args`` unless a line of ``key`` went out under ``interval_s`` ago; True if written."""
        now = self._clock()
        with self._lock:
            if now < self._next.get(key, -math.inf):
                self._held[key] = self._held.get(key, 0) + 1
                return False
            held = self._held.pop(key, 0)
            self._next[key] = now + self._interval_s
        if held:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, held, self._interval_s)
        self._logger.log(level, message, *args)
        return True
