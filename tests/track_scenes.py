"""A scripted scene with known tracks, zone visits and line crossings, for the events tests.

Six shapes on a 640 x 480 frame walk piecewise-straight paths (their box's bottom centre is the anchor) past
a line ``gate`` from (40, 240) to (600, 240) (downward is ``in``) and a zone ``dock`` (x 380-610,
y 300-470). What each one does to them is written beside it, by construction: that is the ground truth.
:func:`boxes_at` gives each frame's true boxes, :func:`render` paints them (solid shapes on grey, colours
the demo model's classes are trained on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

WH = (640, 480)
GATE = {"name": "gate", "start": [0.0625, 0.5], "end": [0.9375, 0.5], "units": "fraction"}  # (40,240)-(600,240)
DOCK = {"name": "dock", "points": [[380, 300], [610, 300], [610, 470], [380, 470]], "inertia": 3}
SIZE = 56  # box side, pixels


@dataclass(frozen=True)
class Walker:
    name: str
    cls: str
    start: int  # first frame it is seen
    path: tuple[tuple[float, float, int], ...]  # (x, y, frames to get there); the first leg's frames are 0
    ins: int  # ground truth: crossings of the gate downwards
    outs: int  # ... upwards
    docks: bool  # enters the dock


WALKERS = (
    Walker("A", "circle", 0, ((110, 60, 0), (110, 420, 30), (110, 420, 5)), 1, 0, False),
    Walker("B", "rectangle", 4, ((210, 440, 0), (210, 60, 30)), 0, 1, False),
    Walker("C", "triangle", 8, ((330, 60, 0), (330, 420, 20), (330, 80, 20)), 1, 1, False),
    Walker("D", "circle", 14, ((60, 100, 0), (500, 100, 25), (500, 420, 20), (500, 420, 12)), 1, 0, True),
    # down past the line's end (x 608 > 600): changes side without crossing it, into the dock
    Walker("E", "rectangle", 18, ((608, 110, 0), (608, 400, 25), (560, 400, 8), (560, 400, 12)), 0, 0, True),
    # hovers just above the line, never across
    Walker(
        "F", "triangle", 2, ((270, 200, 0), (270, 232, 8), (270, 205, 8), (270, 233, 8), (270, 210, 8)), 0, 0, False
    ),
)
FRAMES = 110  # the last walker is gone by frame ~78; the rest lets the tracker end every track

# Regression scene (line counts on seeds 310-319 missed crossings made in a clip's first frames): walkers that
# cross the gate while their tracks are still tentative (min_frames 3: their first two detections carry no
# id), so the first place their tracks are published is already past the line. G starts 8 px above it and
# is below it from its second frame; H appears later, 10 px below, going up 12 px a frame.
EARLY = (
    Walker("G", "circle", 0, ((300, 232, 0), (300, 420, 16)), 1, 0, False),
    Walker("H", "rectangle", 5, ((500, 250, 0), (500, 58, 16)), 0, 1, False),
)
EARLY_FRAMES = 40


def anchor_at(w: Walker, frame: int) -> tuple[float, float] | None:
    """The walker's bottom centre at ``frame``, or None when it is not in the picture."""
    k = frame - w.start
    if k < 0:
        return None
    x, y = w.path[0][0], w.path[0][1]
    for tx, ty, n in w.path[1:]:
        if k <= n:
            f = k / n
            return x + (tx - x) * f, y + (ty - y) * f
        k -= n
        x, y = tx, ty
    return None


def boxes_at(
    frame: int, walkers: tuple[Walker, ...] = WALKERS
) -> list[tuple[Walker, tuple[float, float, float, float]]]:
    out = []
    for w in walkers:
        a = anchor_at(w, frame)
        if a is not None:
            out.append((w, (a[0] - SIZE / 2, a[1] - SIZE, a[0] + SIZE / 2, a[1])))
    return out


_COLOURS = {"circle": (40, 200, 40), "rectangle": (40, 40, 220), "triangle": (220, 60, 20)}  # BGR


def render(frame: int) -> np.ndarray:
    img = np.full((WH[1], WH[0], 3), 90, np.uint8)
    for w, (x0, y0, x1, y1) in boxes_at(frame):
        colour = _COLOURS[w.cls]
        if w.cls == "circle":
            cv2.circle(img, (round((x0 + x1) / 2), round((y0 + y1) / 2)), round(SIZE / 2), colour, -1, cv2.LINE_AA)
        elif w.cls == "rectangle":
            cv2.rectangle(img, (round(x0), round(y0)), (round(x1), round(y1)), colour, -1)
        else:
            tri = np.array([[x0, y1], [x1, y1], [(x0 + x1) / 2, y0]], np.int32)
            cv2.fillPoly(img, [tri], colour, cv2.LINE_AA)
    return img


def expected_lines(walkers: tuple[Walker, ...] = WALKERS) -> dict[str, int]:
    """Ground-truth count topics of the gate: ``gate/in/circle`` ... and the ``all`` totals."""
    out: dict[str, int] = {"gate/in/all": 0, "gate/out/all": 0}
    for w in walkers:
        for direction, n in (("in", w.ins), ("out", w.outs)):
            if n:
                out[f"gate/{direction}/{w.cls}"] = out.get(f"gate/{direction}/{w.cls}", 0) + n
                out[f"gate/{direction}/all"] += n
    return out


def peak_in_dock() -> int:
    """The most walkers inside the dock at once (their anchors inside for 3 frames in a row)."""
    best = 0
    for frame in range(FRAMES):
        n = 0
        for w in WALKERS:
            recent = [anchor_at(w, f) for f in range(frame - 2, frame + 1)]
            if all(a is not None and 380 <= a[0] <= 610 and 300 <= a[1] <= 470 for a in recent):
                n += 1
        best = max(best, n)
    return best


def sway(frame: int) -> float:
    """A deterministic one-pixel jitter, so the detector is not perfectly smooth."""
    return math.sin(frame * 1.7)
