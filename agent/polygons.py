"""A mask's polygons: the outer contour of its largest 8-connected part, and (opt-in) every part and hole.

Polygon vertices are pixel indices, as ``cv2.findContours`` returns them, so ``cv2.fillPoly`` of a polygon
gives back its pixels. :class:`PolygonOptions` says what a decode writes: ``tolerance_px`` > 0 simplifies
every polygon (``cv2.approxPolyDP``, Douglas-Peucker: no vertex moves the outline more than that), 0 keeps
the contour exact (only straight runs merged, ``CHAIN_APPROX_SIMPLE``); ``rings`` adds :func:`mask_rings_at`,
every outer contour and hole of the mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["EXACT", "PolygonOptions", "Ring", "mask_polygon", "mask_polygon_at", "mask_rings_at"]

_CONTOUR_LOOP_MAX = 32  # parts per mask up to which the largest is picked in a plain loop

Ring = tuple[NDArray[np.float32], int]
"""One contour of a mask: ``(k, 2)`` float32 x, y vertices (k >= 3) and its parent: -1 for an outer contour
(a part), else the index of the outer contour (in the same list) whose hole it is."""


@dataclass(frozen=True, slots=True)
class PolygonOptions:
    """What a decode writes of each mask besides ``points``."""

    rings: bool = False  # every part and hole (Detections.rings), not only the largest part's outline
    tolerance_px: float = 0.0  # Douglas-Peucker tolerance for every polygon; 0 = the exact contour

    def __post_init__(self) -> None:
        if not self.tolerance_px >= 0.0:  # NaN too
            raise ValueError(f"tolerance_px must be >= 0, got {self.tolerance_px}")


EXACT = PolygonOptions()
"""The default: ``points`` only, exact contours."""


def _simplified(contour: NDArray[Any], tolerance_px: float) -> NDArray[Any]:
    """``contour`` simplified within ``tolerance_px``; the contour itself when that leaves under 3 vertices
    (a tolerance never drops a detection: a thin sliver keeps its exact outline)."""
    if tolerance_px <= 0.0 or contour.shape[0] <= 3:
        return contour
    simple = cv2.approxPolyDP(contour, tolerance_px, True)
    return simple if simple.shape[0] >= 3 else contour


def _covered_pixels(contours: Sequence[NDArray[np.integer[Any] | np.floating[Any]]]) -> NDArray[np.float64]:
    """Pixels inside each outer contour from ``cv2.findContours``, holes included, by Pick's theorem.

    Vertices are pixel centres; covered = area + boundary points / 2 + 1, where each straight (horizontal,
    vertical or diagonal) edge holds ``max(|dx|, |dy|)`` boundary points. Exact for simple contours, and
    right for the degenerate ones too (a 1-pixel line of n pixels, traced there and back, gives n). All
    contours at once, so a speckled mask with thousands of parts costs no Python loop.
    """
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    starts = np.cumsum(lengths) - lengths
    points = np.concatenate(contours).reshape(-1, 2).astype(np.float64)  # each contour is (k, 1, 2)
    following = np.arange(1, points.shape[0] + 1)
    following[starts + lengths - 1] = starts  # each contour closes on its first point
    nxt = points[following]
    boundary = np.add.reduceat(np.abs(nxt - points).max(axis=1), starts)
    twice_area = np.add.reduceat(points[:, 0] * nxt[:, 1] - nxt[:, 0] * points[:, 1], starts)
    return np.asarray(np.abs(twice_area) / 2 + boundary / 2 + 1, dtype=np.float64)


def mask_polygon(mask_hw: NDArray[np.generic], offset_xy: tuple[float, float] = (0.0, 0.0)) -> NDArray[np.float32]:
    """Outer contour of the mask's largest 8-connected part, as ``(k, 2)`` float32 x, y plus ``offset_xy``.

    The largest part is the one whose outer contour covers the most pixels (``_covered_pixels``), so a long
    1-pixel line does not beat a compact blob. Holes are ignored (outer contour only). Any nonzero value is
    inside. Returns ``(0, 2)`` when the mask is empty or the contour has fewer than 3 points (a single
    pixel, a straight 1-pixel line).
    """
    mask = np.asarray(mask_hw)
    if mask.ndim != 2:
        raise ValueError(f"mask_polygon: expected a 2-D mask, got shape {mask.shape}")
    if mask.size == 0:
        return np.zeros((0, 2), dtype=np.float32)
    if mask.dtype != np.uint8 or not mask.flags.c_contiguous:
        mask = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    offset_x, offset_y = float(offset_xy[0]), float(offset_xy[1])
    whole = offset_x.is_integer() and offset_y.is_integer() and max(abs(offset_x), abs(offset_y)) < 2**31
    polygon = mask_polygon_at(mask, int(offset_x) if whole else 0, int(offset_y) if whole else 0)
    if polygon is None:
        return np.zeros((0, 2), dtype=np.float32)
    if not whole:
        polygon += np.array([offset_x, offset_y], dtype=np.float32)
    return polygon


def mask_polygon_at(
    mask: NDArray[np.uint8], offset_x: int, offset_y: int, tolerance_px: float = 0.0
) -> NDArray[np.float32] | None:
    """``mask_polygon`` of a C-contiguous uint8 mask, shifted by a whole-pixel offset; None instead of an empty
    polygon. ``tolerance_px`` > 0: the outline simplified (:class:`PolygonOptions`); the largest part is
    chosen before, on the exact contours."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(offset_x, offset_y))
    if len(contours) == 0:
        return None
    if len(contours) == 1:
        largest = contours[0]
    elif len(contours) <= _CONTOUR_LOOP_MAX:
        # A few parts: the same count as _covered_pixels from the uncompressed contours (same parts, same
        # order), whose length is the boundary's point count: cheaper than the vectorised form for so few.
        full, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        covered = [cv2.contourArea(c) + (c.shape[0] if c.shape[0] > 1 else 0) / 2 for c in full]
        largest = contours[max(range(len(covered)), key=covered.__getitem__)]
    else:
        largest = contours[int(np.argmax(_covered_pixels(contours)))]
    if largest.shape[0] < 3:
        return None
    return _simplified(largest, tolerance_px).reshape(-1, 2).astype(np.float32)


