"""A mask's polygon: the outer contour of its largest 8-connected part.

Polygon vertices are pixel indices, as ``cv2.findContours`` returns them, so ``cv2.fillPoly`` of a polygon
gives back its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["mask_polygon", "mask_polygon_at"]

_CONTOUR_LOOP_MAX = 32  # parts per mask up to which the largest is picked in a plain loop


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


def mask_polygon_at(mask: NDArray[np.uint8], offset_x: int, offset_y: int) -> NDArray[np.float32] | None:
    """``mask_polygon`` of a C-contiguous uint8 mask, shifted by a whole-pixel offset; None instead of an empty
    polygon."""
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
    return largest.reshape(-1, 2).astype(np.float32)
