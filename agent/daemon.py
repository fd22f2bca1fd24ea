"""The daemon: builds the pipeline (:mod:`agent.pipeline`), owns its life cycle and the operator threads.

Threads: per camera one grabber (in :mod:`agent.capture`) and one worker (:mod:`agent.worker`; it infers
itself when one frame at a time is in flight, as with a local model, and with the hosted API runs up to
``max_in_flight`` calls on a small pool); one publisher feeder plus paho's network thread; here, one health
thread and one watchdog thread. Every wait has a timeout; stopping is orderly: capture stops, in-flight
frames finish and go to the outbox, the outbox drains to the broker for up to ``DRAIN_TIMEOUT_S``, and what
is left stays on disk for the next start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from agent import __version__
from agent.config import Settings
from agent.health import report, status_line
from agent.metrics import MetricsServer, start_metrics
from agent.model import limit_helper_threads, onnx_providers
from agent.pipeline import Pipeline, StartupError, build, load_local_model
from agent.remote import Remote, attach
from agent.sdnotify import Notifier

__all__ = ["DRAIN_TIMEOUT_S", "Agent", "AgentState", "StartupError", "load_local_model", "onnx_providers"]

log = logging.getLogger("agent.daemon")

DRAIN_TIMEOUT_S = 10.0
_POLL_S = 0.5


class AgentState(StrEnum):
    """The daemon's own state, as the health topic shows it (``running`` shows as ``degraded`` while the
    health report lists problems)."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class Agent:
    """One running seg-agent. ``run()`` blocks until ``stop()`` or until every source has ended."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self._environ = dict(os.environ if environ is None else environ)
        self.stopping = threading.Event()
        self.first_frame = threading.Event()
        self.started_at = time.monotonic()
        self.notifier = Notifier.from_env(self._environ)
        self._pipeline: Pipeline | None = None
        self._metrics: MetricsServer | None = None
        self._remote: Remote | None = None
        self._threads: list[threading.Thread] = []
        self._health_now = threading.Event()
        self._state = AgentState.STARTING

    # ------------------------------------------------------------------ life cycle

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Start every stage, wait for the stop, shut down in order. Returns the exit status."""
        pipeline = self._start()
        try:
            while not self.stopping.wait(_POLL_S):
                if pipeline.workers and all(w.done.is_set() for w in pipeline.workers):
                    log.info("every source has ended; stopping")
                    break
        finally:
            self._shutdown(pipeline)
        return 0

    def _start(self) -> Pipeline:
        s = self.settings
        # OpenCV's and OpenBLAS's own thread pools compete with ONNX Runtime's for the few cores of a Pi.
        capped = limit_helper_threads()
        log.debug("one thread for OpenCV and for %s", ", ".join(capped) or "no OpenBLAS found")
        pipeline = build(s, stopping=self.stopping, on_mode_change=self._mode_changed, on_frame=self.first_frame.set)
        self._pipeline = pipeline
        # commands and discovery: before the cameras open and the first connect; with the pipeline's settings, in
        # which sessions: auto is resolved (a mode change sets each camera's frames in flight from it)
        self._remote = attach(pipeline.settings, pipeline)
        pipeline.start()
        self._metrics = start_metrics(pipeline) if s.metrics.enabled else None
        self._spawn(self._health_loop, "health")
        self._spawn(self._watchdog_loop, "watchdog")
        self._state = AgentState.RUNNING
        log.info(
            "seg-agent %s started: device %s, %d camera(s), mode %s, broker %s:%d",
            __version__,
            s.device_id,
            len(s.cameras),
            s.inference.mode,
            s.mqtt.host,
            s.mqtt.port,
        )
        return pipeline

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _shutdown(self, pipeline: Pipeline) -> None:
        self._state = AgentState.STOPPING
        self.stopping.set()
        self.notifier.stopping()
        log.info("stopping: finishing in-flight frames")
        if self._remote is not None:
            self._remote.stop()
        pipeline.stop()
        self._publish_health()
        pipeline.close(DRAIN_TIMEOUT_S)
        if self._metrics is not None:
            self._metrics.stop()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.notifier.close()
        log.info("stopped")

    # ------------------------------------------------------------------ health and watchdog

    def _mode_changed(self, mode: str, reason: str) -> None:
        log.warning("inference mode is now %s: %s", mode, reason)
        self._health_now.set()

    def health(self) -> dict[str, Any]:
        p = self._pipeline
        assert p is not None, "health() before the pipeline was built"
        doc = report(
            state=self._state,
            settings=self.settings,
            uptime_s=time.monotonic() - self.started_at,
            workers=p.workers,
            router=p.router,
            outbox=p.outbox.stats(),
            mqtt=p.publisher.stats(),
            ages=p.publish_ages,
            local=p.session_plan,
        )
        if self._remote is not None and (commands := self._remote.stats()) is not None:
            doc["commands"] = commands
        return doc

    def _publish_health(self) -> None:
        p = self._pipeline
        if p is None:
            return
        try:
            doc = self.health()
        except Exception:
            log.exception("health report failed")
            return
        p.publisher.publish_retained(p.topics.health, json.dumps(doc, default=str).encode())
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
        workers = self._pipeline.workers if self._pipeline is not None else []
        live = [w for w in workers if not w.done.is_set()]
        if not live:
            return False
        if any(w.heartbeat.age() > window_s for w in live):
            return False
        ages = [w.processed.age() if w.detecting else w.camera.status().last_frame_age_s for w in live]
        return any(a is not None and a <= window_s for a in ages)  # detection off: frames still read

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
