"""Seeded synthetic instance-segmentation data: shapes on cluttered backgrounds.

The demo model (``models/demo-seg.onnx``) is trained on frames from :func:`render_sample`, and
``seg-agent eval`` / the tests measure it on held-out sets written by :func:`write_coco_dataset`.
Everything is deterministic given a seed: image ``i`` of a set made with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])``, so sets can be produced in any order or in parallel.

Classes: ``circle``, ``rectangle``, ``triangle`` — of varied sizes, rotations and colours, filled with
solid colours, gradients or textures, sometimes only outlined or translucent, overlapping and occluding
each other, on textured and gradient backgrounds with clutter, then noise, blur and JPEG artefacts.

Only NumPy and OpenCV are used. Command line: ``python -m agent.synth coco OUT_DIR --n 500 --seed 1000``
or ``python -m agent.synth video OUT.avi``; ``video OUT.avi --tracks`` renders a clip with ground-truth tracks
(:mod:`agent.synth_tracks`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.synth_paint import background, colour, degrade, draw_shape, fixed_point

CLASS_NAMES: tuple[str, ...] = ("circle", "rectangle", "triangle")

FloatArray = NDArray[np.float32]
ImageU8 = NDArray[np.uint8]

# Shape size, as a fraction of the frame's shorter side (log-uniform in this range).
SIZE_RANGE: tuple[float, float] = (0.07, 0.55)
# An instance is kept only if at least this share of its full area stays visible.
MIN_VISIBLE = 0.5
_MIN_PIXELS = 40


@dataclass(frozen=True)
class Instance:
    """One annotated object of a rendered frame (coordinates in the frame's pixels)."""

    class_id: int
    mask: ImageU8  # (H, W) 0/1, the visible part
    polygons: list[FloatArray]  # outer contours of the visible part, each (k, 2) x, y
    bbox_xywh: tuple[float, float, float, float]
    area: float

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]


# --------------------------------------------------------------------------------------------- geometry


def shape_polygon(
    class_id: int,
    cx: float,
    cy: float,
    size: float,
    angle: float,
    *,
    aspect: float = 1.0,
    tri_angles: tuple[float, float, float] | None = None,
) -> FloatArray:
    """Vertices (k, 2) of a shape: ``size`` is the diameter / long side / circumscribed diameter."""
    if class_id == 0:
        n = int(np.clip(size * 0.8, 24, 160))
        t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * (size / 2)
    elif class_id == 1:
        w, h = size / 2, size * aspect / 2
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=np.float64)
    else:
        a, b, _ = tri_angles if tri_angles is not None else (math.pi / 3, math.pi / 3, math.pi / 3)
        # Vertices on the circumscribed circle: central angles are twice the opposite inscribed angles.
        r = size / 2
        t0 = 0.0
        t1 = t0 + 2 * b
        t2 = t1 + 2 * a
        pts = np.array([[math.cos(t), math.sin(t)] for t in (t0, t1, t2)]) * r
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    out: FloatArray = (pts @ rot.T + np.array([cx, cy])).astype(np.float32)
    return out


def _random_triangle_angles(rng: np.random.Generator) -> tuple[float, float, float]:
    while True:
        a, b = rng.uniform(math.radians(28), math.radians(110), size=2)
        c = math.pi - a - b
        if c >= math.radians(28):
            return float(a), float(b), float(c)


def rasterize(pts: FloatArray, hw: tuple[int, int]) -> ImageU8:
    """Binary (0/1) mask of a polygon."""
    mask = np.zeros(hw, np.uint8)
    cv2.fillPoly(mask, [fixed_point(pts)], 1, cv2.LINE_8, 4)
    return mask


def mask_polygons(mask: ImageU8, min_area: float = 4.0) -> list[FloatArray]:
    """Outer contours of a binary mask as float (k, 2) polygons with at least 3 points."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polys: list[FloatArray] = []
    for c in contours:
        if cv2.contourArea(c) < min_area:
            continue
        approx = cv2.approxPolyDP(c, 0.5, True).reshape(-1, 2)
        if len(approx) >= 3:
            polys.append(approx.astype(np.float32))
    return polys


def _instance(class_id: int, mask: ImageU8) -> Instance | None:
    ys, xs = np.nonzero(mask)
    if len(xs) < _MIN_PIXELS:
        return None
    polys = mask_polygons(mask)
    if not polys:
        return None
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return Instance(class_id, mask, polys, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), float(len(xs)))


def random_frame_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) of a frame: short side 240-720 px, aspect 1:2 .. 2:1 (mostly landscape)."""
    short = int(rng.integers(240, 721))
    aspect = float(np.exp(rng.uniform(0.0, math.log(2.0))))
    long_ = int(short * aspect)
    return (short, long_) if rng.random() < 0.75 else (long_, short)


