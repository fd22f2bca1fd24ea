"""Which way each frame goes: the hosted API while it answers, the local model when it does not.

This module is the thin, thread-safe shell: it asks :class:`agent.routing.RoutePolicy` (pure, lock-free) for
each frame's plan, makes the hosted call or runs the local model, and reports the outcome back to the
policy. The rules themselves (below) live in the policy.

Modes (:attr:`Router.mode`, shown on the health topic):

``serverless``
    The hosted API answers; every admitted frame is sent (within the per-camera call caps).
``local``
    ``inference.mode: local``, or ``auto`` after a remote failure. In ``auto`` the frame whose call failed is
    run through the local model at once, so it still gets a result; later frames go local too, and the
    endpoint is *probed*: when the backoff interval has passed, the next real frame goes to the hosted API
    as the probe (no extra call is made), one at a time. A probe that answers switches back to
    ``serverless``; one that fails doubles the interval (``probe_interval_s`` .. ``probe_max_s``) and its
    frame goes local. ``Retry-After`` delays the next probe to at least that long.
``auth_error``
    A 401/403: the key isn't allowed (a configuration error, logged once at ERROR). Frames go local
    (``auto``) and probing continues every ``probe_max_s``, so a key fixed server-side is picked up.
``config_error``
    The model, route or request is wrong (404, 405, a 400 on every call, the same 5xx on every call for a
    minute: see :mod:`agent.routing`): as ``auth_error``, and the health topic's ``problems`` says what.
``unavailable``
    ``inference.mode: serverless`` (no local fallback) and the endpoint is down; see the failure policy.

Failure policy in ``serverless`` mode (no local model): a frame whose call fails is retried, bounded
(``retry_delays``, 0.5 s then 1 s by default; ``Retry-After`` honoured; no retry on 401/403 or when the
server asks for more than :data:`MAX_RETRY_WAIT_S`). If it still fails, :meth:`Router.infer` raises
:class:`FrameFailed` and the router enters ``unavailable``: later frames fail at once with
:class:`FrameFailed` (no call, no waiting) until a probe frame answers. Nothing is ever published as an
empty result: an outage must not look like "no objects". The worker turns :class:`FrameFailed` into an
error record (counted, logged, visible on the health topic); frames are not queued for later, because
the camera would outrun any queue during a long outage and stale results are of little use.

Latency budget, per camera: at most ``max_in_flight`` hosted calls at once, ever. A frame that finds them
all busy goes to the local model (``auto``, ``fallback_reason: hosted_busy``); the worker never hands a
hosted-only router more frames than that (the camera keeps only the newest frame meanwhile), so no result
waits behind a queue of calls: none is older than about one timeout plus one model run.

Cost control, per camera: ``max_calls_per_minute`` (sliding 60 s window) and ``max_calls_per_day``
(24 h window from the first call of the window) count remote *attempts*, probes included. A frame over a
cap goes local (``auto``); in ``serverless`` mode :meth:`Router.admit` skips it instead. The change gate
(``change_gate`` > 0) skips a frame whose small grayscale thumbnail differs from the last admitted
frame's by less than ``change_gate`` (mean absolute difference, 0-255), in every mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from agent.camera_budget import thumbnail
from agent.config import InferenceSettings
from agent.frames import Frame
from agent.logs import redact
from agent.measures import LatencyWindow
from agent.postprocess import Detections
from agent.results import detections_to_api
from agent.routing import COUNTER_NAMES, Plan, RoutePolicy, Verdict, Way
from agent.serverless import ServerlessClient, ServerlessError

__all__ = [
    "MAX_RETRY_WAIT_S",
    "Detector",
    "FrameFailed",
    "Outcome",
    "Router",
]

log = logging.getLogger(__name__)

MAX_RETRY_WAIT_S = 5.0
"""In ``serverless`` mode a failed frame is retried only if the wait before the retry is at most this."""

_NO_PIXELS = np.empty((0, 0, 3), dtype=np.uint8)  # for the client when it sends the camera's JPEG as it is


class Detector(Protocol):
    """What the local model offers (:class:`agent.model.OnnxModel` satisfies it). Thresholds 0..1."""

    class_names: list[str]

    def detect(
        self,
        image_bgr: NDArray[np.uint8],
        *,
        confidence: float,
        overlap: float,
        max_detections: int,
        frame_hw: tuple[int, int] | None = None,
    ) -> Detections: ...

    def needed_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """One frame's result: the API response object and how it was made.

    ``latency_ms`` is the whole time :meth:`Router.infer` took for the frame (a failed remote attempt
    before the local run included). ``fallback_reason`` says why a frame that would have gone to the
    hosted API was run locally, as a short code (:data:`agent.routing.FALLBACK_CODES`; ``None`` for hosted
    results and in ``local`` mode). ``model_id``: the model that made the result.
    """

    api: dict[str, Any]
    source: Literal["serverless", "local"]
    latency_ms: float
    fallback_reason: str | None
    model_id: str = ""


class FrameFailed(Exception):
    """No result for this frame. Raised in ``serverless`` mode (no local model) when the hosted API can't
    be used, or in any mode when the local model itself raises. ``kind``: a :class:`ServerlessError` kind,
    or ``unavailable``, ``auth_error``, ``capped_minute``, ``capped_day``, ``local``. Text is redacted."""

    def __init__(self, kind: str, reason: str, *, attempts: int = 0, latency_ms: float = 0.0) -> None:
        self.kind = kind
        self.reason = reason
        self.attempts = attempts
        self.latency_ms = latency_ms
        super().__init__(reason)

    def __str__(self) -> str:
        return self.reason


class _ClassCheck:
    """Warns once per hosted class name the local model doesn't know (the two sides' names differ)."""

    def __init__(self, known: list[str] | None) -> None:
        self._known = None if known is None else set(known)
        self.unknown: set[str] = set()

    def check(self, api: dict[str, Any]) -> None:
        if self._known is None:
            return
        for p in api.get("predictions", ()):
            name = p.get("class")
            if isinstance(name, str) and name not in self._known and name not in self.unknown:
                self.unknown.add(name)
                log.warning(
                    "hosted model returned class %r, which the local model doesn't know;"
                    " set inference.local.class_map so both sides use the same names",
                    name,
                )


def _policy_stats(p: RoutePolicy, now: float, key: str) -> dict[str, Any]:
    """The policy's part of :meth:`Router.stats` (reasons redacted)."""
    return {
        "mode": str(p.mode),
        "configured_mode": p.configured,
        "reason": redact(p.reason, key),
        "mode_for_s": round(now - p.mode_since, 1),
        "probe": {"interval_s": p.probe_interval, "next_in_s": p.next_probe_in(now), "in_flight": p.probe_in_flight},
        **{k: p.counters[k] for k in COUNTER_NAMES},
        "remote_failed": dict(p.remote_failed),
        "saved": {
            "frames_gated": p.counters["gated"],
            "remote_calls_capped": p.counters["capped_minute"] + p.counters["capped_day"],
        },
        "cameras": p.camera_stats(now),
    }


