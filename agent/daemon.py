"""The daemon: wires capture → route → results → outbox → MQTT, and owns their threads.

Threads: per camera one grabber (in :mod:`agent.capture`), one worker (here; it infers itself when one
frame at a time is in flight, as with a local model) and, with the hosted API, up to ``max_in_flight``
inference calls; one publisher feeder plus paho's network thread; one health
thread; one watchdog thread. Every wait has a timeout; stopping is orderly: capture stops, in-flight
frames finish and go to the outbox, the outbox drains to the broker for up to ``DRAIN_TIMEOUT_S``,
and what is left stays on disk for the next start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from agent import __version__
from agent.capture import Camera
from agent.config import Settings
from agent.frames import DecodePolicy, Frame
from agent.health import status_line
from agent.measures import LatencyWindow, Rate
from agent.model import ModelError, OnnxModel, SessionPool, limit_helper_threads, onnx_providers
from agent.outbox import Outbox
from agent.package import read_names_file
from agent.publisher import Publisher
from agent.results import encode, iso_utc, to_message
from agent.router import FrameFailed, Outcome, Router
from agent.sdnotify import Notifier
from agent.serverless import ServerlessClient

__all__ = ["DRAIN_TIMEOUT_S", "Agent", "StartupError", "load_local_model", "onnx_providers"]

log = logging.getLogger("agent.daemon")

DRAIN_TIMEOUT_S = 10.0
_POLL_S = 0.5
_FRAME_ID_BLOCK = 1000


class StartupError(Exception):
    """The agent can't start (an unusable model, for example); the message says why."""


def load_local_model(settings: Settings) -> OnnxModel | SessionPool:
    """The local model; with ``sessions`` > 1 that many sessions of it in a :class:`SessionPool`."""
    local = settings.inference.local
    assert local.model is not None
    models: list[OnnxModel] = []
    model_log = logging.getLogger("agent.model")
    level = model_log.level
    try:
        for i in range(local.sessions):
            if i == 1:  # the first load said everything worth saying; the others would repeat it
                model_log.setLevel(logging.ERROR)
            models.append(
                OnnxModel(
                    local.model,
                    threads=local.threads,
                    providers=onnx_providers(local.providers),
                    trt_cache_dir=settings.state_dir / "tensorrt",  # used only when TensorRT is
                )
            )
    except ModelError as exc:
        raise StartupError(f"inference.local.model: {exc}") from None
    finally:
        model_log.setLevel(level)
    model: OnnxModel | SessionPool = models[0] if len(models) == 1 else SessionPool(models)
    if len(models) > 1:
        log.info("%d sessions of the local model run frames side by side", len(models))
    if local.classes is not None:
        try:
            model.class_names = read_names_file(local.classes)
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"inference.local.classes: cannot read {local.classes}: {exc}") from None
    return model  # OnnxModel has logged its format, classes, input size and providers


