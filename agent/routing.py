"""The routing policy, apart from its mechanism: which way a frame goes, and what a call's outcome changes.

Everything here is plain state and arithmetic on an injected ``now``: no locks, no threads, no network, no
logging. :class:`agent.router.Router` holds one :class:`RoutePolicy` under its lock, asks it for a
:class:`Plan` per frame, carries the plan out (a hosted call, the local model) and reports the outcome back
(:meth:`RoutePolicy.succeeded`, :meth:`RoutePolicy.failed`); what those return (mode changes, a log line)
the shell delivers outside its lock.

Parts:

:class:`CallBudget`
    One camera's hosted-call caps: ``max_calls_per_minute`` (sliding 60 s window) and ``max_calls_per_day``
    (24 h from the first call of the window). Counts *attempts*, probes and retries included.
:class:`ChangeGate`
    One camera's "did anything change" test: a small grayscale thumbnail against the last admitted frame's.
:class:`RoutePolicy`
    The modes, probing with backoff, failover, and the counters the health topic shows.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.config import ServerlessSettings

__all__ = ["CallBudget", "ChangeGate", "Mode", "ModeChange", "Plan", "RoutePolicy", "Verdict", "Way"]

_DAY_S = 86400.0
_MINUTE_S = 60.0
_THUMB_WIDTH = 64

COUNTER_NAMES = (
    "admitted",
    "gated",
    "capped_minute",
    "capped_day",
    "remote_ok",
    "remote_attempts",
    "fallbacks",
    "failed_over",
    "probes",
    "probes_ok",
    "retries",
    "local_ok",
    "frames_failed",
)
"""The router-wide counters the health topic shows, in the order it shows them."""


class Mode(StrEnum):
    """The router's mode, as the health topic shows it (see :mod:`agent.router`)."""

    SERVERLESS = "serverless"
    LOCAL = "local"
    AUTH_ERROR = "auth_error"
    UNAVAILABLE = "unavailable"


class Way(StrEnum):
    """Where one frame goes."""

    REMOTE = "remote"
    LOCAL = "local"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one frame. ``probe``: this hosted call tests a down endpoint. ``reason``: why a frame
    that would have gone to the hosted API goes local, or why it fails; ``kind``: a failure's kind."""

    way: Way
    probe: bool = False
    reason: str | None = None
    kind: str = ""


