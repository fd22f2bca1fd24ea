"""Events and counts end to end against ground truth (tests/track_scenes.py), with a real Mosquitto.

1. The agent's own ``Sink`` (tracker, zones, events, outbox, publisher) fed the scene's true boxes, frame by
   frame, with a broker outage in the middle: every track gives one ``new`` and one ``end`` under one
   ``event_id``, events held during the outage arrive afterwards in order marked ``replayed``, the retained
   line counts equal the ground truth exactly, and the dock's occupancy peaks at the true number.
2. ``seg-agent run`` as a real process on a video of the scene, through the demo model: the same exact
   line counts and dock visits.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.config import parse_settings
from agent.frames import Frame
from agent.outbox import Outbox
from agent.pipeline import Sink, Topics
from agent.publisher import Publisher
from agent.router import Outcome
from tests import track_scenes as scene
from tests.mosquitto import Mosquitto, Subscriber
from tests.test_daemon import AgentProcess

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "demo-seg.onnx"
BASE = "seg-agent/dev-ev"
T0 = 1_800_000_000.0
FPS = 5.0
# The video plays at its own pace (realtime), so capture times are regular: in batch mode (realtime: false)
# they are the wall clock at each grab, as uneven as the machine's load, and the tracker's motion model (in
# pixels per second) then predicts boxes off their objects and splits tracks.
VIDEO_FPS = 10.0


def _settings(tmp_path: Path, port: int) -> Any:
    (tmp_path / "model.onnx").write_bytes(b"not loaded: the Sink is fed boxes")
    (tmp_path / "clip.avi").write_bytes(b"")
    doc = {
        "device_id": "dev-ev",
        "cameras": [{"name": "cam0", "source": "clip.avi", "zones": [scene.DOCK], "lines": [scene.GATE]}],
        "inference": {"mode": "local", "local": {"model": "model.onnx"}},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
        "state_dir": "state",
        "tracking": {"enabled": True, "min_frames": 3, "lost_s": 1.0},
        "events": {"enabled": True, "update_interval_s": 0},
    }
    return parse_settings(doc, base_dir=tmp_path, env={})


def _outcome(frame: int) -> Outcome:
    predictions = []
    for w, (x0, y0, x1, y1) in scene.boxes_at(frame):
        if w.name == "A" and frame % 11 == 5:
            continue  # the detector misses now and then: the track survives it
        j = scene.sway(frame + ord(w.name))
        predictions.append(
            {"x": (x0 + x1) / 2 + j, "y": (y0 + y1) / 2, "width": x1 - x0, "height": y1 - y0 + j, "class": w.cls}
            | {"confidence": 0.9, "class_id": 0, "points": []}
        )
    return Outcome(
        {"image": {"width": scene.WH[0], "height": scene.WH[1]}, "predictions": predictions}, "local", 5.0, None
    )


def _events(sub: Subscriber) -> list[dict[str, Any]]:
    """The events as received, repeats dropped: QoS 1 repeats a message whose PUBACK died with the link (the
    agent's copy says replayed, the broker's own redelivery to this persistent session has the DUP flag)."""
    seen: set[str] = set()
    out = []
    for m in sub.received(f"{BASE}/events"):
        event = json.loads(m.payload)
        if event["message_id"] in seen:
            assert event.get("replayed") or m.dup, event
            continue
        seen.add(event["message_id"])
        out.append(event)
    return out


def _counts(sub: Subscriber, prefix: str = f"{BASE}/cam0/") -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for m in sub.received():
        if m.topic.startswith(prefix):
            out[m.topic[len(prefix) :]].append(int(m.payload))
    return out


def _last_counts_are(sub: Subscriber, want: dict[str, int]) -> bool:
    counts = _counts(sub)
    return all(counts.get(k, [-1])[-1] == v for k, v in want.items())


def _check_events(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One new first and one end last per event_id, nothing after the end; returns them by event_id."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_id[e["event_id"]].append(e)
    for eid, evs in by_id.items():
        kinds = [e["type"] for e in evs]
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == kinds.count("end") == 1, (eid, kinds)
        assert len({e["tracker_id"] for e in evs}) == 1
    return by_id


def test_sink_events_and_counts_match_the_ground_truth_across_an_outage(
    tmp_path: Path, make_broker: Callable[..., Mosquitto], make_subscriber: Callable[..., Subscriber]
) -> None:
    broker = make_broker(persistence=True)
    sub = make_subscriber(broker.port, f"{BASE}/#", client_id="watcher", clean_session=False)
    settings = _settings(tmp_path, broker.port)
    topics = Topics.of(settings)
    outbox = Outbox(tmp_path / "outbox.sqlite3", settings.outbox)
    publisher = Publisher(settings.mqtt, outbox, status_topic=topics.status)
    outbox.start()
    publisher.start()
    try:
        assert sub.wait_until(lambda: publisher.stats().connected, 10)
        sink = Sink(settings, outbox, topics, publisher=publisher)
        image = np.zeros((1, 1, 3), np.uint8)
        for i in range(scene.FRAMES):
            if i == 10:
                broker.stop()  # an outage: events go on into the outbox, counts wait for the link
                assert sub.wait_until(lambda: not publisher.stats().connected, 10)
            if i == 30:
                broker.start()
                assert sub.wait_until(lambda: publisher.stats().connected, 20)
            t = T0 + i / FPS
            sink.deliver(Frame("cam0", i + 1, t, image, i, frame_hw=(scene.WH[1], scene.WH[0])), i, _outcome(i))
        assert publisher.drain(20)
    finally:
        publisher.stop(timeout=5)
        outbox.stop()
    # Generous waits: two cores are shared with other runs. Every walker's end event must arrive.
    assert sub.wait_until(lambda: sum(e["type"] == "end" for e in _events(sub)) >= len(scene.WALKERS), 20)
    events = _events(sub)
    by_id = _check_events(events)
    assert len(by_id) == len(scene.WALKERS)  # one event (one track) per walker: no splits, no merges
    news = [e for e in events if e["type"] == "new"]
    assert sorted(e["class"] for e in news) == sorted(w.cls for w in scene.WALKERS)
    replayed = [e for e in events if e.get("replayed")]
    assert replayed and all(e["frame_id"] < 30 for e in replayed)  # held through the outage, then sent
    assert [e["frame_id"] for e in events] == sorted(e["frame_id"] for e in events)  # in order
    docked = sorted(evs[-1]["class"] for evs in by_id.values() if evs[-1]["entered_zones"] == ["dock"])
    assert docked == sorted(w.cls for w in scene.WALKERS if w.docks)
    for evs in by_id.values():
        if evs[-1]["entered_zones"]:
            assert evs[-1]["dwell_s"]["dock"] > 1.0 and evs[-1]["current_zones"] == []
    counts = _counts(sub)
    for key, value in scene.expected_lines().items():
        assert counts[key][-1] == value, (key, counts[key])
    assert max(counts["dock/all"]) == scene.peak_in_dock() == 2
    assert counts["all/all"][-1] == 0 and counts["dock/all"][-1] == 0
    # A newcomer gets the counts retained, as they are now.
    late = make_subscriber(broker.port, f"{BASE}/cam0/#")
    assert late.wait_until(lambda: set(scene.expected_lines()) <= set(_counts(late)), 10), _counts(late)
    assert all(m.retain for m in late.received())
    retained = {k: v[-1] for k, v in _counts(late).items()}
    assert {k: retained[k] for k in scene.expected_lines()} == scene.expected_lines()


def _write_scene_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), VIDEO_FPS, scene.WH)
    assert writer.isOpened()
    try:
        for i in range(scene.FRAMES):
            writer.write(scene.render(i))
    finally:
        writer.release()
    return path


def _run_config(tmp_path: Path, video: Path, port: int) -> Path:
    """config.yaml for ``seg-agent run`` on the scene's video through the demo model."""
    cfg = {
        "device_id": "dev-ev",
        "cameras": [
            {
                "name": "cam0",
                "source": str(video),
                "fps": 0,  # every frame of the file, at the file's pace
                "zones": [scene.DOCK],
                "lines": [scene.GATE],
            }
        ],
        "inference": {"mode": "local", "local": {"model": str(DEMO_MODEL)}},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(tmp_path / "state"),
        "outbox": {"commit_interval_s": 0.1},
        # tracks end by frames unseen (max_missed), not by seconds, whatever the machine's load
        "tracking": {"enabled": True, "min_frames": 3, "lost_s": 600.0, "max_missed": 20},
        "events": {"enabled": True, "update_interval_s": 0},
    }
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg))
    return config


