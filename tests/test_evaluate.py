"""agent.evaluate (``seg-agent eval``) and the committed demo model's accuracy.

Two sets are made on the fly: one by agent.synth with a seed the model never saw, and one by a second,
independent drawing routine written here (implicit-function rasterisation, outlines only, translucent and
hatched fills, other backgrounds, other sizes) to show the model is not tied to its own generator.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent import synth
from agent.evaluate import EvalReport, ProgressBar, evaluate, format_report

pytest.importorskip("pycocotools")

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "demo-seg.onnx"


@pytest.fixture(scope="module")
def model() -> Any:
    from agent.model import OnnxModel

    return OnnxModel(MODEL)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("synth_eval")
    ann = synth.write_coco_dataset(out, 40, seed=4242)
    return out / "images", ann


# ----------------------------------------------------------------------------------- eval on agent.synth


def test_committed_model_file() -> None:
    assert MODEL.is_file() and MODEL.stat().st_size <= 10 * 1024 * 1024
    onnx = pytest.importorskip("onnx")
    m = onnx.load(str(MODEL))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["names"] == "{0: 'circle', 1: 'rectangle', 2: 'triangle'}"
    assert meta["task"] == "segment" and "imgsz" in meta and "stride" in meta


def test_eval_on_fresh_synthetic_set(model: Any, synth_set: tuple[Path, Path]) -> None:
    # Measured on these 40 images (seed 4242): box AP@0.5 0.923, mask AP@0.5 0.922, mask AP@[.5:.95] 0.720.
    images, ann = synth_set
    report = evaluate(model, images, ann, confidence=0.01, overlap=0.5, progress=False)
    assert isinstance(report, EvalReport)
    assert report.images == 40 and report.instances > 40 and report.detections > 0
    assert report.mask_ap50 >= 0.8, format_report(report)
    assert report.box_ap50 >= 0.8, format_report(report)
    assert 0.0 < report.mask_ap <= report.mask_ap50
    assert [c.name for c in report.per_class] == list(synth.CLASS_NAMES)
    assert all(c.mask_ap50 is not None and c.mask_ap50 > 0.6 for c in report.per_class)
    text = format_report(report)
    for word in ("box", "mask", "circle", "rectangle", "triangle", "AP@0.5"):
        assert word in text


def test_eval_accepts_a_path_and_a_limit(synth_set: tuple[Path, Path]) -> None:
    images, ann = synth_set
    report = evaluate(str(MODEL), images, ann, progress=False, limit=5)
    assert report.images == 5 and report.model == str(MODEL)


def test_eval_errors(model: Any, synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    images, ann = synth_set
    with pytest.raises(OSError):
        evaluate(model, tmp_path / "nope", ann, progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError):
        evaluate(model, images, bad, progress=False)
    doc = json.loads(ann.read_text())
    doc["images"][0]["file_name"] = "missing.jpg"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(OSError, match="missing"):
        evaluate(model, images, broken, progress=False)
    doc = json.loads(ann.read_text())
    doc["categories"] = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="match none"):
        evaluate(model, images, other, progress=False)


def test_classes_matched_by_order_when_names_differ(model: Any, synth_set: tuple[Path, Path], tmp_path: Path) -> None:
    images, ann = synth_set
    doc = json.loads(ann.read_text())
    for c in doc["categories"]:
        c["name"] = c["name"].upper() + "_x"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(doc))
    report = evaluate(model, images, renamed, progress=False, limit=10)
    assert any("by order" in n for n in report.notes)
    assert report.mask_ap50 > 0.7


def test_progress_bar() -> None:
    buf = io.StringIO()
    bar = ProgressBar(3, "eval", stream=buf)
    for _ in range(3):
        bar.update()
    bar.close()
    out = buf.getvalue()
    assert "3/3" in out and out.endswith("\n") and "eval [" in out


# --------------------------------------------------------------- a second, independent drawing routine


def _inside(
    kind: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float, ang: float, aspect: float
) -> np.ndarray:
    """Implicit shape tests on a pixel grid (no OpenCV polygon filling)."""
    u = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)
    v = -(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang)
    if kind == "circle":
        return u * u + v * v <= r * r
    if kind == "rectangle":
        return (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
    # triangle: intersection of three half-planes, an isosceles one squashed by `aspect`
    verts = [(0.0, -r), (r * 0.95, r * (0.4 + 0.5 * aspect)), (-r * 0.95, r * (0.4 + 0.5 * aspect))]
    ok = np.ones_like(u, dtype=bool)
    for (x1, y1), (x2, y2) in zip(verts, verts[1:] + verts[:1], strict=True):
        ok &= (x2 - x1) * (v - y1) - (y2 - y1) * (u - x1) >= 0
    return ok


def _other_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # "plasma": a sum of sinusoids
        f = sum(
            np.sin(xx * rng.uniform(0.005, 0.05) + yy * rng.uniform(0.005, 0.05) + rng.uniform(0, 6)) for _ in range(4)
        )
        t = (f - f.min()) / (f.max() - f.min() + 1e-6)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        bg = a * t[..., None] + b * (1 - t[..., None])
    elif kind == 1:  # "paper": light, grainy, with faint ruled lines
        bg = np.full((h, w, 3), rng.uniform(200, 250), np.float32) + rng.normal(0, 6, (h, w, 1))
        bg[(yy.astype(int) % int(rng.integers(18, 40))) == 0] -= 60
    else:  # dark, with speckles of random colours
        bg = np.full((h, w, 3), rng.uniform(10, 60, 3), np.float32)
        n = h * w // 150
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        bg[ys, xs] = rng.uniform(0, 255, (n, 3))
    return np.asarray(bg, np.float32)


def _other_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    h, w = [(384, 512), (600, 800), (400, 400), (720, 540)][int(rng.integers(0, 4))]
    img = _other_background(rng, h, w)
    ss = 2  # 2x2 supersampling for anti-aliasing
    yy, xx = np.mgrid[0 : h * ss, 0 : w * ss].astype(np.float32) / ss
    taken = np.zeros((h, w), bool)
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(2, 6))):
        for _try in range(20):
            cls = int(rng.integers(0, 3))
            r = float(rng.uniform(0.06, 0.3)) * min(h, w)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            kind = synth.CLASS_NAMES[cls]
            ang, aspect = float(rng.uniform(0, math.pi)), float(rng.uniform(0.45, 1.0))
            cov = _inside(kind, xx, yy, cx, cy, r, ang, aspect).reshape(h, ss, w, ss).mean((1, 3))
            mask = cov >= 0.5
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            if mask.sum() < 60 or (grown & taken).any():
                continue
            style = ("outline", "translucent", "hatched", "solid")[int(rng.integers(0, 4))]
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            if style == "outline":
                t = max(2.0, r * float(rng.uniform(0.04, 0.12)))
                inner = (
                    _inside(kind, xx, yy, cx, cy, r - t, ang, aspect)
                    if kind != "triangle"
                    else _inside(kind, xx, yy, cx, cy + t * 0.3, r - 2 * t, ang, aspect)
                )
                alpha = cov - inner.reshape(h, ss, w, ss).mean((1, 3))
            elif style == "translucent":
                alpha = cov * float(rng.uniform(0.45, 0.7))
            elif style == "hatched":
                period = float(rng.uniform(6, 14))
                stripes = ((xx + yy) % period < period / 2).reshape(h, ss, w, ss).mean((1, 3))
                alpha = np.clip(cov * (0.35 + 0.65 * stripes), 0, 1)
            else:
                alpha = cov
            a = np.clip(alpha, 0, 1)[..., None].astype(np.float32)
            img = img * (1 - a) + colour * a
            taken |= grown
            objects.append((cls, mask.astype(np.uint8)))
            break
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _write_other_set(out: Path, n: int, seed: int) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, objects = _other_scene(np.random.default_rng([seed, i]))
        name = f"o{i:04d}.png"
        cv2.imwrite(str(out / "images" / name), img)
        images.append({"id": i + 1, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        for cls, mask in objects:
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            c = max(contours, key=cv2.contourArea).reshape(-1, 2)
            x, y, bw, bh = cv2.boundingRect(mask)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "segmentation": [c.astype(float).reshape(-1).tolist()],
                    "bbox": [x, y, bw, bh],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(synth.CLASS_NAMES)]
    path = out / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_generalises_to_another_drawing_routine(model: Any, tmp_path: Path) -> None:
    ann = _write_other_set(tmp_path, 40, seed=777)
    report = evaluate(model, tmp_path / "images", ann, progress=False)
    # Measured on these 40 images (seed 777): box AP@0.5 0.933, mask AP@0.5 0.938, mask AP@[.5:.95] 0.808.
    assert report.mask_ap50 >= 0.7, format_report(report)
    assert report.box_ap50 >= 0.7, format_report(report)
    assert report.mask_ap >= 0.55, format_report(report)