def mask_rings_at(mask: NDArray[np.uint8], offset_x: int, offset_y: int, tolerance_px: float = 0.0) -> list[Ring]:
    """Every outer contour (part) and hole of a C-contiguous uint8 mask, shifted by a whole-pixel offset.

    Parts come largest first (pixels covered, holes included, as :func:`mask_polygon` picks the largest),
    each followed by its holes, largest first (parent = the part's index in the list); the first ring is
    :func:`mask_polygon_at`'s polygon (up to a tie in size). A part inside another part's hole is a part of
    its own. Contours of under 3 vertices (a single pixel, a 1-pixel line) are left out, a part with its
    holes. Empty list: nothing of 3 vertices in the mask. A hole's vertices are the mask pixels around it
    (OpenCV traces holes on the mask's own pixels), so its filled polygon covers the hole and that border:
    the part's pixels are
    ``fillPoly(part) - fillPoly(holes) + outline(holes)``.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(offset_x, offset_y))
    if len(contours) == 0:
        return []
    links = hierarchy.reshape(-1, 4)  # next, previous, first child, parent
    outers = [i for i in range(len(contours)) if links[i, 3] < 0 and contours[i].shape[0] >= 3]
    if not outers:
        return []
    covered = _covered_pixels([contours[i] for i in outers])
    rings: list[Ring] = []
    for rank in np.argsort(-covered, kind="stable").tolist():
        outer = outers[rank]
        parent = len(rings)
        rings.append((_simplified(contours[outer], tolerance_px).reshape(-1, 2).astype(np.float32), -1))
        holes: list[int] = []
        hole = int(links[outer, 2])
        while hole >= 0:
            if contours[hole].shape[0] >= 3:
                holes.append(hole)
            hole = int(links[hole, 0])
        if len(holes) > 1:
            sizes = _covered_pixels([contours[h] for h in holes])
            holes = [holes[k] for k in np.argsort(-sizes, kind="stable").tolist()]
        for hole in holes:
            rings.append((_simplified(contours[hole], tolerance_px).reshape(-1, 2).astype(np.float32), parent))
    return rings
