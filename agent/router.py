"""Which way each frame goes: the hosted API while it answers, the local model when it does not.

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
    A 401/403: the key isn't allowed (a configuration error, logged at ERROR). Frames go local (``auto``)
    and probing continues with backoff, so a key fixed server-side is picked up.
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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.config import InferenceSettings
from agent.frames import Frame
from agent.postprocess import Detections
from agent.results import detections_to_api
from agent.serverless import ServerlessClient, ServerlessError, redact

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

_THUMB_WIDTH = 64
_NO_PIXELS = np.empty((0, 0, 3), dtype=np.uint8)  # for the client when it sends the camera's JPEG as it is
_LATENCY_SAMPLES = 512
_DAY_S = 86400.0
_MINUTE_S = 60.0

Mode = Literal["serverless", "local", "auth_error", "unavailable"]


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
    hosted API was run locally (``None`` for hosted results and in ``local`` mode).
    """

    api: dict[str, Any]
    source: Literal["serverless", "local"]
    latency_ms: float
    fallback_reason: str | None


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


@dataclass
class _Camera:
    minute: deque[float] = field(default_factory=deque)
    day_start: float | None = None
    day_count: int = 0
    remote_calls: int = 0
    last_thumb: NDArray[np.uint8] | None = None
    counters: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Plan:
    way: Literal["remote", "local", "fail"]
    probe: bool = False
    reason: str | None = None
    kind: str = ""


