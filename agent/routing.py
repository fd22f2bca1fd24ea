"""The routing policy, apart from its mechanism: which way a frame goes, and what a call's outcome changes.

Everything here is plain state and arithmetic on an injected ``now``: no locks, no threads, no network, no
logging. :class:`agent.router.Router` holds one :class:`RoutePolicy` under its lock, asks it for a
:class:`Plan` per frame, carries the plan out (a hosted call, the local model) and reports the outcome back
(:meth:`RoutePolicy.succeeded`, :meth:`RoutePolicy.failed`); what those return (mode changes, a log line)
the shell delivers outside its lock.

Parts (the per-camera :class:`~agent.camera_budget.CallBudget` and
:class:`~agent.camera_budget.ChangeGate` live in :mod:`agent.camera_budget`):

:class:`RoutePolicy`
    The modes, probing with backoff, failover, the hosted-call budget per camera (at most ``max_in_flight``
    calls at once: a frame that finds them all busy goes local, it never queues), the classification of
    failures, and the counters the health topic shows.

Failures are classified (:func:`classify`): ``auth`` (401/403), ``config`` (404, 405, a 400 on
:data:`CONFIG_AFTER_400` calls in a row, or the same 5xx on every call for :data:`CONFIG_AFTER_S`) and
``outage`` (connect, timeout, TLS, 5xx, 429, a body that is not the API's). ``auth`` and ``config`` are
configuration errors: one ERROR line, probes at ``probe_max_s``, and the mode holds until a probe answers.
Each frame that goes local says why in a short, stable code (:data:`FALLBACK_CODES`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from agent.camera_budget import CallBudget, ChangeGate
from agent.config import ServerlessSettings
from agent.results import iso_utc

__all__ = [
    "CONFIG_AFTER_400",
    "CONFIG_AFTER_S",
    "CallBudget",
    "ChangeGate",
    "Fault",
    "Mode",
    "ModeChange",
    "Plan",
    "RoutePolicy",
    "Verdict",
    "Way",
    "classify",
    "failure_code",
]

_DAY_S = 86400.0
_MINUTE_S = 60.0
_THUMB_WIDTH = 64

CONFIG_AFTER_400 = 3
"""A 400 on this many hosted calls in a row (none answering between) is a configuration error, not a bad frame."""
CONFIG_AFTER_S = 60.0
"""The same server error (5xx) on every hosted call for this long is a configuration error (for example Roboflow's own
server answering 503 "Could not connect to Roboflow API" for a model it can't load)."""

FALLBACK_CODES = (
    "connect",
    "timeout",
    "tls",
    "bad_response",
    "http_NNN",
    "auth",
    "config",
    "capped_minute",
    "capped_day",
    "probe_in_flight",
    "hosted_busy",
)
"""What ``fallback_reason`` may say (``http_NNN``: the HTTP status, e.g. ``http_503``); the detail is in the log."""

COUNTER_NAMES = (
    "admitted",
    "gated",
    "capped_minute",
    "capped_day",
    "remote_ok",
    "remote_attempts",
    "hosted_busy",
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
    CONFIG_ERROR = "config_error"
    UNAVAILABLE = "unavailable"


class Fault(StrEnum):
    """What a failed hosted call says about the set-up."""

    AUTH = "auth"  # the key isn't allowed
    CONFIG = "config"  # the model, route or request is wrong: retrying won't help
    OUTAGE = "outage"  # the service is down, slow or busy: it may come back


def failure_code(kind: str, status: int | None) -> str:
    """The short, stable code for a failed call: the HTTP status where one came (``http_503``), else the
    error's kind (``connect``, ``timeout``, ``tls``, ``bad_response``)."""
    if kind == "auth":
        return "auth"
    if status is not None and kind in ("http", "rate_limited"):
        return f"http_{status}"
    return kind


def classify(kind: str, status: int | None) -> Fault:
    """A single failed call on its own (repetition is judged by :class:`RoutePolicy`)."""
    if kind == "auth" or status in (401, 403):
        return Fault.AUTH
    if status in (404, 405):
        return Fault.CONFIG
    return Fault.OUTAGE


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
    reason: str | None = None  # local: a fallback code; fail: the human reason
    kind: str = ""


@dataclass(frozen=True, slots=True)
class ModeChange:
    mode: Mode
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a reported call outcome changed: the reason to give this frame (``code``: its fallback code,
    ``reason``: the human text), the mode changes to announce, and at most one log line (``level``, message)
    for the shell to write."""

    reason: str = ""
    changes: tuple[ModeChange, ...] = ()
    log: tuple[int, str] | None = None
    code: str = ""


@dataclass
class _CameraState:
    budget: CallBudget
    gate: ChangeGate
    counters: Counter[str] = field(default_factory=Counter)
    hosted_in_flight: int = 0  # hosted calls of this camera's frames now under way


@dataclass
class _Streak:
    """Failed hosted calls in a row with nothing answering between."""

    code: str
    since: float
    calls: int = 1


class RoutePolicy:
    """Modes, probing, failover and the hosted-call budget (see :mod:`agent.router` for what each mode
    means). Not thread-safe: its owner serialises calls. Every method takes the time from its caller."""

    def __init__(
        self,
        settings: ServerlessSettings,
        *,
        configured: str,
        has_local: bool,
        has_remote: bool,
        now: float,
    ) -> None:
        self._s = settings
        self.configured = configured
        self.use_remote = configured != "local" and has_remote
        self.fallback = configured != "serverless" and has_local
        self._down_mode = Mode.LOCAL if self.fallback else Mode.UNAVAILABLE
        if self.use_remote:
            self.mode, self.reason = Mode.SERVERLESS, "serverless API not called yet"
        elif configured == "local":
            self.mode, self.reason = Mode.LOCAL, "inference.mode is local"
        else:
            self.mode, self.reason = Mode.LOCAL, "no serverless client configured"
        self.code = ""  # the fallback code of the failure that made the mode (frames going local say it)
        self.mode_since = now
        self.answered = False  # a hosted call has answered since the start
        self.probe_interval = settings.probe_interval_s
        self.next_probe_at = now
        self.probe_in_flight = False
        self.counters: Counter[str] = Counter()
        self.remote_failed: Counter[str] = Counter()  # failed hosted attempts by error kind
        self._streak: _Streak | None = None
        self._cameras: dict[str, _CameraState] = {}

    def reconfigure(self, now: float, configured: str, *, has_local: bool, has_remote: bool) -> tuple[ModeChange, ...]:
        """A runtime change of ``inference.mode`` (a command): the mode it leads to, probing afresh."""
        if configured == self.configured:
            return ()
        was_remote = self.use_remote
        self.configured = configured
        self.use_remote = configured != "local" and has_remote
        self.fallback = configured != "serverless" and has_local
        self._down_mode = Mode.LOCAL if self.fallback else Mode.UNAVAILABLE
        why = f"inference mode set to {configured} at runtime"
        if not self.use_remote:
            return self._set_mode(now, Mode.LOCAL, why)
        if not was_remote or self.mode == Mode.SERVERLESS:
            self.next_probe_at = now
            return self._set_mode(now, Mode.SERVERLESS, f"{why}; serverless API not called yet")
        if self.mode in (Mode.LOCAL, Mode.UNAVAILABLE):  # still down: the other kind of down
            return self._set_mode(now, self._down_mode, self.reason)
        return ()  # auth_error / config_error hold until a probe answers

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
        """The way for ``camera``'s next frame. A hosted plan holds one of the camera's ``max_in_flight``
        slots until :meth:`call_done`, and has been counted against the call budget."""
        if not self.use_remote:
            return Plan(Way.LOCAL)
        cam = self.camera(camera)
        busy = cam.hosted_in_flight >= self._s.max_in_flight
        if self.mode == Mode.SERVERLESS:
            if busy:  # the hosted API is slower than the frames: never queue behind it
                self.count(camera, "hosted_busy")
                if self.fallback:
                    return Plan(Way.LOCAL, reason="hosted_busy")
                return Plan(Way.FAIL, reason="all hosted calls busy (max_in_flight)", kind="hosted_busy")
            capped = cam.budget.capped(now)
            if capped is not None:
                self.count(camera, capped[0])
                if self.fallback:
                    return Plan(Way.LOCAL, reason=capped[0])
                return Plan(Way.FAIL, reason=capped[1], kind=capped[0])
            self._spend(cam, now)
            return Plan(Way.REMOTE)
        if not self.probe_in_flight and now >= self.next_probe_at and not busy:
            capped = cam.budget.capped(now)
            if capped is None:
                self.probe_in_flight = True
                self.counters["probes"] += 1
                self._spend(cam, now)
                return Plan(Way.REMOTE, probe=True)
            self.count(camera, capped[0])
        if self.fallback:
            return Plan(Way.LOCAL, reason="probe_in_flight" if self.probe_in_flight else self.code or self.mode)
        return Plan(Way.FAIL, reason=f"{self.mode}: {self.reason}", kind=self.mode)

    def may_retry(self, now: float, camera: str) -> bool:
        """Hosted-only: whether one more attempt at a failed frame may go now (counted if so; it uses the
        slot its frame already holds)."""
        if self.mode != Mode.SERVERLESS:  # another frame has declared the outage meanwhile
            return False
        cam = self.camera(camera)
        if cam.budget.capped(now) is not None:
            return False
        cam.budget.spend(now)
        self.counters["remote_attempts"] += 1
        self.counters["retries"] += 1
        return True

    def call_done(self, camera: str) -> None:
        """A hosted plan of ``camera``'s has been carried out (answered or failed): its slot is free."""
        cam = self.camera(camera)
        cam.hosted_in_flight = max(0, cam.hosted_in_flight - 1)

    def _spend(self, cam: _CameraState, now: float) -> None:
        cam.budget.spend(now)
        cam.hosted_in_flight += 1
        self.counters["remote_attempts"] += 1

    # ------------------------------------------------------------------ outcomes

    def succeeded(self, now: float, *, probe: bool, endpoint: str) -> Verdict:
        """A hosted call answered."""
        self.counters["remote_ok"] += 1
        self._streak = None
        first = not self.answered
        self.answered = True
        if probe:
            self.probe_in_flight = False
            self.counters["probes_ok"] += 1
        if not probe or self.mode == Mode.SERVERLESS:
            if first and self.mode == Mode.SERVERLESS:
                self.reason = "serverless API answers"
            return Verdict()
        downtime = now - self.mode_since
        self.probe_interval = self._s.probe_interval_s
        self.code = ""
        change = self._set_mode(now, Mode.SERVERLESS, f"serverless API answers again (after {downtime:.1f} s)")
        line = f"serverless API answers again after {downtime:.1f} s: frames go to {endpoint}"
        return Verdict(self.reason, change, (logging.INFO, line))

    def failed(
        self, now: float, *, kind: str, detail: str, retry_after: float | None, probe: bool, status: int | None = None
    ) -> Verdict:
        """A hosted call failed (``detail``: the redacted error text). Classifies it; switches mode if due."""
        self.remote_failed[kind] += 1
        code = failure_code(kind, status)
        fault = self._judge(now, kind, status, code)
        wait = retry_after or 0.0
        if fault == Fault.AUTH:
            mode, reason = Mode.AUTH_ERROR, f"serverless API refused the key: {detail}"
        elif fault == Fault.CONFIG:
            mode, reason, code = Mode.CONFIG_ERROR, self._config_problem(now, status, detail), "config"
        else:
            mode, reason = self._down_mode, f"serverless API unavailable: {detail}"
        configuration = mode in (Mode.AUTH_ERROR, Mode.CONFIG_ERROR)
        if probe:
            return self._probe_failed(now, mode, reason, code, detail, wait)
        if self.mode == Mode.SERVERLESS:
            self.counters["fallbacks"] += 1
            self.probe_interval = self._s.probe_max_s if configuration else self._s.probe_interval_s
            self.next_probe_at = now + max(self.probe_interval, wait)
            self.code = code
            changes = self._set_mode(now, mode, reason)
            then = "frames go to the local model" if self.fallback else "frames fail until it answers"
            level = logging.ERROR if configuration else logging.WARNING
            line = f"{reason}; {then}; next probe in {self.next_probe_at - now:.1f} s"
            return Verdict(reason, changes, (level, line), code)
        # a call started before the switch: only a stronger signal changes anything
        self.next_probe_at = max(self.next_probe_at, now + wait)
        if configuration and self.mode != mode and self.mode not in (Mode.AUTH_ERROR, Mode.CONFIG_ERROR):
            self.code = code
            self.probe_interval = self._s.probe_max_s
            self.next_probe_at = max(self.next_probe_at, now + self.probe_interval)
            return Verdict(reason, self._set_mode(now, mode, reason), (logging.ERROR, reason), code)
        return Verdict(reason, code=code)

    def _judge(self, now: float, kind: str, status: int | None, code: str) -> Fault:
        """This failure's fault, given the failures in a row before it."""
        streak = self._streak
        if streak is not None and streak.code == code:
            streak.calls += 1
        else:
            streak = self._streak = _Streak(code, now)
        fault = classify(kind, status)
        if fault != Fault.OUTAGE:
            return fault
        if status == 400 and streak.calls >= CONFIG_AFTER_400:
            return Fault.CONFIG
        server_error = status is not None and status >= 500
        if server_error and now - streak.since >= CONFIG_AFTER_S and streak.calls >= 2:
            return Fault.CONFIG
        return Fault.OUTAGE

    def _config_problem(self, now: float, status: int | None, detail: str) -> str:
        """The configuration error in words (what the health topic's ``problems`` says after "hosted API: ")."""
        if status == 404:
            return f"model {self._s.model_id} not found (HTTP 404); check serverless.model_id"
        if status == 405:
            return "the route is not the API's (HTTP 405); check serverless.api_url"
        streak = self._streak
        if status == 400:
            return f"every call rejected (HTTP 400, {streak.calls if streak else 0} in a row): {detail}"
        since = now - streak.since if streak else 0.0
        return f"the same failure on every call for {since:.0f} s: {detail}"

    def _probe_failed(self, now: float, mode: Mode, reason: str, code: str, detail: str, wait: float) -> Verdict:
        self.probe_in_flight = False
        configuration = mode in (Mode.AUTH_ERROR, Mode.CONFIG_ERROR)
        held = self.mode in (Mode.AUTH_ERROR, Mode.CONFIG_ERROR)
        if configuration:
            self.probe_interval = self._s.probe_max_s
        else:
            self.probe_interval = min(self.probe_interval * 2, self._s.probe_max_s)
        self.next_probe_at = now + max(self.probe_interval, wait)
        changes: tuple[ModeChange, ...] = ()
        if configuration or not held:  # a configuration error holds until a probe answers
            entering = self.mode != mode
            self.code = code
            changes = self._set_mode(now, mode, reason)
            if configuration and entering:
                return Verdict(self.reason, changes, (logging.ERROR, reason), code)
        level = logging.DEBUG if held or configuration else logging.INFO  # said once at ERROR already
        line = f"probe failed ({detail}); next probe in {self.next_probe_at - now:.1f} s"
        return Verdict(self.reason, changes, (level, line), code)

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

    def problem(self, now: float, wall: float) -> str | None:
        """What the health topic's ``problems`` says about the hosted API (``wall``: the epoch time at ``now``)."""
        if self.mode == Mode.AUTH_ERROR:
            return "serverless API key rejected"
        if self.mode == Mode.CONFIG_ERROR:
            return f"hosted API: {self.reason}"
        if self.mode == Mode.UNAVAILABLE:
            return "serverless API unavailable and no local model"
        if self.use_remote and self.mode == Mode.LOCAL:
            since = iso_utc(wall - (now - self.mode_since))
            return f"hosted API unreachable since {since} ({self.code or 'down'}), serving local"
        return None

    def camera_stats(self, now: float) -> dict[str, dict[str, int]]:
        return {
            name: {
                **cam.budget.stats(now),
                "hosted_in_flight": cam.hosted_in_flight,
                **{k: cam.counters[k] for k in sorted(cam.counters)},
            }
            for name, cam in self._cameras.items()
        }
