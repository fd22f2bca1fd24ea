"""One capture attempt: the thread that opens a camera's source, reads and samples it, and hands each sampled
frame to its camera (:class:`agent.capture.Camera`), until the source fails or ends or the camera gives up.

The camera's supervisor runs one :class:`Attempt` at a time. The attempt records where it is (inside a
native open or read, when it last had a frame) so that the supervisor can tell a hang from a slow source;
an abandoned attempt is stale: it touches nothing of the camera's and exits when its native call returns.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.config import CameraSettings
from agent.logs import redact
from agent.sampling import FileTimeline, LiveSampler
from agent.sources import Picture, Source

__all__ = ["Attempt", "Sampled", "Sink"]

log = logging.getLogger("agent.capture")

_MAX_BAD_DECODES = 5  # consecutive failed retrieve() calls before the source is reopened


@dataclass(frozen=True, slots=True)
class Sampled:
    timestamp: float  # time.time() when grabbed
    source_pos: int  # files: 0-based frame index in the file; streams: count of frames read since open
    picture: Picture
    file_time: float | None = None  # a file read with realtime: false: seconds of its own timeline, across loops


class Sink(Protocol):
    """What an attempt reports to: its camera. Each call returns False once the attempt is stale."""

    def grabbed(self, att: Attempt, now: float) -> bool: ...

    def publish(self, att: Attempt, item: Sampled, *, wait: bool, next_k: int | None = None) -> bool: ...

    def file_progress(self) -> tuple[int, int]: ...  # (next sample number, base) on the file's timeline

    def wrapped(self, att: Attempt, base: int) -> bool: ...

    def finish_file(self, att: Attempt) -> None: ...

    def attempt_done(self) -> None: ...

    def fps(self) -> float: ...  # the sampling rate now (cameras[].fps, or as a command set it)


class Attempt:
    """One open-and-read attempt (one worker thread). Shared by the worker and the supervisor."""

    def __init__(
        self,
        gen: int,
        settings: CameraSettings,
        source: Source,
        sink: Sink,
        *,
        clock: Callable[[], float],
        stopping: threading.Event,
        src_text: str,
    ) -> None:
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
        self._s = settings
        self._source = source
        self._sink = sink
        self._clock = clock
        self._stopping = stopping
        self._src_text = src_text

    def stale(self) -> bool:
        return self.abandoned or self._stopping.is_set()

    def overdue(self, now: float) -> tuple[float, float, str | None]:
        """``(since, deadline, what)``: past ``deadline`` the attempt counts as hung (``what`` says how);
        ``what`` None: between native calls (waiting for the consumer, pacing): look again at ``deadline``."""
        s = self._s
        native = self.native
        if native is not None and native[0] == "open":
            since, what = native[1], "open did not return within"
            return since, since + s.open_timeout_s + max(1.0, 0.25 * s.open_timeout_s), what  # FFmpeg's own first
        if not s.is_file and self.opened_at is not None:
            since = self.last_frame if self.last_frame is not None else self.opened_at
            return since, since + s.stall_timeout_s, "no frame for"
        if native is not None:
            return native[1], native[1] + s.stall_timeout_s, "read did not return within"
        return now, now + s.stall_timeout_s, None

    def run(self) -> None:
        """The worker thread's body: nothing ever raises out of it."""
        s = self._s
        try:
            t0 = self._clock()
            self.native = ("open", t0)
            opened = self._source.open()
            self.native = None
            if self.stale():
                return
            if not opened:
                took = self._clock() - t0
                timed_out = not isinstance(s.source, int) and took >= 0.9 * s.open_timeout_s
                self.stalled = timed_out
                self.error = f"cannot open {self._src_text}" + (f" (timed out after {took:.1f} s)" if timed_out else "")
                return
            self.opened_at = self._clock()
            if s.is_file:
                self._read_file()
            else:
                self._read_live()
        except Exception as exc:
            raw = f"capture error: {type(exc).__name__}: {exc}"
            self.error = redact(raw)
            # a traceback only when it cannot leak credentials from the message
            log.warning("camera %s: %s", s.name, self.error, exc_info=raw == self.error)
        finally:
            self.native = None
            self._source.release()
            self.done.set()
            self._sink.attempt_done()

    def _grab(self) -> bool:
        self.native = ("read", self._clock())
        try:
            return self._source.grab()
        finally:
            self.native = None

    def _retrieve(self) -> Picture | None:
        self.native = ("read", self._clock())
        try:
            return self._source.retrieve()
        finally:
            self.native = None

    def _bad_decode(self, bad: int) -> bool:
        """Count a frame that could not be decoded; True when there were too many in a row."""
        if bad >= _MAX_BAD_DECODES:
            self.error = f"{bad} frames in a row could not be decoded"
            return True
        return False

    def _read_live(self) -> None:
        fps = self._sink.fps()
        sampler = LiveSampler(fps, self._clock())
        bad = 0
        pos = 0
        while not self.stale():
            if self._sink.fps() != fps:
                fps = self._sink.fps()
                sampler.set_fps(fps, self._clock())
            if not self._grab():
                self._live_read_failed()
                return
            now, wall = self._clock(), time.time()
            pos += 1
            if not self._sink.grabbed(self, now):
                return
            if not sampler.due(now):
                continue  # skipped: grabbed, never decoded
            picture = self._retrieve()
            if picture is None:
                bad += 1
                if self._bad_decode(bad):
                    return
                continue  # the next frame is still due
            bad = 0
            sampler.taken(now)
            if not self._sink.publish(self, Sampled(wall, pos, picture), wait=False):
                return

    def _live_read_failed(self) -> None:
        now = self._clock()
        since = self.last_frame if self.last_frame is not None else self.opened_at
        age = now - (since if since is not None else now)
        if age >= 0.9 * self._s.stall_timeout_s:
            self.stalled = True
            self.error = f"no frame for {age:.1f} s (read timed out)"
        else:
            self.error = "stream ended" if self.frames else "opened but no frame could be read"

    def _read_file(self) -> None:
        s = self._s
        file_fps = self._source.file_fps()
        if not (math.isfinite(file_fps) and 0.1 <= file_fps <= 1000.0):
            log.warning("camera %s: file reports %r fps; assuming 30", s.name, file_fps)
            file_fps = 30.0
        k, base = self._sink.file_progress()
        fps = self._sink.fps()
        timeline = FileTimeline(file_fps, fps, realtime=s.realtime, k=k, base=base, now=self._clock())
        index = -1  # in-file index of the last grabbed frame of this pass
        bad = 0
        while not self.stale():
            if self._sink.fps() != fps:
                fps = self._sink.fps()
                timeline.set_fps(fps)
            target = timeline.target(self._clock())
            if s.realtime:
                # Wait for the sample's time first, then read the frames skipped before it (packets, cheap) in
                # one go: the burst lands while the consumer waits for this sample, not beside its inference of
                # the last one; one wake-up per sample, not one per skipped frame.
                delay = timeline.due_at(target) - self._clock()
                if delay > 0 and self._stopping.wait(delay):
                    return
            ok, index = self._grab_through(index, target)
            if ok is None:
                return
            if not ok:  # end of file (or a read error, which we treat the same)
                if not self._next_pass(timeline, index):
                    return
                index = -1
                continue
            index += 1
            wall = time.time()
            if not self._sink.grabbed(self, self._clock()):
                return
            picture = self._retrieve()
            timeline.sampled()
            if picture is None:
                bad += 1
                if self._bad_decode(bad):
                    return
                continue
            bad = 0
            # realtime: false reads faster (or slower) than the file plays: its own timeline is the one
            # tracking and events need (motion in pixels per second, dwell and lost times in seconds)
            file_time = None if s.realtime else (timeline.base + index) / file_fps
            item = Sampled(wall, index, picture, file_time)
            if not self._sink.publish(self, item, wait=not s.realtime, next_k=timeline.k):
                return

    def _grab_through(self, index: int, target: int) -> tuple[bool | None, int]:
        """Grab the frames after ``index`` up to ``target`` (the skipped ones counted, never decoded);
        ``(grabbed target?, index of the last frame counted)``, ``None`` when the attempt went stale."""
        ok = True
        while ok and index < target - 1:  # skip: grab only
            ok = self._grab()
            if ok:
                index += 1
                if not self._sink.grabbed(self, self._clock()):
                    return None, index
        if ok:
            ok = self._grab()
        return ok, index

    def _next_pass(self, timeline: FileTimeline, index: int) -> bool:
        """At the end of the file: loop (True) or finish; ``index``: the last frame of this pass."""
        if index < 0:
            self.error = "no frame could be read from the file"
            return False
        if not self._s.loop:
            self._sink.finish_file(self)
            return False
        timeline.wrapped(index + 1)
        if not self._sink.wrapped(self, timeline.base):
            return False
        if not self._source.rewind():
            self.error = "cannot seek to the start of the file; reopening"
            return False
        return True
