"""Snapshots: drawing API-format predictions (tables of cases, the empty and degenerate ones included),
fitting the JPEG under max_bytes, one per interval per camera with a one-slot hand-off (an injected clock),
and end to end: `seg-agent run` with a real Mosquitto leaves a retained JPEG under max_bytes on the topic."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from numpy.typing import NDArray

from agent.config import ConfigError, SnapshotSettings, parse_settings
from agent.frames import Frame
from agent.router import Outcome
from agent.snapshots import MIN_HEIGHT, Snapshots, draw_predictions, encode_under, render, snapshot_topic
from tests.mosquitto import Mosquitto, Subscriber
from tests.streams import write_video
from tests.test_daemon import BASE, AgentProcess, write_config


def gray(h: int = 120, w: int = 160) -> NDArray[np.uint8]:
    return np.full((h, w, 3), 100, np.uint8)


def square(x: float = 80, y: float = 60, side: float = 40, **extra: Any) -> dict[str, Any]:
    half = side / 2
    points = [{"x": x - half, "y": y - half}, {"x": x + half, "y": y - half}, {"x": x + half, "y": y + half}]
    points.append({"x": x - half, "y": y + half})
    return {"x": x, "y": y, "width": side, "height": side, "confidence": 0.9, "class": "A", "points": points, **extra}


# --------------------------------------------------------------------------- drawing


@pytest.mark.parametrize(
    ("predictions", "changed_at", "unchanged_at"),
    [
        ([], [], [(60, 80), (0, 0)]),  # no predictions: the frame as it is
        ([square()], [(60, 80), (40, 60)], [(5, 150)]),  # mask filled at the centre, box on its edge
        ([square(points=[{"x": 1, "y": 1}, {"x": 2, "y": 2}])], [(40, 60)], [(60, 80)]),  # < 3 points: box only
        ([square(width=0, height=0)], [(60, 80)], [(40, 140)]),  # no box: the mask only
        ([square(x=float("nan"), points=[])], [], [(60, 80), (40, 60)]),  # nothing usable: nothing drawn
        (
            [square(x=1000, y=-500, points=[{"x": -9e5, "y": 0}, {"x": 9e5, "y": 0}, {"x": 0, "y": 9e5}])],
            [(100, 100)],
            [],
        ),
        (["not a prediction", None, 3], [], [(60, 80)]),  # entries that are not mappings are ignored
        ([square(points=[{"x": "a", "y": 1}, {"x": 1}, {"x": 2, "y": 2}, {"x": 3, "y": 9}])], [(40, 60)], [(60, 80)]),
    ],
    ids=["empty", "one", "two-points", "zero-box", "nan", "far-outside", "junk", "bad-points"],
)
def test_draw_predictions(
    predictions: list[Any], changed_at: list[tuple[int, int]], unchanged_at: list[tuple[int, int]]
) -> None:
    image = gray()
    out = draw_predictions(image, predictions, 1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 100).all(), "the input is not drawn on"
    for y, x in changed_at:
        assert (out[y, x] != 100).any(), (y, x)
    for y, x in unchanged_at:
        assert (out[y, x] == 100).all(), (y, x)


def test_draw_predictions_scales_frame_pixels_to_the_snapshot() -> None:
    """A 640x480 frame's square at (320, 240) drawn on its 160x120 snapshot lands at (80, 60)."""
    out = draw_predictions(gray(), [square(320, 240, 160)], 0.25)
    assert (out[60, 80] != 100).any() and (out[40, 60] != 100).any()
    assert (out[5, 150] == 100).all()


# --------------------------------------------------------------------------- fitting under max_bytes


