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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from agent.capture import Camera
from agent.config import CameraSettings, Settings
from agent.events import EventStage
from agent.frames import DecodePolicy, Frame
from agent.line_counts import FILE_NAME as LINE_COUNTS_FILE
from agent.logs import Throttle
from agent.measures import PublishAges
from agent.metrics import ResultTally
from agent.model import ModelError, OnnxModel, SessionPool, onnx_providers
from agent.outbox import Outbox
from agent.package import read_names_file
from agent.polygons import PolygonOptions
from agent.publisher import Publisher
from agent.results import encode, iso_utc, to_message
from agent.router import FrameFailed, Outcome, Router
from agent.runtime import spins
from agent.serverless import ServerlessClient
from agent.session_plan import SessionPlan, open_sessions
from agent.snapshots import Snapshots
from agent.tracking import CameraTracks
from agent.worker import CameraWorker, FrameIds

__all__ = [
    "Pipeline",
    "Sink",
    "StartupError",
    "Topics",
    "build",
    "frames_under_way",
    "load_local_model",
    "open_local_model",
]

log = logging.getLogger("agent.daemon")


class StartupError(Exception):
    """The agent can't start (an unusable model, for example); the message says why."""


@dataclass(frozen=True, slots=True)
class Topics:
    detections: str
    status: str
    health: str
    errors: str
    events: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        base = settings.topic_base
        return cls(f"{base}/detections", f"{base}/status", f"{base}/health", f"{base}/errors", f"{base}/events")


def load_local_model(settings: Settings) -> OnnxModel | SessionPool:
    """The local model; with ``sessions`` > 1 that many sessions of it in a :class:`SessionPool`."""
    return open_local_model(settings)[0]


def open_local_model(settings: Settings) -> tuple[OnnxModel | SessionPool, Settings, SessionPlan]:
    """:func:`load_local_model`, and the settings with ``sessions`` and ``threads`` as opened (``auto``
    resolved, :mod:`agent.session_plan`), and the plan that says how they were chosen (logged once)."""
    local = settings.inference.local
    assert local.model is not None
    model_log = logging.getLogger("agent.model")
    level = model_log.level
    opened = 0

    def open_one(threads: int, sessions: int) -> OnnxModel:
        nonlocal opened
        if opened:  # the first load said everything worth saying; the others would repeat it
            model_log.setLevel(logging.ERROR)
        opened += 1
        assert local.model is not None
        return OnnxModel(
            local.model,
            threads=threads,
            providers=onnx_providers(local.providers),
            trt_cache_dir=settings.state_dir / "tensorrt",  # used only when TensorRT is
            polygons=PolygonOptions(local.polygons.rings, local.polygons.tolerance_px),
            spin=spins(local.spin, sessions=sessions, frames_in_flight=max(sessions, local.frames_in_flight)),
            spin_us=local.spin_us,
        )

    try:
        models, plan = open_sessions(local, settings.cameras, open_one)
    except ModelError as exc:
        raise StartupError(f"inference.local.model: {exc}") from None
    finally:
        model_log.setLevel(level)
    local = replace(local, sessions=plan.sessions, threads=plan.threads)
    settings = replace(settings, inference=replace(settings.inference, local=local))
    own_threads = local.local_runs > plan.sessions  # frames wait for a session: runs back to back (session_pool)
    use_pool = len(models) > 1 or own_threads
    model: OnnxModel | SessionPool = SessionPool(models, own_threads=own_threads) if use_pool else models[0]
    log.info("%s", plan.describe())
    if local.classes is not None:
        try:
            model.class_names = read_names_file(local.classes)
        except (OSError, UnicodeDecodeError) as exc:
            raise StartupError(f"inference.local.classes: cannot read {local.classes}: {exc}") from None
    return model, settings, plan  # OnnxModel has logged its format, classes, input size and providers