def test_agent_line_counts_are_exact_on_the_rendered_scene(
    tmp_path: Path, broker: Mosquitto, make_subscriber: Callable[..., Subscriber]
) -> None:
    video = _write_scene_video(tmp_path / "scene.avi")
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = _run_config(tmp_path, video, broker.port)
    agent = AgentProcess(config)
    try:
        # The clip plays once; the agent stops by itself when it ends ("every source has ended"). Generous:
        # two cores are shared with other runs. Its last 38 frames are empty, so every track has ended.
        assert agent.wait(120) == 0, agent.log[-4000:]
    finally:
        agent.close()
    assert sub.wait_until(lambda: sum(e["type"] == "end" for e in _events(sub)) >= len(scene.WALKERS), 10), agent.log[
        -4000:
    ]
    by_id = _check_events(_events(sub))
    counts = _counts(sub)
    got = {k: counts[k][-1] for k in scene.expected_lines()}
    assert got == scene.expected_lines(), (got, dict(counts))
    docked = sorted(evs[-1]["class"] for evs in by_id.values() if "dock" in evs[-1]["entered_zones"])
    assert docked == sorted(w.cls for w in scene.WALKERS if w.docks)
    assert max(counts["dock/all"]) == scene.peak_in_dock()
    assert "Traceback" not in agent.log