def _thumbnail(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    h, w = image.shape[:2]
    tw = min(_THUMB_WIDTH, w)
    th = max(1, round(h * tw / w))
    small = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
    if small.ndim == 3 and small.shape[2] == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    elif small.ndim == 3:
        small = small[:, :, 0]
    return np.ascontiguousarray(small, dtype=np.uint8)


def _summary(samples: Sequence[float]) -> dict[str, float | int]:
    if not samples:
        return {"n": 0}
    arr = np.asarray(samples, dtype=np.float64)
    return {
        "n": int(arr.size),
        "mean": round(float(arr.mean()), 1),
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": round(float(arr.max()), 1),
    }


class Router:
    """Sends each frame the right way and keeps the state the health topic shows. Thread-safe."""

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
    ) -> None:
        """``on_mode_change(mode, reason)`` is called on every mode change, from the thread that saw it,
        in order, outside the router's state lock. The router owns ``remote`` (:meth:`close` closes it).
        ``local_slots``: how many frames ``local.detect`` may run at once (a :class:`agent.model.SessionPool`'s
        size; 1 serialises them)."""
        self._settings = settings
        self._s = settings.serverless
        self._local = local
        self._remote = remote
        self._on_mode_change = on_mode_change
        self._clock = clock
        self._sleep = sleep
        self._retry_delays = tuple(retry_delays)
        self._configured = settings.mode
        self._key = settings.serverless.api_key.reveal()
        if self._configured == "local" and local is None:
            raise ValueError("inference.mode is 'local' but no local model was given")
        if self._configured == "serverless" and remote is None:
            raise ValueError("inference.mode is 'serverless' but no serverless client was given")
        if local is None and remote is None:
            raise ValueError("neither a local model nor a serverless client was given")
        self._use_remote = self._configured != "local" and remote is not None
        self._fallback = self._configured != "serverless" and local is not None
        self._down_mode: Mode = "local" if self._fallback else "unavailable"

        self._lock = threading.Lock()
        self._local_lock = threading.BoundedSemaphore(max(1, local_slots))
        self._notify_lock = threading.RLock()
        self._events: deque[tuple[str, str]] = deque()
        now = clock()
        self._mode: Mode
        if self._use_remote:
            self._mode, self._reason = "serverless", "serverless API in use"
        elif self._configured == "local":
            self._mode, self._reason = "local", "inference.mode is local"
        else:
            self._mode, self._reason = "local", "no serverless client configured"
        self._mode_since = now
        self._probe_interval = self._s.probe_interval_s
        self._next_probe_at = now
        self._probe_in_flight = False
        self._counters: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._latency: dict[str, deque[float]] = {
            "serverless": deque(maxlen=_LATENCY_SAMPLES),
            "local": deque(maxlen=_LATENCY_SAMPLES),
        }
        self._cameras: dict[str, _Camera] = {}
        self._known_classes: set[str] | None = None
        if local is not None:
            cmap = settings.local.class_map
            self._known_classes = {cmap.get(n, n) for n in local.class_names}
        self._unknown_classes: set[str] = set()
        self._closed = False

    # ------------------------------------------------------------------ public

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def admit(self, frame: Frame) -> bool:
        """Change gate (and, in ``serverless`` mode, the call caps): ``False`` = skip this frame.

        Called by the camera's worker in frame order, before :meth:`infer`. Skips are counted.
        """
        gate = self._s.change_gate
        thumb = _thumbnail(frame.pixels()) if gate > 0 else None
        with self._lock:
            cam = self._camera(frame.camera)
            if thumb is not None and cam.last_thumb is not None and cam.last_thumb.shape == thumb.shape:
                diff = float(cv2.absdiff(thumb, cam.last_thumb).mean())
                if diff < gate:
                    self._counters["gated"] += 1
                    cam.counters["gated"] += 1
                    return False
            if self._use_remote and not self._fallback and self._mode == "serverless":
                capped = self._cap(cam, self._clock())
                if capped is not None:
                    self._count_capped(cam, capped[0])
                    return False
            if thumb is not None:
                cam.last_thumb = thumb
            self._counters["admitted"] += 1
            cam.counters["admitted"] += 1
            return True

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
                plan = self._plan(frame.camera)
            if plan.way == "local":
                return self._run_local(frame, plan.reason, t0)
            if plan.way == "fail":
                self._count_frame_failed(frame.camera)
                raise FrameFailed(plan.kind, plan.reason or plan.kind, latency_ms=_ms_since(t0))
            return self._run_remote(frame, plan.probe, t0)
        finally:
            self._flush_events()

    def stats(self) -> dict[str, Any]:
        """Plain data for the health topic and logs (redacted)."""
        with self._lock:
            now = self._clock()
            next_probe = None
            if self._use_remote and self._mode != "serverless":
                next_probe = round(max(0.0, self._next_probe_at - now), 2)
            cameras = {}
            for name, cam in self._cameras.items():
                self._trim_minute(cam, now)
                day = cam.day_count if cam.day_start is not None and now - cam.day_start < _DAY_S else 0
                cameras[name] = {
                    "remote_calls": cam.remote_calls,
                    "calls_last_minute": len(cam.minute),
                    "calls_today": day,
                    **{k: cam.counters[k] for k in sorted(cam.counters)},
                }
            counters = {
                k: self._counters[k]
                for k in (
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
            }
            result: dict[str, Any] = {
                "mode": self._mode,
                "configured_mode": self._configured,
                "reason": self._redact(self._reason),
                "mode_for_s": round(now - self._mode_since, 1),
                "probe": {
                    "interval_s": self._probe_interval,
                    "next_in_s": next_probe,
                    "in_flight": self._probe_in_flight,
                },
                **counters,
                "remote_failed": dict(self._failed),
                "saved": {
                    "frames_gated": self._counters["gated"],
                    "remote_calls_capped": self._counters["capped_minute"] + self._counters["capped_day"],
                },
                "latency_ms": {src: _summary(list(samples)) for src, samples in self._latency.items()},
                "cameras": cameras,
            }
            if self._unknown_classes:
                result["unknown_remote_classes"] = sorted(self._unknown_classes)[:20]
        if self._remote is not None:
            result["client"] = self._remote.stats()
        return result

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._remote is not None:
            self._remote.close()

    # ------------------------------------------------------------------ planning (under self._lock)

    def _camera(self, name: str) -> _Camera:
        cam = self._cameras.get(name)
        if cam is None:
            cam = self._cameras[name] = _Camera()
        return cam

    def _plan(self, camera: str) -> _Plan:
        if not self._use_remote:
            return _Plan("local")
        now = self._clock()
        cam = self._camera(camera)
        if self._mode == "serverless":
            capped = self._cap(cam, now)
            if capped is not None:
                self._count_capped(cam, capped[0])
                if self._fallback:
                    return _Plan("local", reason=capped[1])
                return _Plan("fail", reason=capped[1], kind=capped[0])
            self._count_call(cam, now)
            return _Plan("remote")
        if not self._probe_in_flight and now >= self._next_probe_at:
            capped = self._cap(cam, now)
            if capped is None:
                self._probe_in_flight = True
                self._counters["probes"] += 1
                self._count_call(cam, now)
                return _Plan("remote", probe=True)
            self._count_capped(cam, capped[0])
        if self._fallback:
            return _Plan("local", reason=self._reason)
        return _Plan("fail", reason=f"{self._mode}: {self._reason}", kind=self._mode)

    def _trim_minute(self, cam: _Camera, now: float) -> None:
        while cam.minute and cam.minute[0] <= now - _MINUTE_S:
            cam.minute.popleft()

    def _cap(self, cam: _Camera, now: float) -> tuple[str, str] | None:
        per_day, per_minute = self._s.max_calls_per_day, self._s.max_calls_per_minute
        if per_day and cam.day_start is not None and now - cam.day_start < _DAY_S and cam.day_count >= per_day:
            return "capped_day", f"capped: {per_day} remote calls per day reached (max_calls_per_day)"
        if per_minute:
            self._trim_minute(cam, now)
            if len(cam.minute) >= per_minute:
                return (
                    "capped_minute",
                    f"capped: {per_minute} remote calls in the last minute (max_calls_per_minute)",
                )
        return None

    def _count_capped(self, cam: _Camera, which: str) -> None:
        self._counters[which] += 1
        cam.counters[which] += 1

    def _count_call(self, cam: _Camera, now: float) -> None:
        cam.remote_calls += 1
        self._counters["remote_attempts"] += 1
        if self._s.max_calls_per_minute:
            cam.minute.append(now)
        if cam.day_start is None or now - cam.day_start >= _DAY_S:
            cam.day_start, cam.day_count = now, 0
        cam.day_count += 1

    def _set_mode(self, mode: Mode, reason: str) -> None:
        reason = self._redact(reason)
        self._reason = reason
        if mode == self._mode:
            return
        self._mode = mode
        self._mode_since = self._clock()
        self._events.append((mode, reason))

    def _redact(self, text: str) -> str:
        return redact(text, self._key)

    # ------------------------------------------------------------------ remote

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

    def _run_remote(self, frame: Frame, probe: bool, t0: float) -> Outcome:
        camera = frame.camera
        api, error = self._call(frame)
        attempts = 1
        if error is not None and not probe and not self._fallback and error.kind != "auth":
            api, error, more = self._retry(frame, error)
            attempts += more
        if api is not None:
            with self._lock:
                self._remote_ok(probe, api)
            latency = _ms_since(t0)
            self._record_latency("serverless", latency)
            return Outcome(api=api, source="serverless", latency_ms=latency, fallback_reason=None)
        assert error is not None
        with self._lock:
            reason = self._remote_failed(error, probe)
        if self._fallback:
            with self._lock:
                self._counters["failed_over"] += 1
                self._camera(camera).counters["failed_over"] += 1
            return self._run_local(frame, reason, t0)
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
                if self._mode != "serverless":  # another frame has declared the outage meanwhile
                    return None, error, attempts
                cam = self._camera(camera)
                now = self._clock()
                if self._cap(cam, now) is not None:
                    return None, error, attempts
                self._count_call(cam, now)
                self._counters["retries"] += 1
            attempts += 1
            api, next_error = self._call(frame)
            with self._lock:
                self._failed[error.kind] += 1  # the attempt this one retried
            if api is not None:
                return api, error, attempts
            assert next_error is not None
            error = next_error
            if error.kind == "auth":
                break
        return None, error, attempts

    def _remote_ok(self, probe: bool, api: dict[str, Any]) -> None:
        self._counters["remote_ok"] += 1
        if probe:
            self._probe_in_flight = False
            self._counters["probes_ok"] += 1
        if probe and self._mode != "serverless":
            downtime = self._clock() - self._mode_since
            self._probe_interval = self._s.probe_interval_s
            self._set_mode("serverless", f"serverless API answers again (after {downtime:.1f} s)")
            log.info(
                "serverless API answers again after %.1f s: frames go to %s",
                downtime,
                self._remote.endpoint if self._remote else "it",
            )
        if self._known_classes is not None:
            for p in api.get("predictions", ()):
                name = p.get("class")
                if isinstance(name, str) and name not in self._known_classes and name not in self._unknown_classes:
                    self._unknown_classes.add(name)
                    log.warning(
                        "hosted model returned class %r, which the local model doesn't know;"
                        " set inference.local.class_map so both sides use the same names",
                        name,
                    )

    def _remote_failed(self, error: ServerlessError, probe: bool) -> str:
        """Account for a failed call, switch mode if due; returns the reason for this frame."""
        now = self._clock()
        self._failed[error.kind] += 1
        detail = self._redact(str(error))
        retry_after = error.retry_after or 0.0
        if error.kind == "auth":
            mode: Mode = "auth_error"
            reason = f"serverless API refused the key: {detail}"
        else:
            mode = self._down_mode
            reason = f"serverless API unavailable: {detail}"
        if probe:
            self._probe_in_flight = False
            self._probe_interval = min(self._probe_interval * 2, self._s.probe_max_s)
            self._next_probe_at = now + max(self._probe_interval, retry_after)
            if mode == "auth_error" or self._mode != "auth_error":  # auth_error holds until a probe answers
                self._set_mode(mode, reason)
            log.log(
                logging.ERROR if mode == "auth_error" else logging.INFO,
                "probe failed (%s); next probe in %.1f s",
                detail,
                self._next_probe_at - now,
            )
            return self._reason
        if self._mode == "serverless":
            self._counters["fallbacks"] += 1
            self._probe_interval = self._s.probe_interval_s
            self._next_probe_at = now + max(self._probe_interval, retry_after)
            self._set_mode(mode, reason)
            then = "frames go to the local model" if self._fallback else "frames fail until it answers"
            log.log(
                logging.ERROR if mode == "auth_error" else logging.WARNING,
                "%s; %s; next probe in %.1f s",
                reason,
                then,
                self._next_probe_at - now,
            )
            return reason
        # a call started before the switch: only a stronger signal changes anything
        self._next_probe_at = max(self._next_probe_at, now + retry_after)
        if mode == "auth_error" and self._mode != "auth_error":
            self._set_mode(mode, reason)
            log.error("%s", reason)
        return reason

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
            raise FrameFailed("local", self._redact(error), latency_ms=_ms_since(t0))
        latency = _ms_since(t0)
        with self._lock:
            self._counters["local_ok"] += 1
        self._record_latency("local", latency)
        return Outcome(
            api=api,
            source="local",
            latency_ms=latency,
            fallback_reason=self._redact(reason) if reason else None,
        )

    # ------------------------------------------------------------------ bookkeeping

    def _count_frame_failed(self, camera: str) -> None:
        with self._lock:
            self._counters["frames_failed"] += 1
            self._camera(camera).counters["frames_failed"] += 1

    def _record_latency(self, source: str, latency_ms: float) -> None:
        with self._lock:
            self._latency[source].append(latency_ms)

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
