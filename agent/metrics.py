"""Prometheus metrics: ``http://{metrics.host}:{metrics.port}/metrics`` in the text exposition format.

Nearly everything is read at scrape time from what the stages already keep (each camera's ``status()``, the
workers' counts, the router's ``stats()``, the outbox's and the publisher's ``stats()``, the snapshots'), by
one custom collector: a scrape costs the frames nothing, and no counter is updated twice. What no stage
kept — results by source, detections per class, the inference time as a histogram — is counted by
:class:`ResultTally`, a :class:`agent.pipeline.Sink` tap that exists only while metrics are on (a few dict
updates per result).

Names follow Prometheus' conventions: the ``segagent_`` prefix, base units (seconds, bytes), ``_total`` on
counters. Labels are bounded by the configuration and the model: ``camera`` (config), ``class`` (the
model's; at most :data:`MAX_CLASSES`, the rest counted as ``other``), ``source`` (``serverless``/``local``,
as in the result JSON), ``state``, ``mode``, ``reason``, ``kind``, ``outcome`` (fixed sets). No frame ids,
URLs or keys. ``process_*`` and ``python_info`` come from prometheus_client's own collectors.

The server runs on its own thread (plus one short-lived thread per request), started by the daemon and
stopped cleanly by :meth:`MetricsServer.stop`. It listens on loopback unless configured otherwise: there is
no authentication, so a wider ``host`` belongs behind a firewall or a reverse proxy.

Importing this module has no side effects (prometheus_client is imported when metrics are started).
"""

from __future__ import annotations

import bisect
import logging
import socket
import threading
import time
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from agent import __version__
from agent.capture import CameraState
from agent.frames import Frame
from agent.router import Outcome
from agent.routing import Mode

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from agent.pipeline import Pipeline

__all__ = ["BUCKETS_S", "MAX_CLASSES", "AgentCollector", "MetricsServer", "ResultTally", "start_metrics"]

log = logging.getLogger("agent.metrics")

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds of the inference-duration histogram: a Jetson's 5 ms to a hosted call's timeout."""
MAX_CLASSES = 256
"""Distinct class names counted per camera; any more (a misbehaving model) go to ``class="other"``."""
_SKIPPED = ("gated", "capped_minute", "capped_day")  # the router's per-camera counts of frames not inferred


class _Histogram:
    """Cumulative counts below each of :data:`BUCKETS_S`, the count and the sum (seconds). Caller locks."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS_S)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(BUCKETS_S, seconds)
        if i < len(self.buckets):
            self.buckets[i] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(BUCKETS_S, self.buckets, strict=True):
            total += n
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out


class ResultTally:
    """Results by camera and source, detections by camera and class, inference time by source: the counts
    no stage keeps. A :class:`agent.pipeline.Sink` tap; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str], int] = {}
        self._detections: dict[tuple[str, str], int] = {}
        self._classes: dict[str, set[str]] = {}
        self._durations: dict[str, _Histogram] = {}

    def deliver(self, frame: Frame, frame_id: int, outcome: Outcome) -> None:
        predictions = outcome.api.get("predictions")
        names = [str(p.get("class", "")) for p in predictions if isinstance(p, dict)] if predictions else []
        camera, source = frame.camera, outcome.source
        with self._lock:
            key = (camera, source)
            self._results[key] = self._results.get(key, 0) + 1
            hist = self._durations.get(source)
            if hist is None:
                hist = self._durations[source] = _Histogram()
            hist.observe(outcome.latency_ms / 1000.0)
            if names:
                seen = self._classes.setdefault(camera, set())
                for name in names:
                    if name not in seen:
                        if len(seen) >= MAX_CLASSES:
                            name = "other"
                        seen.add(name)
                    k = (camera, name)
                    self._detections[k] = self._detections.get(k, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Copies of the counts: ``results``, ``detections`` (by (camera, x)) and ``durations`` (by source)."""
        with self._lock:
            durations = {s: (h.cumulative(), h.sum) for s, h in self._durations.items()}
            return {"results": dict(self._results), "detections": dict(self._detections), "durations": durations}


