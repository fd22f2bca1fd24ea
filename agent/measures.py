"""One home for what the stages measure over time: event rates and latency windows.

The stages feed these (a capture marks frames read and handed out, a worker marks frames processed, the
router records each result's latency (its counts of what happened to each frame live with its policy, in
:mod:`agent.routing`), the outbox reports each camera's results as the broker takes them); :mod:`agent.health`
reads them to build the health message. Each accumulator is small, bounded and thread-safe, and takes an
injectable clock so its tests need no sleeping.

Importing this module has no side effects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

__all__ = ["LatencyWindow", "PublishAges", "Rate"]

_DEFAULT_RATE_WINDOW_S = 5.0


class Rate:
    """Events per second over the last ``window_s`` seconds (``total``/``last``/``age`` over all time).

    Once at least a second of the window has passed since ``origin`` (construction, or :meth:`restart`) the
    rate is events / elapsed window, so a source that stops shows its rate falling to 0; before that (and
    when more events arrived than ``maxlen`` keeps) it is the rate between the first and last kept event.
    """

    def __init__(
        self,
        window_s: float = _DEFAULT_RATE_WINDOW_S,
        *,
        maxlen: int = 4096,  # bounded even for a file read at 10k fps
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._origin = clock()
        self.total = 0
        self.last: float | None = None

    def restart(self) -> None:
        """Measure from now on as if just created (the count of all time is kept)."""
        with self._lock:
            self._origin = self._clock()
            self._times.clear()

    def mark(self, at: float | None = None) -> None:
        """One event, now (or at ``at`` on this rate's clock)."""
        now = self._clock() if at is None else at
        with self._lock:
            self._times.append(now)
            self.total += 1
            self.last = now
            self._prune(now)

    def rate(self) -> float:
        """Events per second, rounded to 0.01."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            n = len(self._times)
            if n == 0:
                return 0.0
            elapsed = now - max(now - self._window_s, self._origin)
            if elapsed >= 1.0 and n < (self._times.maxlen or 0):
                return round(n / elapsed, 2)
            if n < 2 or self._times[-1] <= self._times[0]:
                return 0.0
            return round((n - 1) / (self._times[-1] - self._times[0]), 2)

    def age(self) -> float | None:
        """Seconds since the last event, None before the first."""
        last = self.last
        return None if last is None else max(0.0, self._clock() - last)

    def _prune(self, now: float) -> None:
        limit = now - self._window_s
        while self._times and self._times[0] < limit:
            self._times.popleft()


class LatencyWindow:
    """The last ``size`` samples (milliseconds); p50 and p90 over them, and the count of all time."""

    def __init__(self, size: int = 256) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._count = 0

    def add(self, value_ms: float) -> None:
        with self._lock:
            self._samples.append(value_ms)
            self._count += 1

    @property
    def count(self) -> int:
        """Samples ever added (not only those still in the window)."""
        return self._count

    def summary(self) -> dict[str, float | int | None]:
        with self._lock:
            data = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        if data.size == 0:
            return {"count": self._count, "p50_ms": None, "p90_ms": None}
        p50, p90 = np.percentile(data, [50, 90])
        return {"count": self._count, "p50_ms": round(float(p50), 1), "p90_ms": round(float(p90), 1)}


class PublishAges:
    """Per camera: how old results are when the broker takes them (capture to PUBACK, or to the hand-over
    at QoS 0), over the last ``size`` results of that camera. Fed by :meth:`agent.outbox.Outbox.on_delivered`
    with each result's capture time (``time.time()``); results held through an outage count with their
    whole wait, which is what a consumer sees."""

    def __init__(self, size: int = 256, *, clock: Callable[[], float] = time.time) -> None:
        self._size = size
        self._clock = clock
        self._windows: dict[str, LatencyWindow] = {}
        self._lock = threading.Lock()

    def delivered(self, camera: str, captured: float) -> None:
        age_ms = max(0.0, self._clock() - captured) * 1000.0
        with self._lock:
            window = self._windows.get(camera)
            if window is None:
                window = self._windows[camera] = LatencyWindow(self._size)
        window.add(age_ms)

    def summary(self, camera: str) -> dict[str, float | int | None]:
        """``count`` (of all time), ``p50_ms`` and ``p90_ms`` (None before the first result)."""
        with self._lock:
            window = self._windows.get(camera)
        if window is None:
            return {"count": 0, "p50_ms": None, "p90_ms": None}
        return window.summary()