def noise(h: int, w: int, seed: int = 0) -> NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("h", "max_bytes", "fits", "full_height"),
    [
        (480, 10_000_000, True, True),  # generous: the image as asked
        (480, 60_000, True, False),  # noise at 480 p is ~300 kB: smaller, lower quality
        (480, 1_000, False, False),  # can't fit even at MIN_HEIGHT: None
        (MIN_HEIGHT, 1_000, False, False),  # already at the smallest height: None, no endless loop
        (8, 100_000, True, True),  # a tiny image: as it is
    ],
)
def test_encode_under(h: int, max_bytes: int, fits: bool, full_height: bool) -> None:
    image = noise(h, h * 4 // 3)
    jpeg = encode_under(image, 90, max_bytes)
    if not fits:
        assert jpeg is None
        return
    assert jpeg is not None and len(jpeg) <= max_bytes
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert (decoded.shape[0] == h) is full_height
    assert decoded.shape[0] >= min(h, MIN_HEIGHT)


def test_render_decodes_an_undecoded_frame_reduced_to_the_snapshot_height() -> None:
    pixels = np.full((480, 640, 3), 60, np.uint8)
    ok, buf = cv2.imencode(".jpg", pixels)
    assert ok
    frame = Frame("cam0", 1, 0.0, None, 0, jpeg=buf.tobytes())
    assert frame.decoded is None
    jpeg = render(frame, {"predictions": [square(320, 240, 160)]}, SnapshotSettings(height=120, max_bytes=50_000))
    assert jpeg is not None and len(jpeg) <= 50_000
    assert frame.decoded is not None and frame.decoded.shape[0] == 120, "decoded at 1/4, not in full"
    out = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (120, 160, 3)
    assert abs(int(out[60, 80].astype(int).sum()) - 180) > 30, "the mask is drawn at the centre"


# --------------------------------------------------------------------------- rate and hand-off


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Published:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.event = threading.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.items.append((topic, payload))
        self.event.set()


def outcome(predictions: list[Any]) -> Outcome:
    return Outcome({"predictions": predictions}, "local", 5.0, None)


def frame(camera: str, seq: int, value: int) -> Frame:
    return Frame(camera, seq, 0.0, np.full((120, 160, 3), value, np.uint8), seq)


def test_one_snapshot_per_interval_per_camera_newest_frame_wins() -> None:
    clock, published = Clock(), Published()
    snaps = Snapshots(SnapshotSettings(enabled=True, interval_s=10.0, height=0), published, "p/d", clock=clock)
    snaps.deliver(frame("cam0", 1, 10), 1, outcome([]))  # due: the first result of a camera
    clock.now = 5.0
    snaps.deliver(frame("cam0", 2, 20), 2, outcome([]))  # not due
    snaps.deliver(frame("cam1", 1, 30), 1, outcome([]))  # another camera: its own interval
    clock.now = 10.0
    snaps.deliver(frame("cam0", 3, 40), 3, outcome([square()]))  # due again, replaces frame 1 not yet drawn
    assert snaps.stats()["cameras"]["cam0"]["replaced"] == 1
    snaps.start()
    try:
        deadline = 60.0  # generous: the machine is shared; no timing is asserted
        while len(published.items) < 2 and published.event.wait(deadline):
            published.event.clear()
    finally:
        snaps.stop()
    topics = sorted(t for t, _ in published.items)
    assert (
        topics
        == [snapshot_topic("p/d", "cam0"), snapshot_topic("p/d", "cam1")]
        == ["p/d/cam0/snapshot", "p/d/cam1/snapshot"]
    )
    by_topic = {t: cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for t, p in published.items}
    assert abs(int(by_topic["p/d/cam0/snapshot"][5, 5, 0]) - 40) < 8, "frame 3's pixels, not frame 1's"
    stats = snaps.stats()
    assert stats["cameras"]["cam0"]["published"] == 1 and stats["cameras"]["cam1"]["published"] == 1
    assert stats["render"]["count"] == 2


def test_too_large_is_skipped_and_counted_and_a_bad_jpeg_does_not_stop_the_thread() -> None:
    clock, published = Clock(), Published()
    snaps = Snapshots(SnapshotSettings(enabled=True, max_bytes=1000, height=0), published, "p/d", clock=clock)
    noisy = Frame("big", 1, 0.0, noise(480, 640), 1)
    bad = Frame("bad", 1, 0.0, None, 1, frame_hw=(120, 160), jpeg=b"\xff\xd8 not a jpeg")
    good = frame("good", 1, 50)
    snaps.start()
    try:
        for f in (noisy, bad, good):
            snaps.deliver(f, 1, outcome([]))
        assert published.event.wait(60.0)  # generous: the machine is shared; no timing is asserted
    finally:
        snaps.stop()
    assert [t for t, _ in published.items] == ["p/d/good/snapshot"]
    cams = snaps.stats()["cameras"]
    assert cams["big"]["too_large"] == 1 and cams["big"]["published"] == 0
    assert cams["bad"]["failed"] == 1


# --------------------------------------------------------------------------- end to end


def test_agent_leaves_a_retained_jpeg_under_max_bytes(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_video(tmp_path / "clip.avi", frames=30, fps=30.0, width=320, height=240)
    topic = f"{BASE}/cam0/snapshot"
    live = make_subscriber(broker.port, f"{BASE}/#")
    snapshots = {"enabled": True, "height": 180, "quality": 90, "max_bytes": 12_000, "interval_s": 0.1}
    camera = {"source": str(video), "fps": 10, "loop": False, "realtime": False}
    config = write_config(tmp_path, model_path, broker.port, camera, snapshots=snapshots)
    agent = run_agent(config)
    assert agent.wait(60) == 0, agent.log
    assert live.received(topic), agent.log
    for p in live.payloads(f"{BASE}/detections"):
        assert b"snapshot" not in p and b"/9j/" not in p, "no (base64) JPEG inside detection messages"
    late = make_subscriber(broker.port, topic)  # subscribes after the agent is gone: only the retained one
    assert late.wait_for_count(1, topic, timeout=10)
    (msg,) = late.received(topic)
    assert msg.retain and len(msg.payload) <= 12_000
    image = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] <= 180 and image.shape[1] == round(image.shape[0] * 4 / 3)
    assert msg.payload == live.payloads(topic)[-1], "the retained one is the newest"
    assert "Traceback" not in agent.log


# --------------------------------------------------------------------------- settings


def uncommented_block(name: str) -> dict[str, Any]:
    """config.yaml's commented ``name:`` block at the end, uncommented and parsed."""
    lines = (Path(__file__).resolve().parent.parent / "config.yaml").read_text().splitlines()
    start = lines.index(f"# {name}:")
    block = [lines[start][2:]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    doc = yaml.safe_load("\n".join(block))
    assert isinstance(doc, dict)
    return doc


def base_doc(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    (tmp_path / "m.onnx").write_bytes(b"a readable file")
    (tmp_path / "clip.avi").write_bytes(b"")
    return {
        "device_id": "d",
        "cameras": [{"name": "cam0", "source": "clip.avi"}],
        "inference": {"mode": "local", "local": {"model": "m.onnx"}},
        "state_dir": "state",
        **extra,
    }


def test_the_commented_config_block_is_the_defaults(tmp_path: Path) -> None:
    doc = uncommented_block("snapshots")
    assert parse_settings(base_doc(tmp_path, **doc), base_dir=tmp_path, env={}).snapshots == SnapshotSettings()
    assert parse_settings(base_doc(tmp_path), base_dir=tmp_path, env={}).snapshots.enabled is False


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"quality": 0}, "snapshots.quality"),
        ({"max_bytes": 10}, "snapshots.max_bytes"),
        ({"interval_s": 0}, "snapshots.interval_s"),
        ({"height": -1}, "snapshots.height"),
        ({"enabled": "yes"}, "snapshots.enabled"),
        ({"colour": "red"}, "snapshots.colour"),
    ],
)
def test_bad_snapshot_settings_name_the_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(base_doc(tmp_path, snapshots=section), base_dir=tmp_path, env={})
    assert err.value.path == key


