"""Prometheus metrics: the result tally and its histogram (tables, the empty case), and end to end: `seg-agent
run` with metrics on, `/metrics` fetched over real HTTP from the real process, parsed by prometheus_client's
own text parser, the expected families present and their values moving; the server stops with the agent."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError, MetricsSettings, parse_settings
from agent.frames import Frame
from agent.metrics import BUCKETS_S, MAX_CLASSES, ResultTally
from agent.router import Outcome
from tests.mosquitto import Mosquitto, free_port, port_open
from tests.streams import write_video
from tests.test_daemon import AgentProcess, write_config
from tests.test_snapshots import base_doc, uncommented_block


def frame(camera: str = "cam0") -> Frame:
    return Frame(camera, 1, time.time(), np.zeros((4, 4, 3), np.uint8), 0)


def outcome(classes: list[str], source: str = "local", latency_ms: float = 20.0) -> Outcome:
    api = {"predictions": [{"class": c} for c in classes]}
    return Outcome(api, source, latency_ms, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("results", "detections"),
    [
        ([], {}),
        ([("cam0", [])], {}),  # a result without objects counts as a result, no detections
        ([("cam0", ["a", "b", "a"]), ("cam1", ["a"])], {("cam0", "a"): 2, ("cam0", "b"): 1, ("cam1", "a"): 1}),
    ],
)
def test_tally_counts_results_and_detections_per_camera_and_class(
    results: list[tuple[str, list[str]]], detections: dict[tuple[str, str], int]
) -> None:
    tally = ResultTally()
    for camera, classes in results:
        tally.deliver(frame(camera), 1, outcome(classes))
    t = tally.snapshot()
    assert t["detections"] == detections
    assert sum(t["results"].values()) == len(results)


def test_tally_bounds_the_class_label() -> None:
    tally = ResultTally()
    tally.deliver(frame(), 1, outcome([f"c{i}" for i in range(MAX_CLASSES + 10)]))
    names = {name for _, name in tally.snapshot()["detections"]}
    assert len(names) == MAX_CLASSES + 1 and "other" in names
    assert tally.snapshot()["detections"][("cam0", "other")] == 10


@pytest.mark.parametrize(
    ("latencies_ms", "below"),
    [
        ([], {}),
        ([3.0], {0.005: 1, 10.0: 1}),
        ([5.0, 20.0, 20000.0], {0.005: 1, 0.01: 1, 0.025: 2, 10.0: 2}),  # le is inclusive; 20 s only in +Inf
    ],
)
def test_duration_histogram_is_cumulative(latencies_ms: list[float], below: dict[float, int]) -> None:
    tally = ResultTally()
    for ms in latencies_ms:
        tally.deliver(frame(), 1, outcome([], "serverless", ms))
    durations = tally.snapshot()["durations"]
    if not latencies_ms:
        assert durations == {}
        return
    buckets, total = durations["serverless"]
    assert [le for le, _ in buckets] == [repr(b) for b in BUCKETS_S] + ["+Inf"]
    counts = dict(buckets)
    for bound, n in below.items():
        assert counts[repr(bound)] == n
    assert counts["+Inf"] == len(latencies_ms)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert total == pytest.approx(sum(latencies_ms) / 1000.0)


# --------------------------------------------------------------------------- end to end


def scrape(port: int) -> dict[str, Any]:
    """``{family name: {tuple(sorted labels): value}}`` from one fetch of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def wait_for(predicate: Callable[[], bool], agent: AgentProcess, timeout: float = 60.0) -> None:
    """Generous: the machine is shared by many; nothing here measures time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert agent.proc.poll() is None, agent.log[-4000:]
        assert time.monotonic() < deadline, agent.log[-4000:]
        time.sleep(0.2)


def test_metrics_endpoint_parses_and_moves(
    tmp_path: Path, model_path: Path, broker: Mosquitto, run_agent: Callable[[Path], AgentProcess]
) -> None:
    import signal

    port = free_port()
    video = write_video(tmp_path / "clip.avi", frames=30, fps=30.0, width=320, height=240)
    camera = {"source": str(video), "fps": 10, "loop": True, "realtime": True}
    metrics = {"enabled": True, "port": port}  # host left out: loopback by default
    snapshots = {"enabled": True, "interval_s": 0.5}
    config = write_config(tmp_path, model_path, broker.port, camera, metrics=metrics, snapshots=snapshots)
    agent = run_agent(config)
    wait_for(lambda: port_open(port), agent)
    wait_for(lambda: scrape(port).get("segagent_frames_processed_total", {}).get((("camera", "cam0"),), 0) >= 2, agent)
    first = scrape(port)
    wait_for(
        lambda: (
            scrape(port)["segagent_frames_processed_total"][(("camera", "cam0"),)]
            > first["segagent_frames_processed_total"][(("camera", "cam0"),)]
        ),
        agent,
    )
    second = scrape(port)
    cam = (("camera", "cam0"),)
    for name in ("segagent_frames_read_total", "segagent_frames_sampled_total", "segagent_frames_processed_total"):
        assert second[name][cam] > first[name][cam] - 1 and second[name][cam] > 0, name
    assert (
        second["segagent_build_info"][
            (("device_id", "dev1"), ("model_id", "test-seg"), ("version", __import__("agent").__version__))
        ]
        == 1.0
    )
    assert second["segagent_camera_state"][(("camera", "cam0"), ("state", "streaming"))] == 1.0
    assert second["segagent_camera_state"][(("camera", "cam0"), ("state", "stalled"))] == 0.0
    assert second["segagent_inference_mode"][(("mode", "local"),)] == 1.0
    assert second["segagent_mqtt_connected"][()] == 1.0
    assert second["segagent_results_total"][(("camera", "cam0"), ("source", "local"))] >= 2
    assert any(k[0] == ("camera", "cam0") for k in second["segagent_detections_total"]), "the test model detects"
    count = second["segagent_inference_duration_seconds_count"][(("source", "local"),)]
    assert (
        count >= 2
        and second["segagent_inference_duration_seconds_bucket"][(("le", "+Inf"), ("source", "local"))] == count
    )
    assert second["segagent_inference_duration_seconds_sum"][(("source", "local"),)] > 0
    for name in (
        "segagent_outbox_depth",
        "segagent_outbox_oldest_age_seconds",
        "segagent_failovers_total",
        "segagent_mqtt_acked_total",
        "segagent_frames_skipped_total",
        "segagent_frames_failed_total",
        "segagent_snapshots_total",
        "process_cpu_seconds_total",
    ):
        assert name in second, name
    assert second["segagent_mqtt_acked_total"][()] >= first["segagent_mqtt_acked_total"][()]
    labels = {k for fam in second.values() for key in fam for k, _ in key}
    assert not labels & {"frame_id", "url", "api_key"}, "no high-cardinality or secret labels"

    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0, agent.log
    assert not port_open(port), "the server stopped with the agent"
    assert "Traceback" not in agent.log


# --------------------------------------------------------------------------- settings


def test_the_commented_config_block_is_the_defaults(tmp_path: Path) -> None:
    doc = uncommented_block("metrics")
    settings = parse_settings(base_doc(tmp_path, **doc), base_dir=tmp_path, env={}).metrics
    assert settings == MetricsSettings() and settings.host == "127.0.0.1", "loopback by default"
    assert parse_settings(base_doc(tmp_path), base_dir=tmp_path, env={}).metrics.enabled is False


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"port": 0}, "metrics.port"),
        ({"port": 70000}, "metrics.port"),
        ({"host": " "}, "metrics.host"),
        ({"path": "/m"}, "metrics.path"),
    ],
)
def test_bad_metrics_settings_name_the_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(base_doc(tmp_path, metrics=section), base_dir=tmp_path, env={})
    assert err.value.path == key


def test_a_tap_that_raises_neither_loses_the_result_nor_stops_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sink's taps (the tally, snapshots) run after the result is in the outbox; one that fails is logged."""
    from agent.config import OutboxSettings
    from agent.outbox import Outbox
    from agent.pipeline import Sink, Topics

    def broken(f: Frame, frame_id: int, o: Outcome) -> None:
        raise RuntimeError("a bug in a side feature")

    settings = parse_settings(base_doc(tmp_path), base_dir=tmp_path, env={})
    outbox = Outbox(None, OutboxSettings())
    tally = ResultTally()
    sink = Sink(settings, outbox, Topics.of(settings), [broken, tally.deliver])
    for i in (1, 2):
        sink.deliver(frame(), i, outcome(["a"]))
    assert outbox.stats().depth == 2, "both results are in the outbox"
    assert tally.snapshot()["results"] == {("cam0", "local"): 2}
    assert "a bug in a side feature" in caplog.text