def test_line_counts_go_on_after_the_agent_is_restarted(
    tmp_path: Path, broker: Mosquitto, make_subscriber: Callable[..., Subscriber]
) -> None:
    """``seg-agent run`` twice on the scene with one state_dir: the second run's line counts start from the
    first run's (kept in {state_dir}/line_counts.json), so they end at twice the truth; counts of a line and a
    camera no longer configured, planted in the file between the runs, are dropped."""
    video = _write_scene_video(tmp_path / "scene.avi")
    config = _run_config(tmp_path, video, broker.port)
    kept = tmp_path / "state" / "line_counts.json"
    truth = scene.expected_lines()
    for run in (1, 2):
        sub = make_subscriber(broker.port, f"{BASE}/cam0/gate/#", client_id=f"run{run}")
        agent = AgentProcess(config)
        try:
            assert agent.wait(120) == 0, agent.log[-4000:]  # generous: two cores shared with other runs
        finally:
            agent.close()
        doc = json.loads(kept.read_text())
        assert {k: doc["cameras"]["cam0"].get(k, 0) for k in truth} == {k: run * v for k, v in truth.items()}
        assert set(doc["cameras"]) == {"cam0"}
        assert all(k.startswith("gate/") for k in doc["cameras"]["cam0"])
        # what the run published last of each count: after the restart the counts went on from the first run's
        want = {k: run * v for k, v in truth.items()}
        assert sub.wait_until(functools.partial(_last_counts_are, sub, want), 10), dict(_counts(sub))
        assert "Traceback" not in agent.log
        if run == 1:
            doc["cameras"]["cam0"]["old-line/in/all"] = 5
            doc["cameras"]["cam9"] = {"gate/in/all": 7}
            kept.write_text(json.dumps(doc))
