"""Class names agree by ``source``: ``class_map`` renames local classes to the hosted model's, and a hosted class
the local model lacks is reported once in the log and on the health topic. `seg-agent run` as a real process,
a real Mosquitto, the fake hosted API, and a local model that really finds the red object."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest
import yaml

from tests.fake_roboflow import FakeRoboflow, draw_scene
from tests.mosquitto import Mosquitto, Subscriber
from tests.onnx_formats import build_red_finder

DEVICE = "names1"
BASE = f"seg-agent/{DEVICE}"
KEY = "test-key-names"


@pytest.fixture
def fake() -> Iterator[FakeRoboflow]:
    server = FakeRoboflow(api_key=KEY, model_id="shapes/3")
    yield server
    server.close()


def write_clip(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 480))
    for i in range(frames):
        writer.write(draw_scene(640, 480, shift=2 * i))
    writer.release()
    return path


def test_class_map_and_unknown_hosted_classes_reported_once(
    tmp_path: Path, fake: FakeRoboflow, broker: Mosquitto, make_subscriber: Callable[..., Subscriber]
) -> None:
    model = build_red_finder(tmp_path / "shapes.onnx", class_names=("circle", "rectangle", "triangle"))
    config = {
        "device_id": DEVICE,
        "log_level": "info",
        "cameras": [
            {
                "name": "cam0",
                "source": str(write_clip(tmp_path / "clip.avi", 30)),
                "fps": 10,
                "loop": False,
                "realtime": True,  # 3 s at the clip's 10 fps: the hosted API is probed again meanwhile
            }
        ],
        "inference": {
            "mode": "auto",
            "serverless": {"api_url": fake.url, "model_id": "shapes/3", "api_key": KEY, "probe_interval_s": 0.2},
            "local": {"model": str(model), "threads": 1, "class_map": {"rectangle": "red"}},
        },
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "state_dir": str(tmp_path / "state"),
        "health": {"interval_s": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    sub = make_subscriber(broker.port, f"{BASE}/#")
    fake.set_fault("500", times=1)  # the first frames go to the local model, the rest to the hosted one
    run = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(path)], capture_output=True, text=True, timeout=90
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log

    assert sub.wait_until(lambda: len(sub.payloads(f"{BASE}/detections")) == 30, 10)
    messages = [json.loads(p) for p in sub.payloads(f"{BASE}/detections")]
    by_source: dict[str, set[str]] = {"local": set(), "serverless": set()}
    for m in messages:
        by_source[m["source"]].update(p["class"] for p in m["predictions"])
    assert by_source["local"] == {"red"}, "the local model's 'rectangle' is published as the hosted 'red'"
    assert by_source["serverless"] == {"red", "green", "blue"}, log

    health = json.loads(sub.payloads(f"{BASE}/health")[-1])
    assert health["inference"]["router"]["unknown_remote_classes"] == ["blue", "green"]
    for name in ("green", "blue"):
        assert log.count(f"hosted model returned class '{name}'") == 1, log
    assert "hosted model returned class 'red'" not in log