def render_sample(
    rng: np.random.Generator, hw: tuple[int, int] | None = None, n_shapes: int | None = None
) -> tuple[ImageU8, list[Instance]]:
    """Render one BGR frame and its instances (visible masks, polygons, boxes)."""
    if hw is None:
        hw = random_frame_size(rng)
    h, w = hw
    img = background(rng, hw)
    if n_shapes is None:
        n_shapes = int(rng.integers(1, 11))
    short = min(h, w)
    lo, hi = SIZE_RANGE
    masks: list[ImageU8] = []
    full_areas: list[float] = []
    classes: list[int] = []
    for _ in range(n_shapes):
        for _attempt in range(12):
            cls = int(rng.integers(0, len(CLASS_NAMES)))
            size = float(np.exp(rng.uniform(math.log(lo), math.log(hi)))) * short
            cx = float(rng.uniform(-0.2 * size, w + 0.2 * size))
            cy = float(rng.uniform(-0.2 * size, h + 0.2 * size))
            pts = shape_polygon(
                cls,
                cx,
                cy,
                size,
                float(rng.uniform(0, 2 * math.pi)),
                aspect=float(rng.uniform(0.3, 1.0)),
                tri_angles=_random_triangle_angles(rng),
            )
            full = float(abs(cv2.contourArea(pts)))
            m = rasterize(pts, hw)
            if m.sum() < max(_MIN_PIXELS, 0.65 * full):  # mostly outside the frame
                continue
            style = str(rng.choice(["solid", "outline", "translucent"], p=[0.75, 0.12, 0.13]))
            opaque = style == "solid"
            if opaque and any(
                (mi & (1 - m)).sum() < MIN_VISIBLE * fa for mi, fa in zip(masks, full_areas, strict=True)
            ):
                continue
            draw_shape(rng, img, pts, style, size)
            if opaque:
                for i, mi in enumerate(masks):
                    masks[i] = mi & (1 - m)
            masks.append(m)
            full_areas.append(full)
            classes.append(cls)
            break
    out = degrade(rng, img)
    instances = [inst for c, m in zip(classes, masks, strict=True) if (inst := _instance(c, m)) is not None]
    return out, instances


# ------------------------------------------------------------------------------------------------ COCO


def coco_categories() -> list[dict[str, Any]]:
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]