class Router:
    """Carries out the :class:`agent.routing.RoutePolicy` for every camera's frames and keeps the state the
    health topic shows. Thread-safe: the policy is used under one lock, calls and the model run outside it."""

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        local: Detector | None,
        remote: ServerlessClient | None,
        on_mode_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_delays: Sequence[float] = (0.5, 1.0),
        sleep: Callable[[float], None] = time.sleep,
        local_slots: int = 1,
        local_model_id: str = "",
    ) -> None:
        """``on_mode_change(mode, reason)`` is called on every mode change, from the thread that saw it,
        in order, outside the router's state lock. The router owns ``remote`` (:meth:`close` closes it).
        ``local_slots``: how many frames ``local.detect`` may run at once (a :class:`agent.model.SessionPool`'s
        size; 1 serialises them). ``local_model_id``: what local results say in ``model_id``."""
        configured = settings.mode
        if configured == "local" and local is None:
            raise ValueError("inference.mode is 'local' but no local model was given")
        if configured == "serverless" and remote is None:
            raise ValueError("inference.mode is 'serverless' but no serverless client was given")
        if local is None and remote is None:
            raise ValueError("neither a local model nor a serverless client was given")
        self._settings = settings
        self._s = settings.serverless
        self._local = local
        self._remote = remote
        self._on_mode_change = on_mode_change
        self._clock = clock
        self._sleep = sleep
        self._retry_delays = tuple(retry_delays)
        self._key = settings.serverless.api_key.reveal()
        self._lock = threading.Lock()
        self._local_lock = threading.BoundedSemaphore(max(1, local_slots))
        self._notify_lock = threading.RLock()
        self._events: deque[tuple[str, str]] = deque()
        self._policy = RoutePolicy(
            self._s, configured=configured, has_local=local is not None, has_remote=remote is not None, now=clock()
        )
        self._local_model_id = local_model_id
        self._hosted_model_id = remote.model_id if remote is not None else ""
        self.latency = {"serverless": LatencyWindow(512), "local": LatencyWindow(512)}
        """Each result's time in :meth:`infer`, by the way it was made: the one record of inference latency."""
        self._classes = _ClassCheck(self.class_names() if local is not None else None)
        self._closed = False

    # ------------------------------------------------------------------ public

    @property
    def mode(self) -> str:
        with self._lock:
            return str(self._policy.mode)

    @property
    def configured_mode(self) -> str:
        """``inference.mode`` as it is now (``auto``, ``serverless`` or ``local``; see :meth:`set_mode`)."""
        with self._lock:
            return self._policy.configured

    def modes(self) -> tuple[str, ...]:
        """The values :meth:`set_mode` accepts: those whose parts (local model, hosted client) were built."""
        local, remote = self._local is not None, self._remote is not None
        return tuple(m for m, ok in (("auto", local and remote), ("serverless", remote), ("local", local)) if ok)

    def class_names(self) -> list[str]:
        """The local model's class names as results say them (``class_map`` applied); empty without one."""
        if self._local is None:
            return []
        cmap = self._settings.local.class_map
        return list(dict.fromkeys(cmap.get(n, n) for n in self._local.class_names))

    def set_mode(self, mode: str) -> None:
        """Change ``inference.mode`` at runtime; ValueError for a mode this router has no parts for."""
        if mode not in self.modes():
            raise ValueError(f"mode {mode!r} needs parts this agent did not load (it offers {', '.join(self.modes())})")
        with self._lock:
            changes = self._policy.reconfigure(
                self._clock(), mode, has_local=self._local is not None, has_remote=self._remote is not None
            )
            self._events.extend((str(c.mode), c.reason) for c in changes)
        self._flush_events()

    def admit(self, frame: Frame) -> bool:
        """Change gate (and, in ``serverless`` mode, the call caps): ``False`` = skip this frame.

        Called by the camera's worker in frame order, before :meth:`infer`. Skips are counted.
        """
        thumb = thumbnail(frame.pixels()) if self._s.change_gate > 0 else None
        with self._lock:
            return self._policy.admit(self._clock(), frame.camera, thumb)

    def infer(self, frame: Frame) -> Outcome:
        """One frame's result. Blocking and thread-safe.

        The frame's pixels are asked for at the size the way it takes needs (``Frame.pixels``; results are in
        the true frame's pixels either way); a frame that goes up as the camera's own JPEG is not decoded.

        In ``auto`` and ``local`` mode network trouble never raises: the frame is run locally. Raises
        :class:`FrameFailed` when there is no way to a result (``serverless`` mode while the API fails; the
        local model raising).
        """
        t0 = time.perf_counter()
        try:
            with self._lock:
                plan = self._policy.decide(self._clock(), frame.camera)
            if plan.way == Way.LOCAL:
                return self._run_local(frame, plan.reason, t0)
            if plan.way == Way.FAIL:
                self._count_frame_failed(frame.camera)
                raise FrameFailed(plan.kind, plan.reason or plan.kind, latency_ms=_ms_since(t0))
            return self._run_remote(frame, plan, t0)
        finally:
            self._flush_events()

    def stats(self) -> dict[str, Any]:
        """Plain data for the health topic and logs (redacted)."""
        with self._lock:
            result = _policy_stats(self._policy, self._clock(), self._key)
            if self._classes.unknown:
                result["unknown_remote_classes"] = sorted(self._classes.unknown)[:20]
        if self._remote is not None:
            result["client"] = self._remote.stats()
        return result

    def problems(self) -> list[str]:
        """What is wrong with the way to a result, for the health topic's ``problems`` (redacted)."""
        with self._lock:
            problem = self._policy.problem(self._clock(), time.time())
        return [] if problem is None else [redact(problem, self._key)]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._remote is not None:
            self._remote.close()
        close_local = getattr(self._local, "close", None)  # a SessionPool's session threads
        if close_local is not None:
            close_local()

    # ------------------------------------------------------------------ remote

    def _apply(self, verdict: Verdict) -> str:
        """Queue the verdict's mode changes and write its log line; returns the frame's reason. Under the lock."""
        self._events.extend((str(c.mode), redact(c.reason, self._key)) for c in verdict.changes)
        if verdict.log is not None:
            log.log(verdict.log[0], "%s", verdict.log[1])
        return redact(verdict.reason, self._key)

    def _call(self, frame: Frame) -> tuple[dict[str, Any] | None, ServerlessError | None]:
        assert self._remote is not None
        try:
            hw = frame.frame_hw
            upload_hw = self._remote.upload_hw(hw)
            # the camera's own JPEG goes up as it is when no resizing is needed: then no pixels are read
            image = _NO_PIXELS if frame.jpeg is not None and upload_hw == hw else frame.pixels(upload_hw)
            return self._remote.infer(image, frame_hw=hw, jpeg=frame.jpeg), None
        except ServerlessError as exc:
            return None, exc
        except Exception as exc:  # a bug or an odd frame: treat like an unusable answer
            return None, ServerlessError("bad_response", f"unexpected {type(exc).__name__}: {exc}", secret=self._key)

    def _run_remote(self, frame: Frame, plan: Plan, t0: float) -> Outcome:
        camera = frame.camera
        try:
            api, error = self._call(frame)
            attempts = 1
            if error is not None and not plan.probe and not self._policy.fallback and error.kind != "auth":
                api, error, more = self._retry(frame, error)
                attempts += more
        finally:
            with self._lock:
                self._policy.call_done(camera)
        if api is not None:
            with self._lock:
                endpoint = self._remote.endpoint if self._remote else "it"
                self._apply(self._policy.succeeded(self._clock(), probe=plan.probe, endpoint=endpoint))
                self._classes.check(api)
            latency = _ms_since(t0)
            self.latency["serverless"].add(latency)
            return Outcome(api, "serverless", latency, None, self._hosted_model_id)
        assert error is not None
        detail = redact(str(error), self._key)
        with self._lock:
            verdict = self._policy.failed(
                self._clock(),
                kind=error.kind,
                detail=detail,
                retry_after=error.retry_after,
                probe=plan.probe,
                status=error.status,
            )
            reason = self._apply(verdict)
            if self._policy.fallback:
                self._policy.count(camera, "failed_over")
        if self._policy.fallback:
            return self._run_local(frame, verdict.code, t0)
        self._count_frame_failed(camera)
        raise FrameFailed(error.kind, reason, attempts=attempts, latency_ms=_ms_since(t0))

    def _retry(self, frame: Frame, error: ServerlessError) -> tuple[dict[str, Any] | None, ServerlessError, int]:
        """``serverless`` mode only: bounded retries of one frame before declaring the API unavailable."""
        camera = frame.camera
        attempts = 0
        for delay in self._retry_delays:
            wait = max(delay, error.retry_after or 0.0)
            if wait > MAX_RETRY_WAIT_S:
                break
            self._sleep(wait)
            with self._lock:
                if not self._policy.may_retry(self._clock(), camera):
                    return None, error, attempts
            attempts += 1
            api, next_error = self._call(frame)
            with self._lock:
                self._policy.remote_failed[error.kind] += 1  # the attempt this one retried
            if api is not None:
                return api, error, attempts
            assert next_error is not None
            error = next_error
            if error.kind == "auth":
                break
        return None, error, attempts

    # ------------------------------------------------------------------ local

    def _run_local(self, frame: Frame, reason: str | None, t0: float) -> Outcome:
        if self._local is None:  # only reachable through a programming error
            raise FrameFailed("local", "no local model", latency_ms=_ms_since(t0))
        camera, frame_hw = frame.camera, frame.frame_hw
        h, w = frame_hw
        s = self._settings
        error: str | None = None
        try:  # decoded now (at the reduction the model needs) if the capture left the frame as its JPEG
            image = frame.pixels(self._local.needed_hw(frame_hw))
        except ValueError:
            self._count_frame_failed(camera)
            raise FrameFailed("local", "the frame's JPEG could not be decoded", latency_ms=_ms_since(t0)) from None
        try:
            with self._local_lock:
                t1 = time.perf_counter()
                det = self._local.detect(
                    image,
                    confidence=s.confidence / 100.0,
                    overlap=s.overlap / 100.0,
                    max_detections=s.max_detections,
                    frame_hw=frame_hw,
                )
                run_s = time.perf_counter() - t1
            api = detections_to_api(
                det, self._local.class_names, image_wh=(int(w), int(h)), time_s=run_s, class_map=s.local.class_map
            )
        except Exception as exc:
            log.exception("local model failed on a frame from %s", camera)
            error = f"local model failed: {type(exc).__name__}: {exc}"
        if error is not None:
            self._count_frame_failed(camera)
            raise FrameFailed("local", redact(error, self._key), latency_ms=_ms_since(t0))
        latency = _ms_since(t0)
        with self._lock:
            self._policy.counters["local_ok"] += 1
        self.latency["local"].add(latency)
        return Outcome(api, "local", latency, reason or None, self._local_model_id)

    # ------------------------------------------------------------------ bookkeeping

    def _count_frame_failed(self, camera: str) -> None:
        with self._lock:
            self._policy.count(camera, "frames_failed")

    def _flush_events(self) -> None:
        """Deliver mode changes in the order they happened, outside the state lock."""
        with self._notify_lock:
            while True:
                with self._lock:
                    if not self._events:
                        return
                    mode, reason = self._events.popleft()
                if self._on_mode_change is None:
                    continue
                try:
                    self._on_mode_change(mode, reason)
                except Exception:
                    log.exception("on_mode_change callback failed")


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