def test_hosted_results_get_snapshots_too(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
) -> None:
    """Mode auto against the fake hosted API: the results are the API's (source serverless) and the snapshot
    is drawn from them on the frame (sent up as its JPEG; decoded for the snapshot, see the render test)."""
    from tests.fake_roboflow import FakeRoboflow, draw_scene
    from tests.test_online_offline import KEY, online_config, write_scene_video

    video = write_scene_video(tmp_path / "scene.avi", frames=20, fps=10.0)
    topic = f"{BASE}/cam0/snapshot"
    sub = make_subscriber(broker.port, [f"{BASE}/detections", topic])
    fake = FakeRoboflow(api_key=KEY)
    agent = None
    try:
        camera = {"source": str(video), "fps": 5, "loop": False, "realtime": False}
        config = online_config(tmp_path, model_path, broker.port, fake.url, camera)
        doc = yaml.safe_load(config.read_text())
        doc["snapshots"] = {"enabled": True, "interval_s": 0.1, "height": 240}
        config.write_text(yaml.safe_dump(doc))
        agent = AgentProcess(config, env={"ROBOFLOW_API_KEY": KEY})
        assert agent.wait(60) == 0, agent.log
    finally:
        fake.close()
        if agent is not None:
            agent.close()
    sources = {m["source"] for m in map(json.loads, sub.payloads(f"{BASE}/detections"))}
    assert sources == {"serverless"}, agent.log
    snaps = sub.payloads(topic)
    assert snaps, agent.log
    image = cv2.imdecode(np.frombuffer(snaps[-1], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3)
    plain = [draw_scene(320, 240, shift=(i * 7) % 120 - 60) for i in range(20)]
    closest = min(float(np.abs(image.astype(np.int16) - p).mean()) for p in plain)
    assert closest > 5.0, "masks and boxes are drawn over the frame (JPEG noise alone is ~1.2; drawn ~15)"
