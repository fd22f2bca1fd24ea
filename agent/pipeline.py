"""Builds every stage from the settings and runs their one life cycle: ``start()`` in the frame's order
reversed (the way out first), ``stop()`` in the frame's order (the way in first, so what is in flight can
still leave).

A frame's way: ``Camera`` → ``CameraWorker`` (``Router`` → hosted client or local model) → :class:`Sink`
(the API JSON and its envelope) → ``Outbox`` (disk) → ``Publisher`` → broker. Nothing here runs a frame
itself; :func:`build` only makes and connects the parts, and does no I/O beyond loading the model and
opening the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.capture import Camera
from agent.config import Settings
from agent.frames import DecodePolicy, Frame
from agent.logs import Throttle
from agent.measures import PublishAges
from agent.model import ModelError, OnnxModel, SessionPool, onnx_providers
from agent.outbox import Outbox
from agent.package import read_names_file
from agent.publisher import Publisher
from agent.results import encode, iso_utc, to_message
from agent.router import FrameFailed, Outcome, Router
from agent.serverless import ServerlessClient
from agent.worker import CameraWorker, FrameIds

__all__ = ["Pipeline", "Sink", "StartupError", "Topics", "build", "load_local_model"]

log = logging.getLogger("agent.daemon")


class StartupError(Exception):
    """The agent can't start (an unusable model, for example); the message says why."""


@dataclass(frozen=True, slots=True)
class Topics:
    detections: str
    status: str
    health: str
    errors: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        base = settings.topic_base
        return cls(f"{base}/detections", f"{base}/status", f"{base}/health", f"{base}/errors")


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


class Sink:
    """Turns each frame's outcome into its message and puts it in the outbox: the results of frames on the
    detections topic, frames that got none on the errors topic (never shown as "no objects")."""

    def __init__(self, settings: Settings, outbox: Outbox, topics: Topics) -> None:
        self._device_id = settings.device_id
        self._model_id = settings.model_id
        self._outbox = outbox
        self._topics = topics
        self._warn = Throttle(log)  # one line a minute per camera and kind, with a count: not one per frame

    def deliver(self, frame: Frame, frame_id: int, outcome: Outcome) -> None:
        # latency_ms is the whole time from capture to result: a frame that waited for its turn says so
        latency_ms = max(outcome.latency_ms, (time.time() - frame.timestamp) * 1000.0)
        message = to_message(
            outcome.api,
            device_id=self._device_id,
            camera=frame.camera,
            frame_id=frame_id,
            timestamp=frame.timestamp,
            source=outcome.source,
            model_id=outcome.model_id or self._model_id,
            latency_ms=latency_ms,
            fallback_reason=outcome.fallback_reason,
        )
        self._outbox.put(self._topics.detections, encode(message), created=frame.timestamp, camera=frame.camera)

    def deliver_failure(self, frame: Frame, frame_id: int, exc: FrameFailed) -> None:
        self._warn.log(
            logging.WARNING,
            f"{frame.camera}/{exc.kind}",
            "camera %s: frame %d got no result (%s): %s",
            frame.camera,
            frame_id,
            exc.kind,
            exc.reason,
        )
        message = {
            "device_id": self._device_id,
            "camera": frame.camera,
            "frame_id": frame_id,
            "timestamp": iso_utc(frame.timestamp),
            "error": exc.kind,
            "reason": exc.reason,
            "attempts": exc.attempts,
            "model_id": self._model_id,
        }
        self._outbox.put(self._topics.errors, encode(message), created=frame.timestamp, camera=frame.camera)


@dataclass
class Pipeline:
    """Every stage of one agent, built by :func:`build`."""

    settings: Settings
    topics: Topics
    outbox: Outbox
    router: Router
    publisher: Publisher
    workers: list[CameraWorker] = field(default_factory=list)
    publish_ages: PublishAges = field(default_factory=PublishAges)  # fed by the outbox's acknowledgements

    def start(self) -> None:
        """Start the way out first, so the first result finds it ready."""
        self.outbox.start()
        self.publisher.start()
        for worker in self.workers:
            worker.camera.start()
            worker.start()

    def stop(self) -> None:
        """Stop in the frame's order: capture, then in-flight frames finish into the outbox, which is flushed
        (:meth:`close` then drains it to the broker). The daemon's ``stopping`` event must be set first (the
        workers finish when they see it)."""
        for worker in self.workers:
            worker.camera.stop(timeout=2.0)
        for worker in self.workers:
            worker.stop(timeout=max(10.0, self.settings.inference.serverless.timeout_s * 2))
        self.outbox.flush()

    def close(self, drain_timeout_s: float) -> None:
        """After :meth:`stop` (and a last health message): the broker link, then the files and the client."""
        self.publisher.stop(timeout=drain_timeout_s)
        depth = self.outbox.stats().depth
        if depth:
            log.warning("stopped with %d result(s) not yet delivered; they stay in the outbox", depth)
        self.outbox.stop()
        self.router.close()


def build(
    settings: Settings,
    *,
    stopping: threading.Event,
    on_mode_change: Callable[[str, str], None],
    on_frame: Callable[[], None],
) -> Pipeline:
    """Every stage made from ``settings`` and connected; nothing started."""
    s = settings
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
    topics = Topics.of(s)
    outbox = Outbox(s.state_dir / "outbox.sqlite3", s.outbox)
    router = Router(
        s.inference,
        local=local,
        remote=remote,
        on_mode_change=on_mode_change,
        local_slots=s.inference.local.sessions,
        local_model_id=s.local_model_id,
    )
    publisher = Publisher(s.mqtt, outbox, status_topic=topics.status)
    pipeline = Pipeline(s, topics, outbox, router, publisher)
    outbox.on_delivered(pipeline.publish_ages.delivered)
    sink = Sink(s, outbox, topics)
    # Frames under way per camera: the hosted calls (the router holds them to max_in_flight) plus, in auto
    # mode, the local runs of frames that found every hosted call busy.
    hosted_calls = s.inference.serverless.max_in_flight if remote is not None else 0
    local_runs = s.inference.local.sessions if local is not None else 0
    decode = DecodePolicy(  # the router's parts: what each way a frame may take needs of its pixels
        model_hw=None if local is None else local.needed_hw,
        upload_hw=None if remote is None else remote.upload_hw,
        change_gate=s.inference.serverless.change_gate > 0,
        hosted=lambda: router.mode == "serverless",
    )
    for cam_settings in s.cameras:
        camera = Camera(cam_settings, decode=decode)
        # A file read in batch (realtime: false) waits for the worker, so nothing is lost by waiting for a
        # hosted slot: only live sources (and realtime files) overflow to the local model.
        batch = cam_settings.is_file and not cam_settings.realtime
        in_flight = hosted_calls if batch and hosted_calls else hosted_calls + local_runs
        worker = CameraWorker(
            camera,
            FrameIds(cam_settings.name, outbox),
            in_flight=in_flight,
            admit=router.admit,
            infer=router.infer,
            deliver=sink.deliver,
            deliver_failure=sink.deliver_failure,
            stopping=stopping,
            on_frame=on_frame,
        )
        pipeline.workers.append(worker)
    return pipeline
