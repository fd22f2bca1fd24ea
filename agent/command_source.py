"""A camera read from a program's standard output: ``source: {command: [...]}``.

The boards' own cameras can't be opened by the pip OpenCV: a Raspberry Pi's CSI camera speaks libcamera
(``rpicam-vid``), a Jetson's goes through GStreamer (``nvarguscamerasrc``). Their tools can write MJPEG to
stdout, and :class:`CommandSource` reads that: one opening is one run of the program (its own process
group, no shell unless ``shell: true``, stdin from /dev/null). It plugs into the capture like any source
(:mod:`agent.capture`): the same stall detection, reopen backoff and newest-frame slot. When the program
exits the opening fails and the supervisor starts it again after the backoff; when the opening is given up
(a stall) or the camera stops, the whole process group is sent SIGTERM, then SIGKILL after a grace period,
and reaped. Should the agent itself die without cleaning up, the program's next write fails with EPIPE,
which ends rpicam-vid, gst-launch-1.0 and ffmpeg (under systemd the unit's cgroup is killed anyway).

Formats: ``mjpeg`` (JPEG images back to back; bytes between them, such as ``multipartmux`` headers, are
skipped; :class:`JpegSplitter`) and ``bgr24`` (raw frames of the camera's ``width`` x ``height``). A skipped
frame costs splitting, never a decode; JPEGs are decoded by the camera's :class:`PacketDecoder` (at a
reduced size when that is all the consumer needs).

The program's stderr is drained on its own thread (so the program never blocks on it) and logged on
``agent.capture`` at most :data:`_STDERR_LINES` lines per :data:`_STDERR_WINDOW_S` seconds. Its environment
is the agent's without the secrets (:func:`child_environment`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

import numpy as np

from agent.config import CameraSettings
from agent.sources import PacketDecoder, Picture

__all__ = ["CommandSource", "JpegSplitter", "LineLimiter", "child_environment"]

log = logging.getLogger("agent.capture")

_CHUNK = 1 << 16
_MAX_JPEG = 32 << 20  # a "frame" larger than this is garbage: resynchronise on the next SOI
_KILL_GRACE_S = 2.0
_STDERR_LINES = 5
_STDERR_WINDOW_S = 30.0
_STDERR_LINE_MAX = 300
_SECRET_NAME = re.compile(r"KEY|PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL", re.IGNORECASE)


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The agent's environment without variables whose names look like secrets (ROBOFLOW_API_KEY,
    MQTT_PASSWORD, ...): the camera program needs none of them."""
    return {k: v for k, v in env.items() if not _SECRET_NAME.search(k)}


