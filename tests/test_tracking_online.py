"""Tracking end to end: a track keeps its ``tracker_id`` through a serverless → local → serverless switch.

`seg-agent run` as a real process in ``inference.mode: auto``, the fake hosted API (a real HTTP server on
loopback, detecting red/green/blue blobs), a real Mosquitto, a real video and the real demo model on the local
side (it sees the same three shapes; a classes file gives its classes the hosted side's names, as a user
whose hosted and local models share a class list has). The endpoint dies mid-clip and comes back.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2

from tests.fake_roboflow import FakeRoboflow, draw_scene
from tests.mosquitto import Mosquitto, Subscriber
from tests.test_daemon import AgentProcess
from tests.test_online_offline import detections, fake, online_config, run_agent, runs, stop_agent  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "demo-seg.onnx"
FPS = 5


def write_smooth_scene(path: Path, frames: int = 80, fps: float = 20.0) -> Path:
    """draw_scene's three shapes swinging left and right; the loop joins up (no jump at the wrap)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (320, 240))
    assert writer.isOpened()
    try:
        for i in range(frames):
            writer.write(draw_scene(320, 240, shift=round(50 * math.sin(2 * math.pi * i / frames))))
    finally:
        writer.release()
    return path


def test_track_keeps_its_id_through_serverless_local_serverless(
    tmp_path: Path,
    fake: FakeRoboflow,  # noqa: F811
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    video = write_smooth_scene(tmp_path / "scene.avi")
    names = tmp_path / "classes.txt"
    names.write_text("green\nred\nblue\n")  # the demo model's circle, rectangle, triangle: the fake's hues
    sub = make_subscriber(broker.port, "#")
    config = online_config(
        tmp_path,
        DEMO_MODEL,
        broker.port,
        fake.url,
        {"source": str(video), "fps": FPS, "loop": True},
        local={"classes": str(names)},
    )
    with config.open("a") as f:
        f.write("tracking: {enabled: true, min_frames: 3, lost_s: 3.0}\n")
    agent = run_agent(config)

    def count(source: str, start: int = 0) -> int:
        return sum(1 for m in detections(sub)[start:] if m["source"] == source)

    # Timeouts are generous: two cores shared with other test runs; the frame counts are what matter.
    assert sub.wait_until(lambda: count("serverless") >= 6, 90), agent.log[-4000:]
    fake.stop()
    down_at = len(detections(sub))
    assert sub.wait_until(lambda: count("local", down_at) >= 10, 90), agent.log[-4000:]
    back_at = len(detections(sub))
    fake.start()
    assert sub.wait_until(lambda: count("serverless", back_at) >= 8, 90), agent.log[-4000:]
    stop_agent(agent)

    msgs = detections(sub)
    assert runs([m["source"] for m in msgs]) == ["serverless", "local", "serverless"]
    ids_by_class: dict[str, set[int]] = defaultdict(set)
    sources_by_id: dict[int, list[str]] = defaultdict(list)
    for n, m in enumerate(msgs):
        ids = [p["tracker_id"] for p in m["predictions"] if "tracker_id" in p]
        assert len(ids) == len(set(ids)), f"two predictions share an id in message {n}"
        if n < 2:  # min_frames 3: the first two frames' detections are unconfirmed and carry no id
            assert ids == [], m["predictions"]
        for p in m["predictions"]:
            if "tracker_id" in p:
                assert isinstance(p["tracker_id"], int) and p["tracker_id"] >= 1
                ids_by_class[p["class"]].add(p["tracker_id"])
                sources_by_id[p["tracker_id"]].append(m["source"])
    # each shape is one track from its confirmation to the end, through both switches
    assert {c: len(v) for c, v in ids_by_class.items()} == {"red": 1, "green": 1, "blue": 1}, dict(ids_by_class)
    for tracker_id, sources in sources_by_id.items():
        assert runs(sources) == ["serverless", "local", "serverless"], (tracker_id, runs(sources))
    # every frame after the first two gives each shape its id (nothing lost at either switch)
    tagged = [sum("tracker_id" in p for p in m["predictions"]) for m in msgs[2:]]
    assert min(tagged) == 3, tagged
    assert "Traceback" not in agent.log
