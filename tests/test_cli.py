"""The command line as a user meets it: real subprocesses, real files, exit statuses and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def seg_agent(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def _config(tmp_path: Path, model: Path, **overrides: Any) -> Path:
    video = tmp_path / "clip.avi"
    video.write_bytes(b"")
    doc: dict[str, Any] = {
        "device_id": "cli-test",
        "cameras": [{"name": "cam0", "source": str(video), "fps": 5}],
        "inference": {"mode": "local", "local": {"model": str(model)}},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "state_dir": str(tmp_path / "state"),
    }
    doc.update(overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_help_lists_the_commands() -> None:
    out = seg_agent("--help")
    assert out.returncode == 0
    for command in ("run", "check-config", "infer", "eval"):
        assert command in out.stdout


def test_check_config_prints_effective_settings_with_secrets_masked(tmp_path: Path, model_path: Path) -> None:
    path = _config(
        tmp_path,
        model_path,
        mqtt={"host": "127.0.0.1", "username": "u", "password": "hunter2-secret"},
    )
    out = seg_agent("check-config", "--config", str(path))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["mqtt"]["password"] == "***"
    assert shown["cameras"][0]["fps"] == 5.0
    assert "hunter2-secret" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"device_id": None}, "device_id: required key is missing"),
        ({"cameras": [{"name": "cam0"}]}, "cameras[0].source: required key is missing"),
        ({"cameras": [{"name": "cam0", "source": 0, "fps": "fast"}]}, "cameras[0].fps: expected a number"),
        ({"mqtt": {"port": "x"}}, "mqtt.port: expected an integer"),
        ({"mqtt": {"prot": 1883}}, "mqtt.prot: unknown key"),
        ({"inference": {"mode": "local", "local": {"model": "/nonexistent/m.onnx"}}}, "inference.local.model"),
    ],
)
def test_bad_configs_exit_2_with_key_and_reason_no_traceback(
    tmp_path: Path, model_path: Path, change: dict[str, Any], expected: str
) -> None:
    path = _config(tmp_path, model_path, **change)
    for command in ("check-config", "run"):
        out = seg_agent(command, "--config", str(path))
        assert out.returncode == 2, (command, out.stderr)
        assert expected in out.stderr
        assert "Traceback" not in out.stderr


def test_check_config_loads_the_model_and_says_what_it_found(tmp_path: Path, model_path: Path) -> None:
    out = seg_agent("check-config", "--config", str(_config(tmp_path, model_path)))
    assert out.returncode == 0, out.stderr
    assert "yolov8 model, input 256x256, 3 classes (circle, rectangle, triangle)" in out.stderr
    assert "of the local model" in out.stderr and "(auto: cameras ask" in out.stderr, "what sessions: auto chose"


def test_check_config_rejects_a_file_that_only_looks_like_a_model(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("a text file named .onnx")
    out = seg_agent("check-config", "--config", str(_config(tmp_path, bogus)))
    assert out.returncode == 2 and "inference.local.model" in out.stderr and str(bogus) in out.stderr
    assert "OK" not in out.stderr and "Traceback" not in out.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    out = seg_agent("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read configuration file" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_model_fails_run_clearly(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"this is not a protobuf at all")
    path = _config(tmp_path, bogus)
    out = seg_agent("run", "--config", str(path))
    assert out.returncode == 2
    assert "inference.local.model" in out.stderr and str(bogus) in out.stderr
    assert "Traceback" not in out.stderr


def test_infer_prints_one_api_json_line_per_image(tmp_path: Path, model_path: Path) -> None:
    images = []
    for i, (w, h) in enumerate([(640, 480), (320, 400)]):
        img = np.full((h, w, 3), 200, np.uint8)
        cv2.circle(img, (w // 3, h // 2), min(w, h) // 5, (30, 40, 220), -1)
        cv2.rectangle(img, (w // 2, h // 4), (w - 20, h // 2), (220, 60, 20), -1)
        p = tmp_path / f"img{i}.jpg"
        cv2.imwrite(str(p), img)
        images.append((p, w, h))
    out = seg_agent("infer", "--model", str(model_path), *(str(p) for p, _, _ in images), "--confidence", "20")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    for line, (_, w, h) in zip(lines, images, strict=True):
        obj = json.loads(line)
        assert obj["image"] == {"width": w, "height": h}
        assert isinstance(obj["predictions"], list) and obj["predictions"], "the test model finds something"
        for p in obj["predictions"]:
            assert p["confidence"] > 0.2
            assert len(p["points"]) >= 3
            assert p["class"] in ("circle", "rectangle", "triangle")
            assert 0 <= p["x"] <= w and 0 <= p["y"] <= h


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_text("hello, not a picture"), "not an image OpenCV can decode (20 bytes"),
    ],
    ids=["missing", "empty", "directory", "not-an-image"],
)
def test_infer_says_why_an_image_is_unusable_and_keeps_opencv_quiet(
    tmp_path: Path, model_path: Path, make: Any, reason: str
) -> None:
    bad = tmp_path / "frame.jpg"
    make(bad)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((64, 64, 3), 200, np.uint8))
    out = seg_agent("infer", "--model", str(model_path), str(bad), str(good))
    assert out.returncode == 1
    assert out.stderr.startswith(f"seg-agent: error: {bad}: {reason}") and len(out.stderr.splitlines()) == 1
    assert "WARN" not in out.stderr and len(out.stdout.splitlines()) == 1  # the good image still ran
