"""Measurements the daemon keeps while it runs, and the health message made from them.

:class:`LatencyWindow` and :class:`RateMeter` are small thread-safe accumulators the stages feed;
:func:`status_line` turns a health document into systemd's one-line ``STATUS=``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["LatencyWindow", "RateMeter", "status_line"]


class LatencyWindow:
    """The last ``size`` latency samples (milliseconds); percentiles over them."""

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


class RateMeter:
    """Events per second over a sliding window of ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0
        self.last: float | None = None

    def mark(self) -> None:
        now = self._clock()
        with self._lock:
            self._times.append(now)
            self.total += 1
            self.last = now
            self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._trim(now)
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return round((n - 1) / span, 2) if span > 0 else 0.0

    def age(self) -> float | None:
        """Seconds since the last event, None before the first."""
        return None if self.last is None else self._clock() - self.last

    def _trim(self, now: float) -> None:
        limit = now - self._window_s
        while self._times and self._times[0] < limit:
            self._times.popleft()


def status_line(health: Mapping[str, Any]) -> str:
    """A short human line for ``systemctl status``: state, mode, rates and outbox depth."""
    cameras = health.get("cameras", {})
    fps_out = sum(float(c.get("fps_out") or 0.0) for c in cameras.values())
    streaming = sum(1 for c in cameras.values() if c.get("state") == "streaming")
    outbox = health.get("outbox", {})
    parts = [
        str(health.get("state", "?")),
        f"mode {health.get('mode', '?')}",
        f"cameras {streaming}/{len(cameras)} streaming",
        f"{fps_out:.1f} fps out",
        f"outbox {outbox.get('depth', 0)}",
    ]
    if not health.get("mqtt", {}).get("connected", False):
        parts.append("broker disconnected")
    return ", ".join(parts)