def write_coco_dataset(
    out_dir: str | Path, n: int, seed: int, *, frame_size: tuple[int, int] | None = None, progress: bool = False
) -> Path:
    """Write ``n`` frames to ``out_dir/images/`` and COCO annotations to ``out_dir/annotations.json``.

    Category ids are 1-based in the file (``id = class index + 1``), names as in :data:`CLASS_NAMES`.
    Returns the annotations path.
    """
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, instances = render_sample(rng, frame_size)
        name = f"{i:06d}.jpg"
        cv2.imwrite(str(img_dir / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": i + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for inst in instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": inst.class_id + 1,
                    "segmentation": [[round(float(v), 2) for v in p.reshape(-1)] for p in inst.polygons],
                    "bbox": list(inst.bbox_xywh),
                    "area": inst.area,
                    "iscrowd": 0,
                }
            )
        if progress:
            _bar(i + 1, n, "synth")
    ann_path = out / "annotations.json"
    doc = {
        "info": {"description": f"seg-agent synthetic shapes, seed {seed}", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    ann_path.write_text(json.dumps(doc))
    return ann_path


def _bar(done: int, total: int, label: str) -> None:
    """A minimal progress bar on stderr, redrawn once per percent."""
    if done < total and (100 * done) // max(total, 1) == (100 * (done - 1)) // max(total, 1):
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------- video


def render_video(
    path: str | Path,
    seconds: float = 15.0,
    fps: float = 10.0,
    size: tuple[int, int] = (640, 480),
    seed: int = 7,
    quality: int = 70,
) -> Path:
    """Render a clip of shapes moving, spinning and bouncing over a background (MJPG in .avi).

    ``size`` is (width, height), as OpenCV takes it.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    bg = background(rng, (h, w))
    n = 6
    cls = rng.permutation(np.arange(n) % len(CLASS_NAMES))
    sizes = rng.uniform(0.12, 0.35, size=n) * min(h, w)
    pos = np.stack([rng.uniform(0.15 * w, 0.85 * w, n), rng.uniform(0.15 * h, 0.85 * h, n)], axis=1)
    vel = rng.uniform(-1, 1, size=(n, 2)) * min(h, w) * 0.25  # px/s
    ang = rng.uniform(0, 2 * math.pi, n)
    spin = rng.uniform(-1.2, 1.2, n)  # rad/s
    aspects = rng.uniform(0.4, 1.0, n)
    tris = [_random_triangle_angles(rng) for _ in range(n)]
    cols = [tuple(float(v) for v in colour(rng)) for _ in range(n)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    dt = 1.0 / fps
    try:
        for _ in range(round(seconds * fps)):
            frame = bg.copy()
            for i in range(n):
                pts = shape_polygon(
                    int(cls[i]),
                    float(pos[i, 0]),
                    float(pos[i, 1]),
                    float(sizes[i]),
                    float(ang[i]),
                    aspect=float(aspects[i]),
                    tri_angles=tris[i],
                )
                cv2.fillPoly(frame, [fixed_point(pts)], cols[i], cv2.LINE_AA, 4)
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
            pos += vel * dt
            ang += spin * dt
            for d, lim in ((0, w), (1, h)):
                r = sizes / 2
                low, high = pos[:, d] < r, pos[:, d] > lim - r
                vel[low | high, d] *= -1
                pos[:, d] = np.clip(pos[:, d], r, lim - r)
    finally:
        writer.release()
    return Path(path)


# ------------------------------------------------------------------------------------------------- CLI


def main_synth(argv: Sequence[str] | None = None) -> int:
    """``seg-agent synth``: write a COCO set or render the sample video."""
    p = argparse.ArgumentParser(prog="seg-agent synth", description=__doc__.split("\n")[0] if __doc__ else "")
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("coco", help="write a COCO instance-segmentation set")
    c.add_argument("out_dir")
    c.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    c.add_argument("--seed", type=int, default=1000, help="seed (the demo model never saw 1000-1999)")
    c.add_argument("--size", type=str, default=None, help="fixed frame size WxH (default: varied)")
    v = sub.add_parser("video", help="render the sample video (MJPG .avi)")
    v.add_argument("out_path")
    v.add_argument("--seconds", type=float, default=None, help="default 15 (with --tracks: 20)")
    v.add_argument("--fps", type=float, default=10.0)
    v.add_argument("--size", type=str, default="640x480", help="WxH (default 640x480)")
    v.add_argument("--seed", type=int, default=None, help="default 7 (with --tracks: 100)")
    v.add_argument(
        "--tracks",
        action="store_true",
        help="a clip with ground-truth tracks instead (crossings, occlusion, exits; OUT.tracks.json beside it), "
        "for seg-agent eval --tracks; its defaults: 20 s, seed 100 (held out: the tracker was tuned on 1-4)",
    )
    v.add_argument("--objects", type=int, default=5, help="with --tracks: how many shapes (default 5)")
    args = p.parse_args(argv)

    def parse_size(s: str) -> tuple[int, int]:
        w, _, h = s.lower().partition("x")
        return int(w), int(h)

    if args.what == "coco":
        fs = None
        if args.size:
            w, h = parse_size(args.size)
            fs = (h, w)
        path = write_coco_dataset(args.out_dir, args.n, args.seed, frame_size=fs, progress=True)
        print(path)
    elif args.tracks:
        from agent.synth_tracks import render_track_clip

        seconds = 20.0 if args.seconds is None else args.seconds
        seed = 100 if args.seed is None else args.seed
        size = parse_size(args.size)
        print(
            render_track_clip(
                args.out_path, seconds=seconds, fps=args.fps, size=size, seed=seed, n_objects=args.objects
            )
        )
    else:
        seconds = 15.0 if args.seconds is None else args.seconds
        seed = 7 if args.seed is None else args.seed
        print(render_video(args.out_path, seconds, args.fps, parse_size(args.size), seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_synth())
