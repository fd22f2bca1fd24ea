"""Camera capture: the supervisor of one video source, which keeps only the newest sampled frame.

One :class:`Camera` per configured source, split as in Frigate: a *source* (:mod:`agent.sources`: open,
grab, retrieve), the pure *sampling* of a live stream by the clock or of a file by its own timeline
(:mod:`agent.sampling`), the *attempt* that reads one opening of the source (:mod:`agent.reading`), and here
the supervisor: the newest-frame slot, the state machine, and reopening with backoff.

``start()`` launches a supervisor thread, which runs one attempt at a time. When the attempt fails (cannot
open, stream ended, read error) the supervisor waits (exponential backoff) and starts another. When the
attempt hangs inside a native OpenCV call (which Python cannot interrupt), the supervisor notices from the
age of the newest frame, abandons it (the generation counter makes its thread stale: it releases its capture
and exits as soon as the native call returns) and opens a new capture. A source that can be unblocked
(``interrupt()``: a command source ends its program) is interrupted when abandoned and on ``stop()``.

Sampling (``settings.fps``; 0 = every frame) only decodes what it hands out: skipped frames are grabbed,
never retrieved, and MJPEG sources are read as raw packets so that a skipped frame costs a packet read, not
a decode (see :mod:`agent.sources`). Such packets may also be decoded at a reduced size: given a
:class:`DecodePolicy` (what the consumer needs of a frame of a given size, e.g. a model's letterbox
content), a 1920x1080 JPEG for a 416x416 model is decoded at 1/4 (480x270) by libjpeg's DCT scaling,
several times cheaper than a full decode; the :class:`Frame` keeps the true size in ``frame_hw``. A frame
that goes to the hosted API as the camera's own JPEG is not decoded at all (``Frame.pixels`` decodes it if
it is needed after all). Live sources are sampled by the wall clock; files by their own timeline (frame
index / file fps). With ``realtime: true`` a file plays at its native pace with the same newest-frame
semantics as a camera; with ``realtime: false`` every sampled frame is handed out exactly once, in order
(back-pressure: the attempt waits for the consumer).

States (:class:`CameraState`, ``CameraStatus.state``, one log line on ``agent.capture`` per change):
``starting`` until the first frame; ``streaming``; ``stalled`` when the source timed out (no frame
for ``stall_timeout_s``, an open that timed out, a hung native call) and ``reconnecting`` when it
failed (refused, not found, stream ended, decode errors): both keep being retried with backoff from
``reconnect_min_s`` to ``reconnect_max_s`` (back to the minimum after a frame) and last until a frame
arrives; ``ended`` (a file without ``loop`` fully handed out); ``stopped`` (before ``start()`` and
after ``stop()``). Credentials in URLs never reach logs or ``last_error``.

Importing this module has no side effects; ``Camera()`` does no I/O and starts no thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agent.command_source import CommandSource
from agent.config import CameraSettings
from agent.frames import DecodePolicy, Frame
from agent.jpeg import decode_jpeg, jpeg_has_exif, jpeg_hw, reduction_factor
from agent.logs import redact
from agent.measures import Rate
from agent.reading import Attempt, Sampled
from agent.sources import PacketDecoder, Source, SourceFactory, VideoSource

__all__ = [
    "Camera",
    "CameraState",
    "CameraStatus",
    "DecodePolicy",
    "Frame",
    "decode_jpeg",
    "jpeg_has_exif",
    "jpeg_hw",
    "reduction_factor",
]

log = logging.getLogger("agent.capture")

_MAX_HUNG_THREADS = 3  # abandoned threads still stuck in native calls before we stop opening more


class CameraState(StrEnum):
    STARTING = "starting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class CameraStatus:
    name: str
    state: CameraState  # a str: "starting", "streaming", ...
    frames_read: int  # frames read from the source (grab count)
    frames_sampled: int  # frames handed out by read()
    frames_skipped: int  # sampled frames the newest-frame slot replaced before the worker took them
    fps_in: float  # measured rate of frames read from the source, recent window
    fps_out: float  # measured rate of sampled frames handed out, recent window
    reconnects: int
    last_error: str | None  # never contains URL credentials
    last_frame_age_s: float | None
    width: int  # of the last frame, 0 before the first
    height: int


class _FileTimeline:
    """``realtime: false``: a file's own timeline (``Sampled.file_time``), anchored at the wall time its first
    frame was read; ``None`` for frames with no file time (live sources, ``realtime: true``)."""

    __slots__ = ("_t0",)

    def __init__(self) -> None:
        self._t0: float | None = None  # the wall time file time 0 stands for

    def track_time(self, timestamp: float, file_time: float | None) -> float | None:
        if file_time is None:
            return None
        if self._t0 is None:
            self._t0 = timestamp - file_time
        return self._t0 + file_time


class Camera:
    """One video source. See the module docstring; all methods are thread-safe."""

    def __init__(
        self,
        settings: CameraSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        decode: DecodePolicy | None = None,
        source: SourceFactory | None = None,
    ) -> None:
        """``decode``: how frames that come as JPEGs are decoded (default: whole frames, no JPEG kept): at the
        largest reduction that covers what the consumer needs, with or without their JPEG, on this camera's
        thread or left for the consumer (``Frame.pixels``). The first frame after each opening is always
        decoded: that is what shows the source's packets are standalone JPEGs.
        ``source(settings, decoder)``: makes the source of one opening (the hook for other backends, tests);
        default: :class:`agent.command_source.CommandSource` for ``source: {command: ...}``, else OpenCV's."""
        self._settings = settings
        self._decoder = PacketDecoder(settings.name, decode or DecodePolicy())
        self._new_source = source or _default_source
        self._source: Source | None = None  # the current attempt's, for interrupt()
        self._clock = clock
        self._name = settings.name
        self._src_text = redact(str(settings.source))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop_evt = threading.Event()
        self._wake = threading.Event()  # wakes the supervisor: an attempt finished, or stop()
        self._started = False
        self._supervisor: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._hung: list[threading.Thread] = []
        self._gen = 0
        self._fps = settings.fps  # set_fps() changes it; the running attempt reads it on its next frame
        # guarded by _lock
        self._state = CameraState.STOPPED
        self._last_error: str | None = None
        self._slot: Sampled | None = None
        self._eof = False
        self._frames_read = 0
        self._sampled = 0
        self._skipped = 0  # sampled frames replaced in the slot unread (the worker was busy)
        self._reconnects = 0
        self._last_grab: float | None = None
        self._width = 0
        self._height = 0
        self._in_rate = Rate(clock=clock)  # fps_in / fps_out: over the last 5 s
        self._out_rate = Rate(clock=clock)
        # file progress, kept across reopenings so a reopened file resumes where it was
        self._file_k = 0  # next sample number on the file's timeline
        self._file_base = 0  # global index (across loops) of the current pass's frame 0
        self._timeline = _FileTimeline()

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the supervisor thread. Idempotent; a stopped camera stays stopped."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._in_rate.restart()
            self._out_rate.restart()
        self._set_state(CameraState.STARTING)
        self._supervisor = threading.Thread(target=self._supervise, name=f"capture-{self._name}", daemon=True)
        self._supervisor.start()

    def read(self, timeout: float) -> Frame | None:
        """The next sampled frame newer than the last one returned; None on timeout, end or stop."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._slot is None or self._stop_evt.is_set():
                if self._stop_evt.is_set() or self._eof:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            sampled, self._slot = self._slot, None
            track_time = self._timeline.track_time(sampled.timestamp, sampled.file_time)
            self._sampled += 1
            seq = self._sampled
            self._out_rate.mark()
            self._cond.notify_all()  # a back-pressured attempt may go on
            ended = self._eof
        if ended:
            self._set_state(CameraState.ENDED)
        pic = sampled.picture
        return Frame(
            self._name, seq, sampled.timestamp, pic.image, sampled.source_pos, pic.frame_hw, pic.jpeg, track_time
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the threads (at most ``timeout`` seconds in all).

        A worker stuck in a native call cannot be joined; it is stale, and releases its capture and
        exits as soon as that call returns.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._stop_evt.set()
            self._cond.notify_all()
        self._wake.set()
        _interrupt(self._source)
        for thread in (self._supervisor, self._worker):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._worker is not None and self._worker.is_alive():
            log.debug("camera %s: capture thread still inside a native call; it exits when it returns", self._name)
        self._set_state(CameraState.STOPPED)

    def status(self) -> CameraStatus:
        now = self._clock()
        with self._lock:
            return CameraStatus(
                name=self._name,
                state=self._state,
                frames_read=self._frames_read,
                frames_sampled=self._sampled,
                frames_skipped=self._skipped,
                fps_in=self._in_rate.rate(),
                fps_out=self._out_rate.rate(),
                reconnects=self._reconnects,
                last_error=self._last_error,
                last_frame_age_s=None if self._last_grab is None else max(0.0, now - self._last_grab),
                width=self._width,
                height=self._height,
            )

    def fps(self) -> float:
        """The sampling rate now: ``cameras[].fps`` until :meth:`set_fps` changes it."""
        return self._fps

    def set_fps(self, fps: float) -> None:
        """A new sampling rate (0: every frame), taken up by the running opening from its next frame on."""
        if fps < 0:
            raise ValueError("fps must be >= 0")
        if fps != self._fps:
            log.info("camera %s: sampling at %g fps (was %g)", self._name, fps, self._fps)
        self._fps = float(fps)

    @property
    def ended(self) -> bool:
        """A file without ``loop`` has been read to the end and its last sampled frame handed out."""
        with self._lock:
            return self._eof and self._slot is None

    # ------------------------------------------------------------------ state

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        with self._lock:
            if error is not None:
                self._last_error = redact(error)
            old = self._state
            if old == state or (old == CameraState.ENDED and state != CameraState.STOPPED):
                return
            if self._stop_evt.is_set() and state != CameraState.STOPPED:
                return
            self._state = state
            shown = self._last_error
        if state in (CameraState.STALLED, CameraState.RECONNECTING):
            log.warning("camera %s: %s -> %s: %s", self._name, old, state, shown)
        else:
            log.info("camera %s: %s -> %s (%s)", self._name, old, state, self._src_text)

    # ------------------------------------------------------------------ what attempts report (agent.reading.Sink)

    def grabbed(self, att: Attempt, now: float) -> bool:
        """Book one grabbed frame; False if this attempt is stale."""
        with self._lock:
            if att.abandoned:
                return False
            att.frames += 1
            att.last_frame = now
            first = att.frames == 1
            self._frames_read += 1
            self._last_grab = now
            self._in_rate.mark(now)
        if first:
            self._set_state(CameraState.STREAMING)
        return True

    def publish(self, att: Attempt, item: Sampled, *, wait: bool, next_k: int | None = None) -> bool:
        """Put a sampled frame in the slot (replacing an unread one unless ``wait``)."""
        with self._cond:
            while wait and self._slot is not None and not att.stale():
                self._cond.wait(1.0)
            if att.stale():
                return False
            if self._slot is not None:
                self._skipped += 1  # the worker did not take the last one in time: counted, never silent
            self._slot = item
            self._height, self._width = item.picture.frame_hw
            if next_k is not None:
                self._file_k = next_k
            self._cond.notify_all()
            return True

    def file_progress(self) -> tuple[int, int]:
        with self._lock:
            return self._file_k, self._file_base

    def wrapped(self, att: Attempt, base: int) -> bool:
        with self._lock:
            if att.abandoned:
                return False
            self._file_base = base
            return True

    def finish_file(self, att: Attempt) -> None:
        with self._cond:
            if att.abandoned:
                return
            att.ended = True
            self._eof = True
            empty = self._slot is None
            self._cond.notify_all()
        if empty:
            self._set_state(CameraState.ENDED)

    def attempt_done(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ supervisor

    def _supervise(self) -> None:
        s = self._settings
        backoff = s.reconnect_min_s
        try:
            while not self._stop_evt.is_set():
                att = self._launch()
                self._watch(att)
                if self._stop_evt.is_set() or att.ended:
                    return
                if att.frames:
                    backoff = s.reconnect_min_s  # it worked for a while: start over from the minimum
                # "stalled": it timed out (no data); "reconnecting": it failed (refused, ended, error).
                # The state stays until a frame arrives or an attempt ends differently.
                failed = CameraState.STALLED if att.stalled else CameraState.RECONNECTING
                self._set_state(failed, att.error or "capture stopped")
                delay = backoff
                backoff = min(backoff * 2.0, s.reconnect_max_s)
                if self._stop_evt.wait(delay):
                    return
                while self._too_many_hung():
                    if self._stop_evt.wait(backoff):
                        return
                with self._lock:
                    self._reconnects += 1
        except Exception:  # never let the supervisor die silently
            log.exception("camera %s: capture supervisor failed", self._name)
            self._set_state(CameraState.RECONNECTING, "internal error in the capture supervisor")

    def _launch(self) -> Attempt:
        with self._lock:
            self._gen += 1
            gen = self._gen
        source = self._new_source(self._settings, self._decoder)
        self._source = source
        att = Attempt(
            gen, self._settings, source, self, clock=self._clock, stopping=self._stop_evt, src_text=self._src_text
        )
        self._wake.clear()
        worker = threading.Thread(target=att.run, name=f"capture-{self._name}#{gen}", daemon=True)
        self._worker = worker
        worker.start()
        return att

    def _too_many_hung(self) -> bool:
        self._hung = [t for t in self._hung if t.is_alive()]
        if len(self._hung) < _MAX_HUNG_THREADS:
            return False
        message = f"{len(self._hung)} capture threads stuck in native calls; waiting for them"
        self._set_state(CameraState.STALLED, message)
        return True

    def _watch(self, att: Attempt) -> None:
        """Return when the attempt's worker is done, or has hung (then abandon it), or on stop."""
        while True:
            self._wake.clear()
            if att.done.is_set() or self._stop_evt.is_set():
                return
            now = self._clock()
            since, deadline, what = att.overdue(now)
            if what is not None and now >= deadline:
                with self._lock:
                    if att.done.is_set():
                        return
                    att.abandoned = True  # the thread is stale from now on
                    att.stalled = True
                    att.error = f"{what} {now - since:.1f} s"
                    self._cond.notify_all()
                _interrupt(self._source)
                if self._worker is not None:
                    self._hung.append(self._worker)
                log.debug("camera %s: abandoning capture thread #%d (%s)", self._name, att.gen, att.error)
                return
            self._wake.wait(max(0.01, deadline - now))


def _default_source(settings: CameraSettings, decoder: PacketDecoder) -> Source:
    """A command's output for ``source: {command: ...}``, else OpenCV."""
    if settings.command is not None:
        return CommandSource(settings, decoder)
    return VideoSource(settings, decoder)


def _interrupt(source: Source | None) -> None:
    """Unblock a source's pending read where it can be (a command source ends its program)."""
    interrupt = getattr(source, "interrupt", None)
    if interrupt is not None:
        interrupt()