class JpegSplitter:
    """Cuts a byte stream into whole JPEG images by walking their markers (not by searching for FFD9, which
    may occur inside an Exif thumbnail). Bytes outside images are dropped."""

    def __init__(self, max_bytes: int = _MAX_JPEG) -> None:
        self._buf = bytearray()
        self._pos = 0  # where the walk of the image at the start of _buf continues; 0: no SOI found yet
        self._in_scan = False  # _pos is inside entropy-coded data
        self._max = max_bytes
        self.dropped = 0  # bytes skipped outside images

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def next_jpeg(self) -> bytes | None:
        """The next whole JPEG in the stream so far, or None until more data arrives."""
        while True:
            if self._pos == 0 and not self._sync():
                return None
            end = self._walk()
            if end is None:
                if len(self._buf) > self._max:
                    self._resync(1)
                    continue
                return None
            if end < 0:  # not a JPEG after all: look for the next SOI
                self._resync(1)
                continue
            image = bytes(self._buf[:end])
            del self._buf[:end]
            self._pos, self._in_scan = 0, False
            return image

    def _sync(self) -> bool:
        start = self._buf.find(b"\xff\xd8\xff")
        if start < 0:
            keep = 2 if self._buf.endswith(b"\xff\xd8") else 1 if self._buf.endswith(b"\xff") else 0
            self.dropped += len(self._buf) - keep
            del self._buf[: len(self._buf) - keep]
            return False
        self.dropped += start
        del self._buf[:start]
        self._pos, self._in_scan = 2, False
        return True

    def _resync(self, skip: int) -> None:
        self.dropped += skip
        del self._buf[:skip]
        self._pos, self._in_scan = 0, False

    def _walk(self) -> int | None:
        """The end of the image at the start of the buffer; None: incomplete; -1: malformed."""
        buf, i, n = self._buf, self._pos, len(self._buf)
        while True:
            if self._in_scan:
                j = buf.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    self._pos = n if j < 0 else j  # resume where the data ran out
                    return None
                nxt = buf[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:  # stuffed byte, restart marker, fill
                    i = j + 1 if nxt == 0xFF else j + 2
                    continue
                self._in_scan, i = False, j
            if i + 2 > n:
                self._pos = i
                return None
            if buf[i] != 0xFF:
                return -1
            marker = buf[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if marker == 0xD9:
                return i + 2
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                i += 2
                continue
            if i + 4 > n:
                self._pos = i
                return None
            length = (buf[i + 2] << 8) | buf[i + 3]
            if length < 2:
                return -1
            i += 2 + length
            if marker == 0xDA:
                self._in_scan = True


class LineLimiter:
    """At most ``lines`` per ``window_s``; says how many were held back when a new window opens."""

    def __init__(self, lines: int = _STDERR_LINES, window_s: float = _STDERR_WINDOW_S) -> None:
        self._lines = lines
        self._window = window_s
        self._start: float | None = None
        self._shown = 0
        self._held = 0

    def admit(self, now: float) -> tuple[bool, int]:
        """``(show this line?, lines held back since the last shown one, to report now)``."""
        held = 0
        if self._start is None or now - self._start >= self._window:
            self._start, self._shown, held, self._held = now, 0, self._held, 0
        if self._shown < self._lines:
            self._shown += 1
            return True, held
        self._held += 1
        return False, held


class CommandSource:
    """One run of the camera's command (see the module docstring). ``interrupt()`` may be called from any
    thread: it ends the program, so that a read blocked on it returns."""

    def __init__(
        self,
        settings: CameraSettings,
        decoder: PacketDecoder,
        *,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
    ) -> None:
        assert settings.command is not None
        self.settings = settings
        self.command = settings.command
        self.decoder = decoder
        self._clock = clock
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._splitter = JpegSplitter()
        self._raw = bytearray()
        self._frame: bytes | None = None
        self._proven = False
        self._stopped_by_us = False
        self._lock = threading.Lock()
        self._stderr_thread: threading.Thread | None = None
        self._last_stderr = ""

    @property
    def _program(self) -> str:
        argv = self.command.argv
        return argv[2].split(None, 1)[0] if self.command.shell and len(argv) > 2 and argv[2].split() else argv[0]

    def open(self) -> bool:
        env = child_environment(os.environ if self._env is None else self._env)
        try:
            proc = subprocess.Popen(
                list(self.command.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,  # its own process group: killed as a whole
            )
        except OSError as exc:
            log.warning("camera %s: cannot start %s: %s", self.settings.name, self._program, exc.strerror or exc)
            return False
        with self._lock:
            self.proc = proc
        assert proc.stderr is not None
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, args=(proc.stderr,), name=f"command-{self.settings.name}", daemon=True
        )
        self._stderr_thread.start()
        log.debug("camera %s: started %s (pid %d)", self.settings.name, self._program, proc.pid)
        return True

    def grab(self) -> bool:
        """Read the next whole frame (False: the program ended, or nothing came for stall_timeout_s)."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = self._clock() + self.settings.stall_timeout_s
        while True:
            frame = self._next_frame()
            if frame is not None:
                self._frame = frame
                return True
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            try:
                data = os.read(fd, _CHUNK)
            except OSError:
                data = b""
            if not data:
                self._report_exit(proc)
                return False
            self._feed(data)

    def retrieve(self) -> Picture | None:
        frame = self._frame
        if frame is None:
            return None
        if self.command.format == "bgr24":
            h, w = self.settings.height, self.settings.width
            image = np.frombuffer(frame, dtype=np.uint8).reshape(h, w, 3).copy()
            return Picture(image, (h, w))
        try:
            picture = self.decoder.decode(np.frombuffer(frame, dtype=np.uint8), proven=self._proven)
        except RuntimeError:
            raise RuntimeError(f"{self._program}'s output is not a stream of JPEG images (format: mjpeg)") from None
        if picture is not None and picture.image is not None:
            self._proven = True
        return picture

    def file_fps(self) -> float:
        return 0.0

    def rewind(self) -> bool:
        return False

    def interrupt(self) -> None:
        """End the program now (SIGTERM to its process group); ``release`` reaps it."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.returncode is not None:
                return
            self._stopped_by_us = True
            _signal_group(proc, signal.SIGTERM)

    def release(self) -> None:
        with self._lock:
            proc = self.proc
            if proc is None:
                return
            if proc.poll() is None:
                self._stopped_by_us = True
                _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_KILL_GRACE_S)
        _signal_group(proc, signal.SIGKILL)  # anything it left behind in its group
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(1.0)

    # ------------------------------------------------------------------ helpers

    def _next_frame(self) -> bytes | None:
        if self.command.format == "mjpeg":
            return self._splitter.next_jpeg()
        size = self.settings.width * self.settings.height * 3
        if len(self._raw) < size:
            return None
        frame = bytes(self._raw[:size])
        del self._raw[:size]
        return frame

    def _feed(self, data: bytes) -> None:
        if self.command.format == "mjpeg":
            self._splitter.feed(data)
        else:
            self._raw += data

    def _report_exit(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_KILL_GRACE_S)
        if self._stopped_by_us:
            return
        if self._stderr_thread is not None:
            self._stderr_thread.join(0.5)
        status = proc.returncode
        how = "is still running" if status is None else f"exited with status {status}"
        if status is not None and status < 0:
            how = f"was killed by signal {-status}"
        last = f" (last output: {self._last_stderr})" if self._last_stderr else ""
        log.warning("camera %s: %s closed its output and %s%s", self.settings.name, self._program, how, last)

    def _drain_stderr(self, pipe: IO[bytes]) -> None:
        limiter = LineLimiter()
        name = self.settings.name
        with contextlib.suppress(OSError, ValueError):
            for raw in iter(lambda: pipe.readline(4096), b""):
                for part in raw.replace(b"\r", b"\n").split(b"\n"):
                    line = part.decode("utf-8", "replace").strip()[:_STDERR_LINE_MAX]
                    if not line:
                        continue
                    self._last_stderr = line
                    show, held = limiter.admit(time.monotonic())
                    if held:
                        log.info("camera %s: (%d more lines from %s not shown)", name, held, self._program)
                    if show:
                        log.info("camera %s: %s: %s", name, self._program, line)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: its process group id is its pid