class AgentCollector:
    """Every ``segagent_`` family, read from the pipeline's stages at each scrape (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, tally: ResultTally | None) -> None:
        self._p = pipeline
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        yield from self._build()
        yield from self._cameras()
        yield from self._routing()
        yield from self._results()
        yield from self._delivery()
        yield from self._snapshots()

    def _build(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        s = self._p.settings
        yield InfoMetricFamily(
            "segagent_build",
            "The agent's version, device and model.",
            value={"version": __version__, "device_id": s.device_id, "model_id": s.model_id},
        )
        mode = GaugeMetricFamily("segagent_inference_mode", "1 for the router's current mode.", labels=["mode"])
        current = self._p.router.mode
        for m in Mode:
            mode.add_metric([str(m)], 1.0 if str(m) == current else 0.0)
        yield mode

    def _cameras(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["camera"])

        read = counter("segagent_frames_read", "Frames read from the camera's source.")
        sampled = counter("segagent_frames_sampled", "Frames the sampler handed to the worker.")
        processed = counter("segagent_frames_processed", "Frames that got a result or a failure.")
        failed = counter("segagent_frames_failed", "Frames that got no result (sent to the errors topic).")
        reconnects = counter("segagent_camera_reconnects", "Times the camera's source was opened again.")
        skipped = CounterMetricFamily(
            "segagent_frames_skipped", "Sampled frames not inferred, by reason.", labels=["camera", "reason"]
        )
        state = GaugeMetricFamily("segagent_camera_state", "1 for the camera's state.", labels=["camera", "state"])
        age = GaugeMetricFamily(
            "segagent_camera_last_frame_age_seconds", "Seconds since the last frame was read.", labels=["camera"]
        )
        per_camera = self._p.router.stats()["cameras"]
        for w in self._p.workers:
            st = w.camera.status()
            counts = per_camera.get(w.name, {})
            read.add_metric([w.name], st.frames_read)
            sampled.add_metric([w.name], st.frames_sampled)
            processed.add_metric([w.name], w.processed.total)
            failed.add_metric([w.name], counts.get("frames_failed", 0) + int(w.crashed))
            reconnects.add_metric([w.name], st.reconnects)
            for reason in _SKIPPED:
                skipped.add_metric([w.name, reason], counts.get(reason, 0))
            for cs in CameraState:
                state.add_metric([w.name, str(cs)], 1.0 if cs == st.state else 0.0)
            if st.last_frame_age_s is not None:
                age.add_metric([w.name], st.last_frame_age_s)
        yield from (read, sampled, processed, failed, reconnects, skipped, state, age)

    def _routing(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        r = self._p.router.stats()
        yield CounterMetricFamily(
            "segagent_failovers",
            "Times the router left the hosted API (to the local model, or failing).",
            r["fallbacks"],
        )
        over = CounterMetricFamily(
            "segagent_frames_failed_over", "Frames run locally after their hosted call failed.", labels=["camera"]
        )
        for name, counts in r["cameras"].items():
            over.add_metric([name], counts.get("failed_over", 0))
        yield over
        yield CounterMetricFamily("segagent_hosted_requests", "Calls made to the hosted API.", r["remote_attempts"])
        errors = CounterMetricFamily("segagent_hosted_errors", "Failed hosted calls, by kind.", labels=["kind"])
        for kind, n in sorted(r["remote_failed"].items()):
            errors.add_metric([kind], n)
        yield errors

    def _results(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        if self._tally is None:
            return
        t = self._tally.snapshot()
        results = CounterMetricFamily("segagent_results", "Results published, by source.", labels=["camera", "source"])
        for (camera, source), n in sorted(t["results"].items()):
            results.add_metric([camera, source], n)
        detections = CounterMetricFamily(
            "segagent_detections", "Objects in published results, by class.", labels=["camera", "class"]
        )
        for (camera, name), n in sorted(t["detections"].items()):
            detections.add_metric([camera, name], n)
        duration = HistogramMetricFamily(
            "segagent_inference_duration_seconds", "Time to each result, by source.", labels=["source"]
        )
        for source, (buckets, total) in sorted(t["durations"].items()):
            duration.add_metric([source], buckets, total)
        yield from (results, detections, duration)

    def _delivery(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        o = self._p.outbox.stats()
        yield GaugeMetricFamily("segagent_outbox_depth", "Results held, not yet acknowledged by the broker.", o.depth)
        yield GaugeMetricFamily(
            "segagent_outbox_oldest_age_seconds", "Age of the oldest result held (0 when empty).", o.oldest_age_s or 0.0
        )
        dropped = CounterMetricFamily("segagent_outbox_dropped", "Results dropped undelivered.", labels=["reason"])
        dropped.add_metric(["full"], o.dropped_full)
        dropped.add_metric(["age"], o.dropped_age)
        yield dropped
        yield GaugeMetricFamily("segagent_outbox_degraded", "1 while the outbox is in memory only.", float(o.degraded))
        m = self._p.publisher.stats()
        yield GaugeMetricFamily("segagent_mqtt_connected", "1 while connected to the broker.", float(m.connected))
        yield CounterMetricFamily("segagent_mqtt_published", "Results handed to the MQTT client.", m.published)
        yield CounterMetricFamily("segagent_mqtt_acked", "Results the broker acknowledged.", m.acked)
        yield CounterMetricFamily("segagent_mqtt_reconnects", "Connections made after the first.", m.reconnects)
        yield GaugeMetricFamily("segagent_mqtt_in_flight", "Results sent, awaiting acknowledgement.", m.in_flight)

    def _snapshots(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshots = self._p.snapshots
        if snapshots is None:
            return
        cams = snapshots.stats()["cameras"]
        total = CounterMetricFamily("segagent_snapshots", "Snapshots, by outcome.", labels=["camera", "outcome"])
        size = GaugeMetricFamily("segagent_snapshot_bytes", "Size of the last snapshot published.", labels=["camera"])
        for camera, counts in sorted(cams.items()):
            for outcome in ("published", "too_large", "failed", "replaced"):
                total.add_metric([camera, outcome], counts.get(outcome, 0))
            size.add_metric([camera], counts.get("bytes", 0))
        yield from (total, size)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape still running never holds up the agent's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape would flood the journal
        pass


class MetricsServer:
    """``/metrics`` (any path, as prometheus_client answers) on ``host:port``, on its own thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        from prometheus_client import make_wsgi_app

        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
        self._httpd: WSGIServer = make_server(
            host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
        )
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving (waits for the loop's next poll, at most half a second) and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout)
        self._httpd.server_close()


def start_metrics(pipeline: Pipeline) -> MetricsServer | None:
    """The metrics server for ``pipeline``, serving; None (logged) when it can't listen: the agent goes on
    without metrics rather than stop its cameras over a port."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    m = pipeline.settings.metrics
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentCollector(pipeline, pipeline.tally))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    t0 = time.monotonic()
    try:
        server = MetricsServer(registry, m.host, m.port)
    except OSError as exc:
        log.error("metrics: cannot listen on %s:%d (%s); going on without metrics", m.host, m.port, exc.strerror or exc)
        return None
    server.start()
    log.info("metrics on http://%s:%d/metrics (%.0f ms)", m.host, server.port, (time.monotonic() - t0) * 1000.0)
    return server
