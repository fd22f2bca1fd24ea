"""Seeded synthetic clips with ground-truth tracks, to measure the tracker (``seg-agent eval --tracks``).

:func:`render_track_clip` writes ``OUT.avi`` (MJPG) and ``OUT.tracks.json`` beside it: shapes of the demo
model's classes that move with drifting velocities, cross and occlude each other (drawn in depth order), pass
behind a pillar that hides them for a moment, leave the frame and come back. The ground truth is, per frame,
each object's id, class, the box of its visible part and its visibility (visible share of its whole area),
and ``"split": true`` where its visible part is in two or more pieces (a pillar or another object across
it: :func:`count_pieces`), for which a detector boxing one piece cannot reach IoU 0.5 with the box of both.

``tracks.json``::

    {"video": "clip.avi", "fps": 10.0, "width": 640, "height": 480, "seed": 100,
     "frames": [[{"id": 3, "class": "circle", "box_xyxy": [x1, y1, x2, y2], "visibility": 0.93}, ...], ...]}
    (an object split in pieces also has "split": true)

An object whose visibility is under ``min_visibility`` (in the file) is one no detector can be asked to see:
the evaluation neither expects it nor counts a detection of it as false. Deterministic given the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.synth import CLASS_NAMES, shape_polygon
from agent.synth_paint import background, colour, fixed_point

__all__ = ["MIN_VISIBILITY", "SPLIT_MIN_SHARE", "count_pieces", "render_track_clip"]

MIN_VISIBILITY = 0.5
"""Objects less visible than this are not expected of a detector (nor is a detection of them wrong)."""

SPLIT_MIN_SHARE = 0.05
"""A piece of an object's visible part counts when it holds at least this share of the visible area."""

ImageU8 = NDArray[np.uint8]


def count_pieces(visible_hw: ImageU8, min_share: float = SPLIT_MIN_SHARE) -> int:
    """How many 8-connected pieces a (h, w) 0/1 mask has, leaving out those under ``min_share`` of its area
    (slivers at anti-aliased edges); 0 for an empty mask."""
    mask = np.ascontiguousarray(visible_hw, dtype=np.uint8)
    total = int(np.count_nonzero(mask))
    if total == 0:
        return 0
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return int(np.count_nonzero(areas >= min_share * total))


@dataclass
class _Mover:
    class_id: int
    size: float
    pos: NDArray[np.float64]  # (2,) px
    vel: NDArray[np.float64]  # (2,) px/s
    angle: float
    spin: float
    aspect: float
    tri: tuple[float, float, float]
    bgr: tuple[float, float, float]
    margin: float  # how far past the frame's edge it may go before turning back (leaving and returning)

    def polygon(self) -> NDArray[np.float32]:
        return shape_polygon(
            self.class_id,
            float(self.pos[0]),
            float(self.pos[1]),
            self.size,
            self.angle,
            aspect=self.aspect,
            tri_angles=self.tri,
        )

    def step(self, rng: np.random.Generator, dt: float, wh: tuple[int, int]) -> None:
        """Drift the velocity a little, move, turn back past the edges (plus ``margin``)."""
        speed = float(np.linalg.norm(self.vel))
        self.vel += rng.normal(0.0, 0.15 * speed * math.sqrt(dt), size=2)
        self.vel *= speed / max(float(np.linalg.norm(self.vel)), 1e-6)  # the heading wanders, the speed stays
        self.pos += self.vel * dt
        self.angle += self.spin * dt
        for d, lim in enumerate(wh):
            lo, hi = self.size / 2 - self.margin, lim - self.size / 2 + self.margin
            if self.pos[d] < lo or self.pos[d] > hi:
                self.vel[d] = abs(self.vel[d]) if self.pos[d] < lo else -abs(self.vel[d])
                self.pos[d] = min(max(self.pos[d], lo), hi)


