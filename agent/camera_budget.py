"""One camera's hosted-call budget and change gate: pure state on an injected ``now``, used by
:class:`agent.routing.RoutePolicy`.

:class:`CallBudget`
    The hosted-call caps: ``max_calls_per_minute`` (sliding 60 s window) and ``max_calls_per_day`` (24 h from
    the first call of the window). Counts *attempts*, probes and retries included.
:class:`ChangeGate`
    "Did anything change": a small grayscale thumbnail against the last admitted frame's.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["CallBudget", "ChangeGate", "thumbnail"]

_DAY_S = 86400.0
_MINUTE_S = 60.0
_THUMB_WIDTH = 64


class CallBudget:
    """One camera's hosted-call caps and counts (see the module docstring)."""

    def __init__(self, per_minute: int, per_day: int) -> None:
        self._per_minute = per_minute
        self._per_day = per_day
        self._minute: deque[float] = deque()
        self._day_start: float | None = None
        self._day_count = 0
        self.calls = 0  # attempts ever made for this camera

    def capped(self, now: float) -> tuple[str, str] | None:
        """``(kind, reason)`` when a call now would exceed a cap, else None."""
        per_day, per_minute = self._per_day, self._per_minute
        if per_day and self._day_start is not None and now - self._day_start < _DAY_S and self._day_count >= per_day:
            return "capped_day", f"capped: {per_day} remote calls per day reached (max_calls_per_day)"
        if per_minute:
            self._trim(now)
            if len(self._minute) >= per_minute:
                return "capped_minute", f"capped: {per_minute} remote calls in the last minute (max_calls_per_minute)"
        return None

    def spend(self, now: float) -> None:
        """Count one call made now."""
        self.calls += 1
        if self._per_minute:
            self._minute.append(now)
        if self._day_start is None or now - self._day_start >= _DAY_S:
            self._day_start, self._day_count = now, 0
        self._day_count += 1

    def stats(self, now: float) -> dict[str, int]:
        self._trim(now)
        today = self._day_count if self._day_start is not None and now - self._day_start < _DAY_S else 0
        return {"remote_calls": self.calls, "calls_last_minute": len(self._minute), "calls_today": today}

    def _trim(self, now: float) -> None:
        while self._minute and self._minute[0] <= now - _MINUTE_S:
            self._minute.popleft()


def thumbnail(image_bgr: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A grayscale image at most ``_THUMB_WIDTH`` wide, aspect kept: what :class:`ChangeGate` compares."""
    h, w = image_bgr.shape[:2]
    tw = min(_THUMB_WIDTH, w)
    th = max(1, round(h * tw / w))
    small = cv2.resize(image_bgr, (tw, th), interpolation=cv2.INTER_AREA)
    if small.ndim == 3 and small.shape[2] == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    elif small.ndim == 3:
        small = small[:, :, 0]
    return np.ascontiguousarray(small, dtype=np.uint8)


class ChangeGate:
    """Skips frames that differ from the last admitted one by less than ``threshold`` (mean absolute
    difference of thumbnails, 0-255). ``threshold`` 0 admits everything without looking."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._last: NDArray[np.uint8] | None = None

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    def unchanged(self, thumb: NDArray[np.uint8]) -> bool:
        """Whether ``thumb`` (from :func:`thumbnail`) is too close to the last admitted frame's."""
        last = self._last
        return (
            last is not None and last.shape == thumb.shape and float(cv2.absdiff(thumb, last).mean()) < self.threshold
        )

    def admitted(self, thumb: NDArray[np.uint8]) -> None:
        """``thumb``'s frame was admitted: later frames are compared with it."""
        self._last = thumb
