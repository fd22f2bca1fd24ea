"""agent.synth: the seeded generator of shapes, its COCO writer, the sample video and the committed files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent import synth

ROOT = Path(__file__).resolve().parent.parent


def test_render_is_deterministic_per_seed() -> None:
    a_img, a_inst = synth.render_sample(np.random.default_rng([3, 1]))
    b_img, b_inst = synth.render_sample(np.random.default_rng([3, 1]))
    c_img, _ = synth.render_sample(np.random.default_rng([3, 2]))
    assert np.array_equal(a_img, b_img)
    assert [i.class_id for i in a_inst] == [i.class_id for i in b_inst]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a_inst, b_inst, strict=True))
    assert a_img.shape != c_img.shape or not np.array_equal(a_img, c_img)


def test_instances_are_consistent() -> None:
    sizes = set()
    classes: set[int] = set()
    for i in range(25):
        img, instances = synth.render_sample(np.random.default_rng([11, i]))
        h, w = img.shape[:2]
        sizes.add((h, w))
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert 240 <= min(h, w) <= 720
        for inst in instances:
            classes.add(inst.class_id)
            assert inst.class_name in synth.CLASS_NAMES
            assert inst.mask.shape == (h, w) and set(np.unique(inst.mask)) <= {0, 1}
            assert inst.area == float(inst.mask.sum()) >= 40
            x, y, bw, bh = inst.bbox_xywh
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            ys, xs = np.nonzero(inst.mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + bw, y + bh)
            assert inst.polygons and all(p.ndim == 2 and p.shape[1] == 2 and len(p) >= 3 for p in inst.polygons)
            # The polygons cover the visible mask (up to their one-pixel outline).
            back = np.zeros((h, w), np.uint8)
            cv2.fillPoly(back, [p.astype(np.int32).reshape(-1, 1, 2) for p in inst.polygons], 1)
            inter = float((back & inst.mask).sum())
            assert inter / float((back | inst.mask).sum()) > 0.75
    assert len(sizes) > 10  # varied sizes and aspect ratios
    assert classes == {0, 1, 2}


def test_shape_polygon_geometry() -> None:
    circle = synth.shape_polygon(0, 50, 60, 40, 0.3)
    assert np.allclose(np.hypot(circle[:, 0] - 50, circle[:, 1] - 60), 20, atol=1e-3)
    rect = synth.shape_polygon(1, 0, 0, 40, 0.0, aspect=0.5)
    assert len(rect) == 4 and abs(cv2.contourArea(rect) - 40 * 20) < 1e-2
    tri = synth.shape_polygon(2, 10, 10, 30, 1.0, tri_angles=(1.0, 1.0, np.pi - 2.0))
    assert len(tri) == 3 and np.allclose(np.hypot(tri[:, 0] - 10, tri[:, 1] - 10), 15, atol=1e-3)


def test_write_coco_dataset(tmp_path: Path) -> None:
    ann = synth.write_coco_dataset(tmp_path / "set", 6, seed=5)
    doc = json.loads(ann.read_text())
    assert [c["name"] for c in doc["categories"]] == list(synth.CLASS_NAMES)
    assert len(doc["images"]) == 6 and doc["annotations"]
    for im in doc["images"]:
        img = cv2.imread(str(tmp_path / "set" / "images" / im["file_name"]))
        assert img is not None and img.shape[:2] == (im["height"], im["width"])
    for a in doc["annotations"]:
        assert a["category_id"] in (1, 2, 3) and a["iscrowd"] == 0
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    coco = COCO(str(ann))
    for a in doc["annotations"][:20]:
        m = coco.annToMask(a)
        assert abs(float(m.sum()) - a["area"]) / a["area"] < 0.35


def test_fixed_frame_size(tmp_path: Path) -> None:
    ann = synth.write_coco_dataset(tmp_path, 2, seed=9, frame_size=(200, 300))
    doc = json.loads(ann.read_text())
    assert all((im["height"], im["width"]) == (200, 300) for im in doc["images"])


def test_render_video(tmp_path: Path) -> None:
    path = synth.render_video(tmp_path / "clip.avi", seconds=1.0, fps=5.0, size=(320, 240), seed=1)
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (240, 320, 3)
    assert not np.array_equal(frames[0], frames[-1])  # things move


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth.main_synth(["coco", str(tmp_path / "c"), "--n", "2", "--seed", "3", "--size", "320x240"]) == 0
    assert (tmp_path / "c" / "annotations.json").is_file()
    assert (
        synth.main_synth(["video", str(tmp_path / "v.avi"), "--seconds", "0.4", "--fps", "5", "--size", "160x120"]) == 0
    )
    assert (tmp_path / "v.avi").stat().st_size > 0
    assert "annotations.json" in capsys.readouterr().out


def test_committed_sample_video() -> None:
    path = ROOT / "models" / "sample.avi"
    assert path.is_file() and path.stat().st_size <= 5 * 1024 * 1024
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read()
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert ok and frame.shape == (480, 640, 3)
    assert 10 <= n / fps <= 20