def _movers(rng: np.random.Generator, n: int, wh: tuple[int, int]) -> list[_Mover]:
    w, h = wh
    short = min(w, h)
    movers = []
    for i in range(n):
        size = float(rng.uniform(0.13, 0.24)) * short
        heading = float(rng.uniform(0, 2 * math.pi))
        speed = float(rng.uniform(0.08, 0.22)) * short  # px/s
        # about one object in three may leave the frame wholly for a moment
        margin = size * (0.75 if i % 3 == 0 else 0.0)
        movers.append(
            _Mover(
                class_id=i % len(CLASS_NAMES),
                size=size,
                pos=np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h]),
                vel=np.array([math.cos(heading), math.sin(heading)]) * speed,
                angle=float(rng.uniform(0, 2 * math.pi)),
                spin=float(rng.uniform(-0.8, 0.8)),
                aspect=float(rng.uniform(0.55, 1.0)),
                tri=(math.pi / 3, math.pi / 3, math.pi / 3),
                bgr=tuple(float(v) for v in colour(rng)),  # type: ignore[arg-type]
                margin=margin,
            )
        )
    return movers


def _pillar(rng: np.random.Generator, wh: tuple[int, int]) -> tuple[int, int]:
    """x range of a full-height pillar in front of everything (objects pass behind it)."""
    w, _ = wh
    width = int(0.06 * w)
    x0 = int(rng.uniform(0.3, 0.7) * w)
    return x0, x0 + width


def _frame_truth(
    masks: list[ImageU8], areas: list[float], movers: list[_Mover], pillar_mask: ImageU8
) -> list[dict[str, Any]]:
    """Each object's visible box and visibility; ``masks`` back to front (a later one hides earlier ones)."""
    hidden = pillar_mask.copy()
    truth: list[dict[str, Any]] = []
    for k in range(len(masks) - 1, -1, -1):  # front to back: what is in front hides
        visible = masks[k] & (1 - hidden)
        hidden |= masks[k]
        ys, xs = np.nonzero(visible)
        share = float(len(xs)) / max(areas[k], 1.0)
        if len(xs) == 0:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max() + 1), int(ys.max() + 1)
        box = [float(x0), float(y0), float(x1), float(y1)]
        obj = {"id": k + 1, "class": CLASS_NAMES[movers[k].class_id], "box_xyxy": box, "visibility": round(share, 3)}
        if count_pieces(visible[y0:y1, x0:x1]) >= 2:
            obj["split"] = True
        truth.append(obj)
    return sorted(truth, key=lambda o: int(o["id"]))


def render_track_clip(
    path: str | Path,
    *,
    seconds: float = 20.0,
    fps: float = 10.0,
    size: tuple[int, int] = (640, 480),
    seed: int = 100,
    n_objects: int = 5,
    quality: int = 80,
) -> Path:
    """Write the clip at ``path`` and its ground truth beside it (``.tracks.json``); returns the JSON's path.

    ``size`` is (width, height)."""
    rng = np.random.default_rng([seed, 77])
    w, h = size
    bg = background(rng, (h, w), clutter=False)  # clutter is a detector's test, not a tracker's
    movers = _movers(rng, n_objects, size)
    px0, px1 = _pillar(rng, size)
    pillar_mask = np.zeros((h, w), np.uint8)
    pillar_mask[:, px0:px1] = 1
    pillar_bgr = tuple(float(v) for v in colour(rng))
    video = Path(path)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {video}")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    frames: list[list[dict[str, Any]]] = []
    try:
        for _ in range(round(seconds * fps)):
            img = bg.copy()
            masks: list[ImageU8] = []
            areas: list[float] = []
            for m in movers:
                pts = m.polygon()
                cv2.fillPoly(img, [fixed_point(pts)], m.bgr, cv2.LINE_AA, 4)
                mask = np.zeros((h, w), np.uint8)
                cv2.fillPoly(mask, [fixed_point(pts)], 1, cv2.LINE_8, 4)
                masks.append(mask)
                areas.append(float(abs(cv2.contourArea(pts))))
            img[:, px0:px1] = pillar_bgr
            cv2.line(img, (px0, 0), (px0, h), (30, 30, 30), 2)  # an edge, as a post or a tree has
            writer.write(np.clip(img, 0, 255).astype(np.uint8))
            frames.append(_frame_truth(masks, areas, movers, pillar_mask))
            for m in movers:
                m.step(rng, 1.0 / fps, size)
    finally:
        writer.release()
    truth_path = video.with_suffix(".tracks.json")
    doc = {
        "video": video.name,
        "fps": fps,
        "width": w,
        "height": h,
        "seed": seed,
        "min_visibility": MIN_VISIBILITY,
        "frames": frames,
    }
    truth_path.write_text(json.dumps(doc, separators=(",", ":")))
    return truth_path