@dataclass(frozen=True, slots=True)
class ModeChange:
    mode: Mode
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a reported call outcome changed: the reason to give this frame, the mode changes to announce,
    and at most one log line (``level``, message) for the shell to write."""

    reason: str = ""
    changes: tuple[ModeChange, ...] = ()
    log: tuple[int, str] | None = None


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


@dataclass
class _CameraState:
    budget: CallBudget
    gate: ChangeGate
    counters: Counter[str] = field(default_factory=Counter)


class RoutePolicy:
    """Modes, probing and failover (see :mod:`agent.router` for what each mode means). Not thread-safe:
    its owner serialises calls. Every method takes the time from its caller."""

    def __init__(
        self, settings: ServerlessSettings, *, configured: str, has_local: bool, has_remote: bool, now: float
    ) -> None:
        self._s = settings
        self.configured = configured
        self.use_remote = configured != "local" and has_remote
        self.fallback = configured != "serverless" and has_local
        self._down_mode = Mode.LOCAL if self.fallback else Mode.UNAVAILABLE
        if self.use_remote:
            self.mode, self.reason = Mode.SERVERLESS, "serverless API in use"
        elif configured == "local":
            self.mode, self.reason = Mode.LOCAL, "inference.mode is local"
        else:
            self.mode, self.reason = Mode.LOCAL, "no serverless client configured"
        self.mode_since = now
        self.probe_interval = settings.probe_interval_s
        self.next_probe_at = now
        self.probe_in_flight = False
        self.counters: Counter[str] = Counter()
        self.remote_failed: Counter[str] = Counter()  # failed hosted attempts by error kind
        self._cameras: dict[str, _CameraState] = {}

    # ------------------------------------------------------------------ per camera

    def camera(self, name: str) -> _CameraState:
        cam = self._cameras.get(name)
        if cam is None:
            s = self._s
            cam = self._cameras[name] = _CameraState(
                CallBudget(s.max_calls_per_minute, s.max_calls_per_day), ChangeGate(s.change_gate)
            )
        return cam

    def count(self, camera: str, name: str) -> None:
        """One ``name`` event for ``camera``: counted router-wide and per camera."""
        self.counters[name] += 1
        self.camera(camera).counters[name] += 1

    def admit(self, now: float, camera: str, thumb: NDArray[np.uint8] | None) -> bool:
        """The change gate (``thumb`` None when it is off), then, hosted-only while hosted, the call caps."""
        cam = self.camera(camera)
        if thumb is not None and cam.gate.unchanged(thumb):
            self.count(camera, "gated")
            return False
        if self.use_remote and not self.fallback and self.mode == Mode.SERVERLESS:
            capped = cam.budget.capped(now)
            if capped is not None:
                self.count(camera, capped[0])
                return False
        if thumb is not None:
            cam.gate.admitted(thumb)
        self.count(camera, "admitted")
        return True

    # ------------------------------------------------------------------ decisions

    def decide(self, now: float, camera: str) -> Plan:
        """The way for ``camera``'s next frame. A hosted plan has already been counted against the budget."""
        if not self.use_remote:
            return Plan(Way.LOCAL)
        budget = self.camera(camera).budget
        if self.mode == Mode.SERVERLESS:
            capped = budget.capped(now)
            if capped is not None:
                self.count(camera, capped[0])
                if self.fallback:
                    return Plan(Way.LOCAL, reason=capped[1])
                return Plan(Way.FAIL, reason=capped[1], kind=capped[0])
            self._spend(budget, now)
            return Plan(Way.REMOTE)
        if not self.probe_in_flight and now >= self.next_probe_at:
            capped = budget.capped(now)
            if capped is None:
                self.probe_in_flight = True
                self.counters["probes"] += 1
                self._spend(budget, now)
                return Plan(Way.REMOTE, probe=True)
            self.count(camera, capped[0])
        if self.fallback:
            return Plan(Way.LOCAL, reason=self.reason)
        return Plan(Way.FAIL, reason=f"{self.mode}: {self.reason}", kind=self.mode)

    def may_retry(self, now: float, camera: str) -> bool:
        """Hosted-only: whether one more attempt at a failed frame may go now (counted if so)."""
        if self.mode != Mode.SERVERLESS:  # another frame has declared the outage meanwhile
            return False
        budget = self.camera(camera).budget
        if budget.capped(now) is not None:
            return False
        self._spend(budget, now)
        self.counters["retries"] += 1
        return True

    def _spend(self, budget: CallBudget, now: float) -> None:
        budget.spend(now)
        self.counters["remote_attempts"] += 1

    # ------------------------------------------------------------------ outcomes

    def succeeded(self, now: float, *, probe: bool, endpoint: str) -> Verdict:
        """A hosted call answered."""
        self.counters["remote_ok"] += 1
        if probe:
            self.probe_in_flight = False
            self.counters["probes_ok"] += 1
        if not probe or self.mode == Mode.SERVERLESS:
            return Verdict()
        downtime = now - self.mode_since
        self.probe_interval = self._s.probe_interval_s
        change = self._set_mode(now, Mode.SERVERLESS, f"serverless API answers again (after {downtime:.1f} s)")
        line = f"serverless API answers again after {downtime:.1f} s: frames go to {endpoint}"
        return Verdict(self.reason, change, (logging.INFO, line))

    def failed(self, now: float, *, kind: str, detail: str, retry_after: float | None, probe: bool) -> Verdict:
        """A hosted call failed (``detail``: the redacted error text). Switches mode if due."""
        self.remote_failed[kind] += 1
        wait = retry_after or 0.0
        if kind == "auth":
            mode, reason = Mode.AUTH_ERROR, f"serverless API refused the key: {detail}"
        else:
            mode, reason = self._down_mode, f"serverless API unavailable: {detail}"
        if probe:
            return self._probe_failed(now, mode, reason, detail, wait)
        if self.mode == Mode.SERVERLESS:
            self.counters["fallbacks"] += 1
            self.probe_interval = self._s.probe_interval_s
            self.next_probe_at = now + max(self.probe_interval, wait)
            changes = self._set_mode(now, mode, reason)
            then = "frames go to the local model" if self.fallback else "frames fail until it answers"
            level = logging.ERROR if mode == Mode.AUTH_ERROR else logging.WARNING
            return Verdict(
                reason, changes, (level, f"{reason}; {then}; next probe in {self.next_probe_at - now:.1f} s")
            )
        # a call started before the switch: only a stronger signal changes anything
        self.next_probe_at = max(self.next_probe_at, now + wait)
        if mode == Mode.AUTH_ERROR and self.mode != Mode.AUTH_ERROR:
            return Verdict(reason, self._set_mode(now, mode, reason), (logging.ERROR, reason))
        return Verdict(reason)

    def _probe_failed(self, now: float, mode: Mode, reason: str, detail: str, wait: float) -> Verdict:
        self.probe_in_flight = False
        self.probe_interval = min(self.probe_interval * 2, self._s.probe_max_s)
        self.next_probe_at = now + max(self.probe_interval, wait)
        changes: tuple[ModeChange, ...] = ()
        if mode == Mode.AUTH_ERROR or self.mode != Mode.AUTH_ERROR:  # auth_error holds until a probe answers
            changes = self._set_mode(now, mode, reason)
        level = logging.ERROR if mode == Mode.AUTH_ERROR else logging.INFO
        return Verdict(
            self.reason, changes, (level, f"probe failed ({detail}); next probe in {self.next_probe_at - now:.1f} s")
        )

    def _set_mode(self, now: float, mode: Mode, reason: str) -> tuple[ModeChange, ...]:
        self.reason = reason
        if mode == self.mode:
            return ()
        self.mode = mode
        self.mode_since = now
        return (ModeChange(mode, reason),)

    # ------------------------------------------------------------------ reporting

    def next_probe_in(self, now: float) -> float | None:
        """Seconds to the next probe while the hosted API is not in use; None while it is."""
        if self.use_remote and self.mode != Mode.SERVERLESS:
            return round(max(0.0, self.next_probe_at - now), 2)
        return None

    def camera_stats(self, now: float) -> dict[str, dict[str, int]]:
        return {
            name: {**cam.budget.stats(now), **{k: cam.counters[k] for k in sorted(cam.counters)}}
            for name, cam in self._cameras.items()
        }