class Sink:
    """Turns each frame's outcome into its message and puts it in the outbox: the results of frames on the
    detections topic, frames that got none on the errors topic (never shown as "no objects")."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        topics: Topics,
        taps: Sequence[Callable[[Frame, int, Outcome], None]] = (),
        *,
        publisher: Publisher | None = None,
    ) -> None:
        """``taps``: called with each result once it is in the outbox (snapshots, metrics); each must be quick.
        ``publisher``: where the retained counts of ``events`` go (none: no counts)."""
        self._taps = tuple(taps)
        self._device_id = settings.device_id
        self._model_id = settings.model_id
        self._outbox = outbox
        self._topics = topics
        self._warn = Throttle(log)  # one line a minute per camera and kind, with a count: not one per frame
        cameras = [c.name for c in settings.cameras]
        self._tracks = CameraTracks(settings.tracking, cameras) if settings.tracking.enabled else None
        self._events = _event_stage(settings, outbox, topics, publisher) if settings.events.enabled else None
        self._cameras = cameras

    def deliver(self, frame: Frame, frame_id: int, outcome: Outcome) -> None:
        # latency_ms is the whole time from capture to result: a frame that waited for its turn says so
        latency_ms = max(outcome.latency_ms, (time.time() - frame.timestamp) * 1000.0)
        api = outcome.api
        tracked = None
        if self._tracks is not None:  # hosted and local results alike: one tracker per camera
            tracked = self._tracks.apply(frame.camera, frame.track_time, api, frame.decoded)  # no decode for it
            api = tracked.api
        message = to_message(
            api,
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
        if self._events is not None and tracked is not None:  # after the frame's result, in the same outbox
            self._events.deliver(frame.camera, frame.track_time, frame_id, tracked)
        for tap in self._taps:
            try:
                tap(frame, frame_id, outcome)
            except Exception as exc:  # the result is out already; a side feature must not stop the camera
                self._warn.log(logging.ERROR, f"tap/{tap.__qualname__}", "%s failed: %r", tap.__qualname__, exc)

    def finish(self) -> None:
        """Every camera stopped (its worker too): its live tracks end, and their events go into the outbox."""
        if self._tracks is None or self._events is None:
            return
        for camera in self._cameras:
            self._events.finish(camera, [e.tracker_id for e in self._tracks.finish(camera)])

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


def _event_stage(settings: Settings, outbox: Outbox, topics: Topics, publisher: Publisher | None) -> EventStage:
    """Events into the outbox; counts retained through the publisher, sent again on each new connection."""

    def connection() -> object:
        if publisher is None:
            return None
        st = publisher.stats()
        return (st.last_connect_time, st.reconnects) if st.connected else None

    return EventStage(
        settings,
        topic=topics.events,
        put=lambda topic, payload, created: outbox.put(topic, payload, created=created),
        publish_retained=None if publisher is None else publisher.publish_retained,
        connection=connection,
        counts_file=settings.state_dir / LINE_COUNTS_FILE,  # line counts go on after a restart
    )


@dataclass
class Pipeline:
    """Every stage of one agent, built by :func:`build`."""

    settings: Settings
    topics: Topics
    outbox: Outbox
    router: Router
    publisher: Publisher
    workers: list[CameraWorker] = field(default_factory=list)
    snapshots: Snapshots | None = None  # snapshots.enabled
    tally: ResultTally | None = None  # metrics.enabled: the counts no stage keeps
    sink: Sink | None = None
    publish_ages: PublishAges = field(default_factory=PublishAges)  # fed by the outbox's acknowledgements
    session_plan: SessionPlan | None = None  # the local model's sessions and threads, and why (health)

    def start(self) -> None:
        """Start the way out first, so the first result finds it ready."""
        self.outbox.start()
        self.publisher.start()
        if self.snapshots is not None:
            self.snapshots.start()
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
        if self.sink is not None:
            self.sink.finish()  # live tracks end: their events go out with the rest
        self.outbox.flush()

    def close(self, drain_timeout_s: float) -> None:
        """After :meth:`stop` (and a last health message): the broker link, then the files and the client."""
        if self.snapshots is not None:
            self.snapshots.stop()
        self.publisher.stop(timeout=drain_timeout_s)
        depth = self.outbox.stats().depth
        if depth:
            log.warning("stopped with %d result(s) not yet delivered; they stay in the outbox", depth)
        self.outbox.stop()
        self.router.close()


def frames_under_way(settings: Settings, camera: CameraSettings, mode: str) -> int:
    """How many of ``camera``'s frames may be under way in inference ``mode``: the hosted calls (the router
    holds them to max_in_flight) plus, in auto mode, the local runs of frames that found every hosted call busy.
    A file read in batch (realtime: false) waits for the worker, so nothing is lost by waiting for a hosted
    slot: only live sources (and realtime files) overflow to the local model."""
    hosted = settings.inference.serverless.max_in_flight if mode in ("auto", "serverless") else 0
    local = settings.inference.local.local_runs if mode in ("auto", "local") else 0
    batch = camera.is_file and not camera.realtime
    return hosted if batch and hosted else hosted + local


def _hosted_client(s: Settings) -> ServerlessClient:
    return ServerlessClient(
        s.inference.serverless,
        confidence=s.inference.confidence,
        overlap=s.inference.overlap,
        max_detections=s.inference.max_detections,
        pool_size=s.inference.serverless.max_in_flight * len(s.cameras),
    )


def _make_state_dir(s: Settings) -> None:
    try:
        s.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error(
            "state_dir %s can't be created (%s): the outbox will be kept in memory only",
            s.state_dir,
            exc.strerror or exc,
        )


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
    local, plan = None, None
    if mode in ("auto", "local"):
        local, s, plan = open_local_model(s)  # s: with sessions: auto resolved, for every part below
    remote = _hosted_client(s) if mode in ("auto", "serverless") else None
    _make_state_dir(s)
    topics = Topics.of(s)
    outbox = Outbox(s.state_dir / "outbox.sqlite3", s.outbox)
    router = Router(
        s.inference,
        local=local,
        remote=remote,
        on_mode_change=on_mode_change,
        local_slots=s.inference.local.local_runs,
        local_model_id=s.local_model_id,
    )
    publisher = Publisher(s.mqtt, outbox, status_topic=topics.status)
    pipeline = Pipeline(s, topics, outbox, router, publisher, session_plan=plan)
    outbox.on_delivered(pipeline.publish_ages.delivered)
    if s.snapshots.enabled:
        pipeline.snapshots = Snapshots(s.snapshots, publisher.publish_retained, s.topic_base)
    pipeline.tally = ResultTally() if s.metrics.enabled else None
    taps = [t.deliver for t in (pipeline.snapshots, pipeline.tally) if t is not None]
    sink = pipeline.sink = Sink(s, outbox, topics, taps, publisher=publisher)
    decode = DecodePolicy(  # the router's parts: what each way a frame may take needs of its pixels
        model_hw=None if local is None else local.needed_hw,
        upload_hw=None if remote is None else remote.upload_hw,
        change_gate=s.inference.serverless.change_gate > 0,
        hosted=lambda: router.mode == "serverless",
    )
    for cam_settings in s.cameras:
        camera = Camera(cam_settings, decode=decode)
        worker = CameraWorker(
            camera,
            FrameIds(cam_settings.name, outbox),
            in_flight=frames_under_way(s, cam_settings, mode),
            admit=router.admit,
            infer=router.infer,
            deliver=sink.deliver,
            deliver_failure=sink.deliver_failure,
            stopping=stopping,
            on_frame=on_frame,
        )
        pipeline.workers.append(worker)
    return pipeline
