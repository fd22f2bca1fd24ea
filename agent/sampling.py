"""Which frames a camera hands out, and when: pure bookkeeping, no I/O, no threads, the clock passed in.

:class:`LiveSampler` samples a live source by the clock: at most one frame per ``1 / fps`` (0: every frame),
never catching up on missed ones. :class:`FileTimeline` samples a file by its own timeline: sample ``k`` is
the file's frame ``ceil(k * file_fps / rate)`` counted across loops, where ``rate`` is ``fps`` capped at the
file's; with ``realtime`` each sample is due at its frame's time on the file's clock, and a reader that falls
behind jumps to the newest due sample.
"""

from __future__ import annotations

import math

__all__ = ["FileTimeline", "LiveSampler"]


class LiveSampler:
    """One frame per period of the clock, starting with the first frame at or after ``now``."""

    def __init__(self, fps: float, now: float) -> None:
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._next_due = now

    @property
    def fps(self) -> float:
        return 1.0 / self._period if self._period else 0.0

    def set_fps(self, fps: float, now: float) -> None:
        """A new rate from ``now`` on: the next frame is due at most one new period away."""
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._next_due = min(self._next_due, now + self._period)

    def due(self, now: float) -> bool:
        """Whether a frame grabbed at ``now`` is to be decoded and handed out (else it is skipped)."""
        return not self._period or now >= self._next_due - 0.1 * self._period

    def taken(self, now: float) -> None:
        """A frame due at ``now`` was handed out: the next is due one period later (or after ``now``)."""
        if self._period:
            self._next_due += self._period
            if self._next_due <= now:
                self._next_due = now + self._period


class FileTimeline:
    """Sample numbers to file frame indices, across loops; in realtime also the time each sample is due.

    ``k`` (next sample number) and ``base`` (index, across loops, of the current pass's frame 0) resume a
    reopened file where it was; ``now``: the clock at the (re)start, when sample ``k`` is due.
    """

    def __init__(
        self, file_fps: float, fps: float, *, realtime: bool, k: int = 0, base: int = 0, now: float = 0.0
    ) -> None:
        self.file_fps = file_fps
        self.rate = fps if 0 < fps < file_fps else file_fps  # samples per second of file time
        self._ratio = file_fps / self.rate  # frames per sample, >= 1
        self.realtime = realtime
        self.k = k
        self.base = base
        self._anchor = now - math.ceil(k * self._ratio - 1e-6) / file_fps  # realtime: when file time 0 was

    def set_fps(self, fps: float) -> None:
        """A new sampling rate from the next sample on; the file's own clock (realtime) is kept."""
        frame = math.ceil(self.k * self._ratio - 1e-6)  # the next sample's frame, across loops
        self.rate = fps if 0 < fps < self.file_fps else self.file_fps
        self._ratio = self.file_fps / self.rate
        self.k = math.ceil(frame / self._ratio - 1e-6)

    def target(self, now: float) -> int:
        """The in-file index (this pass) of the next sample; in realtime, when behind, the newest one due."""
        if self.realtime:
            self.k = max(self.k, math.floor((now - self._anchor) * self.rate + 1e-9))
        return math.ceil(self.k * self._ratio - 1e-6) - self.base

    def due_at(self, target: int) -> float:
        """Realtime: the clock reading at which this pass's frame ``target`` is due."""
        return self._anchor + (self.base + target) / self.file_fps

    def sampled(self) -> None:
        """The target frame was read (handed out or not): the next sample is the one after it."""
        self.k += 1

    def wrapped(self, frames: int) -> None:
        """The pass ended after ``frames`` frames; the next pass starts at frame 0 of the file again."""
        self.base += frames