class _Heartbeat:
    """When a stage loop last went round: the watchdog's evidence that the stage is not stuck."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.at


class _CameraWorker:
    """Takes sampled frames from one camera, infers with up to N in flight, and puts results in order."""

    def __init__(self, agent: Agent, camera: Camera, in_flight: int) -> None:
        self._agent = agent
        self.camera = camera
        self.name = camera.status().name
        self._in_flight = in_flight
        # One in flight (local inference): the worker infers itself, no hand-off to another thread per frame.
        self._pool: ThreadPoolExecutor | None = None
        if in_flight > 1:
            self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"infer-{self.name}")
        self._pending: deque[tuple[Frame, int, Future[Outcome]]] = deque()
        # frame_id survives restarts without a disk write per frame: ids are reserved in blocks, the exact
        # value is stored on a clean stop; after a crash the next run starts past the reserved block (a gap
        # that marks the restart, never an id used twice).
        self._meta_key = f"frame_id/{self.name}"
        stored = agent.outbox.get_meta(self._meta_key)
        self._frame_id = int(stored) if stored and stored.isdigit() else 0
        self._reserved = self._frame_id
        self.processed = Rate(window_s=10.0)
        self.gated = 0
        self.errors = 0
        self.heartbeat = _Heartbeat()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"worker-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        agent = self._agent
        try:
            while not agent.stopping.is_set():
                self.heartbeat.beat()
                self._complete(block=len(self._pending) >= self._in_flight)
                frame = self.camera.read(timeout=_POLL_S)
                if frame is None:
                    if self.camera.ended and not self._pending:
                        log.info("camera %s: source ended", self.name)
                        break
                    continue
                agent.first_frame.set()
                if not agent.router.admit(frame):
                    self.gated += 1
                    continue
                self._frame_id += 1
                if self._frame_id > self._reserved:
                    self._reserved = self._frame_id + _FRAME_ID_BLOCK
                    agent.outbox.set_meta(self._meta_key, str(self._reserved))
                future = self._infer(frame)
                self._pending.append((frame, self._frame_id, future))
            # Stopping (or the source ended): finish what is in flight, in order.
            while self._pending:
                self.heartbeat.beat()
                self._complete(block=True)
            agent.outbox.set_meta(self._meta_key, str(self._frame_id))
        except Exception:  # a bug, not a state: say it loudly, keep the daemon's other cameras going
            log.exception("camera %s: worker failed", self.name)
            self.errors += 1
        finally:
            self.done.set()

    def _infer(self, frame: Frame) -> Future[Outcome]:
        if self._pool is not None:
            return self._pool.submit(self._agent.router.infer, frame)
        future: Future[Outcome] = Future()
        try:
            future.set_result(self._agent.router.infer(frame))
        except Exception as exc:  # handed to _complete exactly as the pool would hand it
            future.set_exception(exc)
        return future

    def _complete(self, *, block: bool) -> None:
        """Put every finished head-of-line result into the outbox; wait for the head if ``block``."""
        while self._pending:
            frame, frame_id, future = self._pending[0]
            if not future.done():
                if not block:
                    return
                try:
                    future.exception(timeout=_POLL_S)
                except TimeoutError:
                    return
            self._pending.popleft()
            block = False
            try:
                outcome = future.result()
            except FrameFailed as exc:  # serverless mode without a local model, or the local model broke
                self.errors += 1
                self._agent.deliver_failure(self.name, frame, frame_id, exc)
            else:
                self._agent.deliver(self.name, frame, frame_id, outcome)
            self.processed.mark()


class Agent:
    """One running seg-agent. ``run()`` blocks until ``stop()`` or until every source has ended."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self.stopping = threading.Event()
        self.first_frame = threading.Event()
        self.started_at = time.monotonic()
        self.latency = {"serverless": LatencyWindow(), "local": LatencyWindow()}
        self.topic_detections = f"{settings.topic_base}/detections"
        self.topic_status = f"{settings.topic_base}/status"
        self.topic_health = f"{settings.topic_base}/health"
        self.topic_errors = f"{settings.topic_base}/errors"
        self.notifier = Notifier.from_env(self._environ)
        self._workers: list[_CameraWorker] = []
        self._threads: list[threading.Thread] = []
        self._health_now = threading.Event()
        self._state = "starting"

    # ------------------------------------------------------------------ life cycle

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Start every stage, wait for the stop, shut down in order. Returns the exit status."""
        self._start()
        try:
            while not self.stopping.wait(_POLL_S):
                if self._workers and all(w.done.is_set() for w in self._workers):
                    log.info("every source has ended; stopping")
                    break
        finally:
            self._shutdown()
        return 0

    def _start(self) -> None:
        s = self.settings
        # OpenCV's and OpenBLAS's own thread pools compete with ONNX Runtime's for the few cores of a Pi.
        capped = limit_helper_threads()
        log.debug("one thread for OpenCV and for %s", ", ".join(capped) or "no OpenBLAS found")
        mode = s.inference.mode
        local = load_local_model(s) if mode in ("auto", "local") else None
        remote = None
        if mode in ("auto", "serverless"):
            remote = ServerlessClient(
                s.inference.serverless,
                confidence=s.inference.confidence,
                overlap=s.inference.overlap,
                max_detections=s.inference.max_detections,
                pool_size=s.inference.serverless.max_in_flight * len(s.cameras),
            )
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error(
                "state_dir %s can't be created (%s): the outbox will be kept in memory only",
                s.state_dir,
                exc.strerror or exc,
            )
        self.outbox = Outbox(s.state_dir / "outbox.sqlite3", s.outbox)
        self.router = Router(
            s.inference,
            local=local,
            remote=remote,
            on_mode_change=self._mode_changed,
            local_slots=s.inference.local.sessions,
        )
        self.publisher = Publisher(s.mqtt, self.outbox, status_topic=self.topic_status)
        self.publisher.start()
        decode = DecodePolicy(  # the router's parts: what each way a frame may take needs of its pixels
            model_hw=None if local is None else local.needed_hw,
            upload_hw=None if remote is None else remote.upload_hw,
            change_gate=s.inference.serverless.change_gate > 0,
            hosted=lambda: self.router.mode == "serverless",
        )
        for cam_settings in s.cameras:
            camera = Camera(cam_settings, decode=decode)
            camera.start()
            in_flight = s.inference.serverless.max_in_flight if remote is not None else s.inference.local.sessions
            worker = _CameraWorker(self, camera, in_flight)
            self._workers.append(worker)
            worker.start()
        self._spawn(self._health_loop, "health")
        self._spawn(self._watchdog_loop, "watchdog")
        self._state = "running"
        log.info(
            "seg-agent %s started: device %s, %d camera(s), mode %s, broker %s:%d",
            __version__,
            s.device_id,
            len(s.cameras),
            mode,
            s.mqtt.host,
            s.mqtt.port,
        )

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _shutdown(self) -> None:
        self._state = "stopping"
        self.stopping.set()
        self.notifier.stopping()
        log.info("stopping: finishing in-flight frames")
        for worker in self._workers:
            worker.camera.stop(timeout=2.0)
        for worker in self._workers:
            worker.join(timeout=max(10.0, self.settings.inference.serverless.timeout_s * 2))
        self.outbox.flush()
        self._publish_health()
        self.publisher.stop(timeout=DRAIN_TIMEOUT_S)
        depth = self.outbox.stats().depth
        if depth:
            log.warning("stopped with %d result(s) not yet delivered; they stay in the outbox", depth)
        self.outbox.close()
        self.router.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.notifier.close()
        log.info("stopped")

    # ------------------------------------------------------------------ the way of one result

    def deliver(self, camera: str, frame: Frame, frame_id: int, outcome: Outcome) -> None:
        self.latency[outcome.source].add(outcome.latency_ms)
        message = to_message(
            outcome.api,
            device_id=self.settings.device_id,
            camera=camera,
            frame_id=frame_id,
            timestamp=frame.timestamp,
            source=outcome.source,
            model_id=self.settings.model_id,
            latency_ms=outcome.latency_ms,
            fallback_reason=outcome.fallback_reason,
        )
        self.outbox.put(self.topic_detections, encode(message), created=frame.timestamp)

    def deliver_failure(self, camera: str, frame: Frame, frame_id: int, exc: FrameFailed) -> None:
        """A frame that got no result is said on the errors topic, never shown as "no objects"."""
        log.warning("camera %s: frame %d got no result (%s): %s", camera, frame_id, exc.kind, exc.reason)
        message = {
            "device_id": self.settings.device_id,
            "camera": camera,
            "frame_id": frame_id,
            "timestamp": iso_utc(frame.timestamp),
            "error": exc.kind,
            "reason": exc.reason,
            "attempts": exc.attempts,
            "model_id": self.settings.model_id,
        }
        self.outbox.put(self.topic_errors, encode(message), created=frame.timestamp)

    # ------------------------------------------------------------------ health and watchdog

    def _mode_changed(self, mode: str, reason: str) -> None:
        log.warning("inference mode is now %s: %s", mode, reason)
        self._health_now.set()

    def health(self) -> dict[str, Any]:
        cameras: dict[str, Any] = {}
        for w in self._workers:
            cam = asdict(w.camera.status())
            cam.pop("name", None)
            cam["fps_processed"] = w.processed.rate()
            cam["frames_processed"] = w.processed.total
            cam["frames_gated"] = w.gated
            cam["frames_failed"] = w.errors
            cameras[w.name] = cam
        outbox = asdict(self.outbox.stats())
        mqtt = asdict(self.publisher.stats())
        router = self.router.stats()
        problems = [f"camera {n} {c['state']}" for n, c in cameras.items() if c["state"] != "streaming"]
        if outbox["degraded"]:
            problems.append("outbox in memory only")
        if not mqtt["connected"]:
            problems.append("broker disconnected")
        if self.router.mode == "auth_error":
            problems.append("serverless API key rejected")
        elif self.router.mode == "unavailable":
            problems.append("serverless API unavailable and no local model")
        state = self._state if self._state != "running" or not problems else "degraded"
        return {
            "state": state,
            "problems": problems,
            "mode": self.router.mode,
            "device_id": self.settings.device_id,
            "model_id": self.settings.model_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "timestamp": iso_utc(time.time()),
            "cameras": cameras,
            "inference": {
                "latency": {k: v.summary() for k, v in self.latency.items()},
                "router": router,
            },
            "outbox": outbox,
            "mqtt": mqtt,
        }

    def _publish_health(self) -> None:
        try:
            doc = self.health()
        except Exception:
            log.exception("health report failed")
            return
        self.publisher.publish_retained(self.topic_health, json.dumps(doc, default=str).encode())
        self.notifier.status(status_line(doc))

    def _health_loop(self) -> None:
        interval = self.settings.health.interval_s
        next_at = time.monotonic()
        while not self.stopping.is_set():
            if self._health_now.wait(max(0.0, min(_POLL_S, next_at - time.monotonic()))) or (
                time.monotonic() >= next_at
            ):
                self._health_now.clear()
                self._publish_health()
                next_at = time.monotonic() + interval

    def pipeline_alive(self, window_s: float) -> bool:
        """True while frames move: a result went to the outbox within ``window_s`` and no stage is stuck."""
        live = [w for w in self._workers if not w.done.is_set()]
        if not live:
            return False
        if any(w.heartbeat.age() > window_s for w in live):
            return False
        ages = [w.processed.age() for w in live]
        return any(a is not None and a <= window_s for a in ages)

    def _watchdog_loop(self) -> None:
        """READY=1 after the first frame; then WATCHDOG=1 every half WatchdogSec, but only while frames move."""
        interval = self.notifier.watchdog_interval_s
        ready = False
        next_ping = time.monotonic()
        while not self.stopping.wait(_POLL_S):
            if not ready and self.first_frame.is_set():
                ready = True
                self.notifier.ready(status="first frame captured")
                log.info("ready: model loaded, first frame captured")
            if not ready or interval is None or time.monotonic() < next_ping:
                continue
            next_ping = time.monotonic() + interval
            window = max(2 * interval, self._slowest_frame_period())
            if self.pipeline_alive(window):
                self.notifier.watchdog()
            else:
                log.warning("no frame went through the pipeline for %.0f s: not feeding the watchdog", window)

    def _slowest_frame_period(self) -> float:
        """Two sample periods of the slowest camera plus a hosted call's timeout: quiet is not stuck."""
        periods = [1.0 / c.fps for c in self.settings.cameras if c.fps > 0]
        remote = self.settings.inference.mode != "local"
        return 2 * max(periods, default=0.0) + (self.settings.inference.serverless.timeout_s if remote else 0.0)
