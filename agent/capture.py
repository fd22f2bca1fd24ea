"""Camera capture: a source, a grabber thread that keeps only the newest frame, fps sampling, stall
detection and reopening with backoff.

One :class:`Camera` per configured source. ``start()`` launches a supervisor thread, which runs one
*attempt* at a time: a worker thread that opens the source and reads from it. When the worker fails
(cannot open, stream ended, read error) the supervisor waits (exponential backoff) and starts another.
When the worker hangs inside a native OpenCV call (which Python cannot interrupt), the supervisor
notices from the age of the newest frame, abandons that attempt (the generation counter makes the
thread stale: it releases its capture and exits as soon as the native call returns) and opens a new
capture.

Sampling (``settings.fps``; 0 = every frame) only decodes what it hands out: skipped frames are
``grab()``-ed, never ``retrieve()``-d. OpenCV's FFmpeg backend decodes inside ``grab()`` itself (``retrieve()``
only converts the colours), so MJPEG sources read through FFmpeg (MJPG files, MJPEG-over-HTTP cameras) are
opened in raw-packet mode (``CAP_PROP_FORMAT = -1``): ``grab()`` then only reads the compressed frame and
``retrieve()`` decodes it with ``cv2.imdecode``; a skipped frame costs a packet read, not a decode. Sources in
other codecs (H.264 needs every frame decoded anyway) and V4L2 cameras (whose ``grab()`` does not decode)
are read as usual, and so is an MJPEG source whose packets ``cv2.imdecode`` can't read (it is reopened in
the usual mode). Such packets may also be decoded at a reduced size: given ``needed_hw`` (what the
consumer needs of a frame of a given size, e.g. a model's letterbox content), a 1920x1080 JPEG for a
416x416 model is decoded at 1/4 (480x270) by libjpeg's DCT scaling, several times cheaper than a full
decode; the :class:`Frame` keeps the true size in ``frame_hw``. Live sources are sampled by the wall
clock; files by their own timeline (frame index / file fps). With ``realtime: true`` a file plays at
its native pace with the same newest-frame semantics as a camera; with ``realtime: false`` every sampled
frame is handed out exactly once, in order (back-pressure: the worker waits for the consumer).

States (``CameraStatus.state``, one log line on ``agent.capture`` per change):
``starting`` until the first frame; ``streaming``; ``stalled`` when the source timed out (no frame
for ``stall_timeout_s``, an open that timed out, a hung native call) and ``reconnecting`` when it
failed (refused, not found, stream ended, decode errors): both keep being retried with backoff from
``reconnect_min_s`` to ``reconnect_max_s`` (back to the minimum after a frame) and last until a frame
arrives; ``ended`` (a file without ``loop`` fully handed out); ``stopped`` (before ``start()`` and
after ``stop()``). Credentials in URLs never reach logs or ``last_error``.

Importing this module has no side effects; ``Camera()`` does no I/O and starts no thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.config import CameraSettings
from agent.jpeg import as_bgr, decode_jpeg, jpeg_has_exif, jpeg_header, jpeg_hw, reduction_factor
from agent.logs import redact
from agent.measures import Rate

__all__ = ["Camera", "CameraStatus", "Frame", "decode_jpeg", "jpeg_has_exif", "jpeg_hw", "reduction_factor"]

log = logging.getLogger("agent.capture")

_MAX_BAD_DECODES = 5  # consecutive failed retrieve() calls before the source is reopened
_MAX_HUNG_THREADS = 3  # abandoned threads still stuck in native calls before we stop opening more
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_JPEG_FOURCCS = frozenset({"MJPG", "JPEG"})  # FFmpeg codecs whose packets are whole JPEG images (upper-cased)
_RTSP_TCP = "rtsp_transport;tcp"
_env_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Frame:
    camera: str  # camera name
    seq: int  # 1, 2, ... per Camera object: sampled frames handed out (not the published frame_id)
    timestamp: float  # capture time, epoch seconds (time.time() when grabbed)
    # HxWx3 BGR; smaller than frame_hw when decoded at a reduced size; empty (0x0x3) when the frame was left
    # undecoded for a consumer that can take its JPEG (see Camera's decode_needed): decode ``jpeg`` then
    image: NDArray[np.uint8]
    source_pos: int  # files: 0-based frame index in the file; streams: count of frames read since open
    frame_hw: tuple[int, int] = (0, 0)  # the frame's true (height, width); (0, 0): the image's own
    jpeg: bytes | None = None  # the camera's own JPEG of this frame, when kept (see Camera), without Exif

    def __post_init__(self) -> None:
        if self.frame_hw == (0, 0):
            object.__setattr__(self, "frame_hw", (int(self.image.shape[0]), int(self.image.shape[1])))


@dataclass(frozen=True, slots=True)
class CameraStatus:
    name: str
    state: str  # "starting" | "streaming" | "stalled" | "reconnecting" | "ended" | "stopped"
    frames_read: int  # frames read from the source (grab count)
    frames_sampled: int  # frames handed out by read()
    fps_in: float  # measured rate of frames read from the source, recent window
    fps_out: float  # measured rate of sampled frames handed out, recent window
    reconnects: int
    last_error: str | None  # never contains URL credentials
    last_frame_age_s: float | None
    width: int  # of the last frame, 0 before the first
    height: int


@dataclass(frozen=True, slots=True)
class _Sampled:
    timestamp: float
    image: NDArray[np.uint8]
    source_pos: int
    frame_hw: tuple[int, int]
    jpeg: bytes | None = None


class _Attempt:
    """One open-and-read attempt (one worker thread). Shared by the worker and the supervisor."""

    def __init__(self, gen: int) -> None:
        self.gen = gen
        self.native: tuple[str, float] | None = None  # ("open" | "read", clock at entry) while in C++
        self.opened_at: float | None = None
        self.last_frame: float | None = None  # clock() of the newest grabbed frame
        self.frames = 0  # frames grabbed by this attempt
        self.error: str | None = None
        self.stalled = False  # failed by timing out, not by an error
        self.ended = False  # a file without loop was fully read
        self.abandoned = False  # given up by the supervisor: touch nothing, release and exit
        self.done = threading.Event()


def _ensure_rtsp_tcp() -> None:
    """RTSP over TCP unless the user set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (read at open time)."""
    with _env_lock:
        if _FFMPEG_OPTIONS_ENV not in os.environ:
            os.environ[_FFMPEG_OPTIONS_ENV] = _RTSP_TCP
            log.info("%s not set: using %r for RTSP", _FFMPEG_OPTIONS_ENV, _RTSP_TCP)


class Camera:
    """One video source. See the module docstring; all methods are thread-safe."""

    def __init__(
        self,
        settings: CameraSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        needed_hw: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
        keep_jpeg: bool = False,
        decode_needed: Callable[[tuple[int, int]], bool] | None = None,
    ) -> None:
        """``needed_hw(frame_hw)``: the smallest image of such a frame the consumer can use (None: full
        frames). MJPEG packets are then decoded at the largest reduction that still covers it.
        ``keep_jpeg``: frames that came as standalone JPEGs without Exif carry those bytes (``Frame.jpeg``),
        so an upload can send them as they are instead of encoding the frame again.
        ``decode_needed(frame_hw)``: with ``keep_jpeg``, asked for each such frame; False hands it out
        undecoded (``Frame.image`` empty, ``Frame.jpeg`` set), for a consumer that decodes the JPEG only if it
        needs the pixels after all. The first frame after each opening is always decoded: that is what shows
        the source's packets are standalone JPEGs."""
        self._settings = settings
        self._needed_hw = needed_hw
        self._keep_jpeg = keep_jpeg
        self._decode_needed = decode_needed
        self._packets_decoded = False  # a packet of the current opening decoded on its own (see _retrieve)
        self._reduction: tuple[tuple[int, int], int] = ((0, 0), 1)  # last frame size seen and its factor
        self._clock = clock
        self._name = settings.name
        self._src_text = redact(str(settings.source))
        self._live = not settings.is_file
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop_evt = threading.Event()
        self._wake = threading.Event()  # wakes the supervisor: a worker finished, or stop()
        self._started = False
        self._supervisor: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._hung: list[threading.Thread] = []
        self._gen = 0
        self._raw_packets = True  # MJPEG through FFmpeg: read packets, decode only sampled ones (see _open)
        # guarded by _lock
        self._state = "stopped"
        self._last_error: str | None = None
        self._slot: _Sampled | None = None
        self._eof = False
        self._frames_read = 0
        self._sampled = 0
        self._reconnects = 0
        self._last_grab: float | None = None
        self._width = 0
        self._height = 0
        self._in_rate = Rate(clock=clock)  # fps_in / fps_out: over the last 5 s
        self._out_rate = Rate(clock=clock)
        # file progress, kept across reopenings so a reopened file resumes where it was
        self._file_k = 0  # next sample number on the file's timeline
        self._file_base = 0  # global index (across loops) of the current pass's frame 0

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the supervisor thread. Idempotent; a stopped camera stays stopped."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._in_rate.restart()
            self._out_rate.restart()
        self._set_state("starting")
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
            self._sampled += 1
            seq = self._sampled
            self._out_rate.mark()
            self._cond.notify_all()  # a back-pressured worker may go on
            ended = self._eof
        if ended:
            self._set_state("ended")
        return Frame(
            self._name, seq, sampled.timestamp, sampled.image, sampled.source_pos, sampled.frame_hw, sampled.jpeg
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
        for thread in (self._supervisor, self._worker):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._worker is not None and self._worker.is_alive():
            log.debug("camera %s: capture thread still inside a native call; it exits when it returns", self._name)
        self._set_state("stopped")

    def status(self) -> CameraStatus:
        now = self._clock()
        with self._lock:
            return CameraStatus(
                name=self._name,
                state=self._state,
                frames_read=self._frames_read,
                frames_sampled=self._sampled,
                fps_in=self._in_rate.rate(),
                fps_out=self._out_rate.rate(),
                reconnects=self._reconnects,
                last_error=self._last_error,
                last_frame_age_s=None if self._last_grab is None else max(0.0, now - self._last_grab),
                width=self._width,
                height=self._height,
            )

    @property
    def ended(self) -> bool:
        """A file without ``loop`` has been read to the end and its last sampled frame handed out."""
        with self._lock:
            return self._eof and self._slot is None

    # ------------------------------------------------------------------ hooks (tests, other backends)

    def _open(self) -> cv2.VideoCapture:
        """Open the source (called in the worker thread; may block up to the open timeout)."""
        s = self._settings
        self._packets_decoded = False
        src = s.source
        if isinstance(src, int):
            cap = cv2.VideoCapture(src, cv2.CAP_V4L2)
            if not cap.isOpened() and not sys.platform.startswith("linux"):
                cap = cv2.VideoCapture(src, cv2.CAP_ANY)
            if cap.isOpened() and (s.width or s.height):
                # many UVC cameras reach 720p/1080p at 30 fps only in MJPG: set it before the size
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
                if s.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
                if s.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
            return cap
        if s.is_file:
            cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG)
            if not cap.isOpened() and os.path.exists(src):
                cap = cv2.VideoCapture(src, cv2.CAP_ANY)
            return self._packets_if_mjpeg(cap)
        if src.split("://", 1)[0].lower() in ("rtsp", "rtsps"):
            _ensure_rtsp_tcp()
        if not cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
            return cv2.VideoCapture(src, cv2.CAP_ANY)  # no timeouts: the supervisor still catches hangs
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(s.open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(s.stall_timeout_s * 1000)),
        ]
        return self._packets_if_mjpeg(cv2.VideoCapture(src, cv2.CAP_FFMPEG, params))

    def _packets_if_mjpeg(self, cap: cv2.VideoCapture) -> cv2.VideoCapture:
        """Raw-packet mode for an MJPEG source read by FFmpeg, so that skipped frames are never decoded."""
        if not self._raw_packets or not cap.isOpened() or cap.getBackendName() != "FFMPEG":
            return cap
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
        fourcc = code.to_bytes(4, "little").decode("latin-1").upper()
        if fourcc in _JPEG_FOURCCS and cap.set(cv2.CAP_PROP_FORMAT, -1):
            log.debug("camera %s: MJPEG source, reading raw packets", self._name)
        return cap

    def _grab(self, cap: cv2.VideoCapture) -> bool:
        return bool(cap.grab())

    def _retrieve(self, cap: cv2.VideoCapture) -> _Sampled | None:
        """Decode the last grabbed frame (the only place frames are decoded): the image, the frame's true
        ``(height, width)`` (larger than the image's when it was decoded at a reduced size) and, when kept,
        the JPEG it came as. ``timestamp`` and ``source_pos`` are left for the caller to fill."""
        ok, img = cap.retrieve()
        if not ok:
            return None
        if cap.get(cv2.CAP_PROP_FORMAT) != -1 or cap.getBackendName() != "FFMPEG":  # decoded by the backend
            image = as_bgr(img)
            return None if image is None else _Sampled(0.0, image, 0, (int(image.shape[0]), int(image.shape[1])))
        packet = img if isinstance(img, np.ndarray) and img.size else None
        full_hw: tuple[int, int] | None = None
        exif = False
        if packet is not None and (self._needed_hw is not None or self._keep_jpeg):
            full_hw, exif = jpeg_header(packet)  # size and Exif in one walk of the header
        if (
            packet is not None
            and self._packets_decoded
            and self._keep_jpeg
            and self._decode_needed is not None
            and full_hw is not None
            and not exif
            and not self._decode_needed(full_hw)
        ):
            return _Sampled(0.0, np.empty((0, 0, 3), dtype=np.uint8), 0, full_hw, packet.tobytes())
        decoded = None
        if packet is not None:
            factor = self._factor_for(full_hw) if self._needed_hw is not None and full_hw is not None else 1
            decoded = decode_jpeg(packet, factor)
            if factor == 1:
                full_hw = None  # the image is the whole frame
        if decoded is None:
            # Packets that are not standalone JPEG images (some cameras leave out the Huffman tables):
            # this source is decoded by FFmpeg from the next opening on.
            self._raw_packets = False
            raise RuntimeError("MJPEG packets cannot be decoded on their own; reopening with FFmpeg decoding")
        image = as_bgr(decoded)
        if image is None:
            return None
        self._packets_decoded = True
        jpeg = packet.tobytes() if self._keep_jpeg and packet is not None and not exif else None
        return _Sampled(0.0, image, 0, full_hw or (int(image.shape[0]), int(image.shape[1])), jpeg)

    def _factor_for(self, full_hw: tuple[int, int]) -> int:
        """The decode reduction for frames of this size: worked out (and logged) when the size changes."""
        known_hw, factor = self._reduction
        if full_hw == known_hw:
            return factor
        assert self._needed_hw is not None
        factor = reduction_factor(full_hw, self._needed_hw(full_hw))
        self._reduction = (full_hw, factor)
        if factor > 1:
            log.info(
                "camera %s: %dx%d JPEG frames decoded at 1/%d (%dx%d): all that inference needs",
                self._name,
                full_hw[1],
                full_hw[0],
                factor,
                -(-full_hw[1] // factor),
                -(-full_hw[0] // factor),
            )
        return factor

    # ------------------------------------------------------------------ state

    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._lock:
            if error is not None:
                self._last_error = redact(error)
            old = self._state
            if old == state or (old == "ended" and state != "stopped"):
                return
            if self._stop_evt.is_set() and state != "stopped":
                return
            self._state = state
            shown = self._last_error
        if state in ("stalled", "reconnecting"):
            log.warning("camera %s: %s -> %s: %s", self._name, old, state, shown)
        else:
            log.info("camera %s: %s -> %s (%s)", self._name, old, state, self._src_text)

    def _stale(self, att: _Attempt) -> bool:
        return att.abandoned or self._stop_evt.is_set()

    def _count_grab(self, att: _Attempt, now: float) -> bool:
        """Book one grabbed frame; False if this attempt is stale."""
        first = False
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
            self._set_state("streaming")
        return True

    def _publish(self, att: _Attempt, item: _Sampled, *, wait: bool, next_k: int | None = None) -> bool:
        """Put a sampled frame in the slot (replacing an unread one unless ``wait``)."""
        with self._cond:
            while wait and self._slot is not None and not self._stale(att):
                self._cond.wait(1.0)
            if self._stale(att):
                return False
            self._slot = item
            self._height, self._width = item.frame_hw
            if next_k is not None:
                self._file_k = next_k
            self._cond.notify_all()
            return True

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
                self._set_state("stalled" if att.stalled else "reconnecting", att.error or "capture stopped")
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
            self._set_state("reconnecting", "internal error in the capture supervisor")

    def _launch(self) -> _Attempt:
        with self._lock:
            self._gen += 1
            att = _Attempt(self._gen)
        self._wake.clear()
        worker = threading.Thread(target=self._work, args=(att,), name=f"capture-{self._name}#{att.gen}", daemon=True)
        self._worker = worker
        worker.start()
        return att

    def _too_many_hung(self) -> bool:
        self._hung = [t for t in self._hung if t.is_alive()]
        if len(self._hung) < _MAX_HUNG_THREADS:
            return False
        self._set_state("stalled", f"{len(self._hung)} capture threads stuck in native calls; waiting for them")
        return True

    def _watch(self, att: _Attempt) -> None:
        """Return when the attempt's worker is done, or has hung (then abandon it), or on stop."""
        s = self._settings
        open_limit = s.open_timeout_s + max(1.0, 0.25 * s.open_timeout_s)  # FFmpeg's own timeout first
        while True:
            self._wake.clear()
            if att.done.is_set() or self._stop_evt.is_set():
                return
            now = self._clock()
            native = att.native
            what: str | None
            if native is not None and native[0] == "open":
                since, limit, what = native[1], open_limit, "open did not return within"
            elif self._live and att.opened_at is not None:
                since = att.last_frame if att.last_frame is not None else att.opened_at
                limit, what = s.stall_timeout_s, "no frame for"
            elif native is not None:
                since, limit, what = native[1], s.stall_timeout_s, "read did not return within"
            else:  # between native calls (waiting for the consumer, pacing): look again later
                since, limit, what = now, s.stall_timeout_s, None
            deadline = since + limit
            if what is not None and now >= deadline:
                with self._lock:
                    if att.done.is_set():
                        return
                    att.abandoned = True  # the thread is stale from now on
                    att.stalled = True
                    att.error = f"{what} {now - since:.1f} s"
                    self._cond.notify_all()
                if self._worker is not None:
                    self._hung.append(self._worker)
                log.debug("camera %s: abandoning capture thread #%d (%s)", self._name, att.gen, att.error)
                return
            self._wake.wait(max(0.01, deadline - now))

    # ------------------------------------------------------------------ worker

    def _work(self, att: _Attempt) -> None:
        s = self._settings
        cap: cv2.VideoCapture | None = None
        try:
            t0 = self._clock()
            att.native = ("open", t0)
            cap = self._open()
            att.native = None
            if self._stale(att):
                return
            if cap is None or not cap.isOpened():
                took = self._clock() - t0
                timed_out = not isinstance(s.source, int) and took >= 0.9 * s.open_timeout_s
                att.stalled = timed_out
                att.error = f"cannot open {self._src_text}" + (f" (timed out after {took:.1f} s)" if timed_out else "")
                return
            att.opened_at = self._clock()
            if self._live:
                self._read_live(cap, att)
            else:
                self._read_file(cap, att)
        except Exception as exc:  # nothing ever raises out of a capture thread
            raw = f"capture error: {type(exc).__name__}: {exc}"
            att.error = redact(raw)
            # a traceback only when it cannot leak credentials from the message
            log.warning("camera %s: %s", self._name, att.error, exc_info=raw == att.error)
        finally:
            att.native = None
            if cap is not None:
                with contextlib.suppress(Exception):
                    cap.release()
            att.done.set()
            self._wake.set()

    def _native_grab(self, cap: cv2.VideoCapture, att: _Attempt) -> bool:
        att.native = ("read", self._clock())
        try:
            return self._grab(cap)
        finally:
            att.native = None

    def _native_retrieve(self, cap: cv2.VideoCapture, att: _Attempt) -> _Sampled | None:
        att.native = ("read", self._clock())
        try:
            return self._retrieve(cap)
        finally:
            att.native = None

    def _read_live(self, cap: cv2.VideoCapture, att: _Attempt) -> None:
        s = self._settings
        period = 1.0 / s.fps if s.fps > 0 else 0.0
        next_due = self._clock()
        bad = 0
        pos = 0
        while not self._stale(att):
            if not self._native_grab(cap, att):
                now = self._clock()
                since = att.last_frame if att.last_frame is not None else att.opened_at
                age = now - (since if since is not None else now)
                if age >= 0.9 * s.stall_timeout_s:
                    att.stalled = True
                    att.error = f"no frame for {age:.1f} s (read timed out)"
                else:
                    att.error = "stream ended" if att.frames else "opened but no frame could be read"
                return
            now, wall = self._clock(), time.time()
            pos += 1
            if not self._count_grab(att, now):
                return
            if period and now < next_due - 0.1 * period:
                continue  # skipped: grabbed, never decoded
            decoded = self._native_retrieve(cap, att)
            if decoded is None:
                bad += 1
                if bad >= _MAX_BAD_DECODES:
                    att.error = f"{bad} frames in a row could not be decoded"
                    return
                continue  # the next frame is still due
            bad = 0
            if period:
                next_due += period
                if next_due <= now:
                    next_due = now + period
            if not self._publish(att, replace(decoded, timestamp=wall, source_pos=pos), wait=False):
                return

    def _read_file(self, cap: cv2.VideoCapture, att: _Attempt) -> None:
        s = self._settings
        file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (math.isfinite(file_fps) and 0.1 <= file_fps <= 1000.0):
            log.warning("camera %s: file reports %r fps; assuming 30", self._name, file_fps)
            file_fps = 30.0
        rate = s.fps if 0 < s.fps < file_fps else file_fps  # samples per second of file time
        ratio = file_fps / rate  # frames per sample, >= 1
        with self._lock:
            k, base = self._file_k, self._file_base
        index = -1  # in-file index of the last grabbed frame of this pass
        anchor = self._clock() - math.ceil(k * ratio - 1e-6) / file_fps  # realtime: file time 0
        bad = 0
        while not self._stale(att):
            if s.realtime:
                k = max(k, math.floor((self._clock() - anchor) * rate + 1e-9))  # behind: newest due
            target = math.ceil(k * ratio - 1e-6) - base  # in-file index of the next sampled frame
            if s.realtime:
                # Wait for the sample's time first, then read the frames skipped before it (packets, cheap) in
                # one go: the burst lands while the consumer waits for this sample, not beside its inference of
                # the last one; one wake-up per sample, not one per skipped frame.
                delay = anchor + (base + target) / file_fps - self._clock()
                if delay > 0 and self._stop_evt.wait(delay):
                    return
            ok = True
            while ok and index < target - 1:  # skip: grab only
                ok = self._native_grab(cap, att)
                if ok:
                    index += 1
                    if not self._count_grab(att, self._clock()):
                        return
            if ok:
                ok = self._native_grab(cap, att)
            if not ok:  # end of file (or a read error, which we treat the same)
                if index < 0:
                    att.error = "no frame could be read from the file"
                    return
                if not s.loop:
                    self._finish_file(att)
                    return
                base += index + 1
                with self._lock:
                    if att.abandoned:
                        return
                    self._file_base = base
                index = -1
                if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                    att.error = "cannot seek to the start of the file; reopening"
                    return
                continue
            index += 1
            wall = time.time()
            if not self._count_grab(att, self._clock()):
                return
            decoded = self._native_retrieve(cap, att)
            k += 1
            if decoded is None:
                bad += 1
                if bad >= _MAX_BAD_DECODES:
                    att.error = f"{bad} frames in a row could not be decoded"
                    return
                continue
            bad = 0
            if not self._publish(
                att, replace(decoded, timestamp=wall, source_pos=index), wait=not s.realtime, next_k=k
            ):
                return

    def _finish_file(self, att: _Attempt) -> None:
        with self._cond:
            if att.abandoned:
                return
            att.ended = True
            self._eof = True
            empty = self._slot is None
            self._cond.notify_all()
        if empty:
            self._set_state("ended")
