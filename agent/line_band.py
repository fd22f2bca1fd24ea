"""A line's dead band: which side of a line an anchor is on, for :mod:`agent.zones`.

An anchor (a box's bottom centre) is on a line's ``in`` side (+1, right of ``start`` -> ``end`` on the image)
or ``out`` side (-1) only when it is **more than** ``band`` from the line; within the band it is on neither
(0), and a track there keeps the side it had (one born there has none until it leaves the band). So a
crossing is the anchor going from more than ``band`` on one side to more than ``band`` on the other, through
the segment: a detector's box wobbling a pixel or two round a line an object walks along counts nothing.

``band`` is in the line's units: pixels, or fractions of the frame as the line's own coordinates (the
distance measured with x / width and y / height: a level line's band is a share of the height, an upright
one's of the width). Left out (None) it is :data:`DEFAULT_BAND_SHARE` of the frame's longer side, in pixels
whatever the line's units: the detector sees the frame letterboxed to its input, so the pixel wobble of its
boxes grows with the frame's longer side. ``band: 0`` is the exact rule: only a point on the line is on
neither side. Pure functions; no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DEFAULT_BAND_SHARE", "band_tolerance", "side_of_line"]

DEFAULT_BAND_SHARE = 0.006
"""A left-out ``band``: this share of the frame's longer side (3.84 px at 640x480): about the 95th percentile
(1.5 std) of the demo model's anchor wobble on dev clips (benchmarks/box_jitter.py; README: Events, zones and
counts)."""


def band_tolerance(
    start_px: NDArray[Any], end_px: NDArray[Any], band: float | None, units: str, frame_wh: tuple[int, int]
) -> float:
    """The bound on |d x (p - start)| (d = end - start, in pixels) within which a point p is on neither side
    of the line: |d| times the band in pixels, or the band measured in fractions of the frame; never under
    the exact rule's float tolerance (``band: 0``: only the line itself)."""
    dx, dy = float(end_px[0] - start_px[0]), float(end_px[1] - start_px[1])
    length = math.hypot(dx, dy)
    exact = 1e-9 * max(length, 1.0)
    w, h = frame_wh
    if band is None:
        tol = DEFAULT_BAND_SHARE * max(w, h) * length
    elif units == "fraction":
        tol = band * math.hypot(dx * h, dy * w)  # |d'| w h, d' the direction in fractions of the frame
    else:
        tol = band * length
    return max(tol, exact)


def side_of_line(
    anchors_xy: NDArray[Any], start: NDArray[Any], end: NDArray[Any], tol: float | None = None
) -> NDArray[np.int8]:
    """(n, 2) points -> (n,) +1 right of start->end on the image (the ``in`` side), -1 left, 0 on the line
    (or within ``tol``, a :func:`band_tolerance`; None: the exact rule)."""
    p = np.asarray(anchors_xy, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(start, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    d = e - s
    cross = d[0] * (p[:, 1] - s[1]) - d[1] * (p[:, 0] - s[0])
    if tol is None:
        tol = 1e-9 * max(float(np.hypot(*d)), 1.0)
    out: NDArray[np.int8] = np.where(cross > tol, 1, np.where(cross < -tol, -1, 0)).astype(np.int8)
    return out
