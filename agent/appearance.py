"""Appearance for the tracker: each detection's mean colour inside its mask, and the gate on it.

Two objects of one class that cross swap ids when only boxes are compared: their boxes overlap, their
predictions cross. Their colours rarely agree, so the tracker (:mod:`agent.tracking`) refuses a match whose
colours differ by more than ``tracking.appearance_gate`` (BGR euclidean distance, 0-441).

- :func:`mean_bgr_n3`: (n, 3) mean B, G, R inside each polygon, computed on the box's crop taken with a
  stride (at most :data:`_MAX_SIDE` samples a side), so its cost does not grow with the object's size; the
  samples of every box gathered and summed at once (only the polygons are drawn one by one);
  ``NaN`` where nothing of the box is in the image (no gating for that detection).
- :func:`colour_far_nm`: (n, m) whether a track's colour and a detection's differ by more than the gate
  (``False`` where either is unknown: an unknown colour never refuses a match).
- :func:`blend_colour_n3`: a track's colour after a match (0.7 old + 0.3 new; an unknown old takes the new).
- :func:`colour_needed_m` and :func:`lazy_colours_m3`: colours measured only where the gate could change a
  match (most detections of a steady scene continue the one track they overlap: their colours are skipped,
  and each track's colour is sampled again every :data:`COLOUR_EVERY` matches); :func:`colours_of_image`
  measures them from a frame's pixels on demand.

Pure NumPy/OpenCV functions, no state; importing this module has no side effects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "COLOUR_EVERY",
    "ColoursOf",
    "blend_colour_n3",
    "colour_far_nm",
    "colour_needed_m",
    "colours_of_image",
    "lazy_colours_m3",
    "mean_bgr_n3",
    "polygons_of",
]

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]
ColoursOf = Callable[[I64], F64]  # the (k, 3) colours of the detections at these k indices
COLOUR_EVERY = 5  # a track matched this many times without a colour sample has its colour measured again

_MAX_SIDE = 16  # samples per side of a box's crop: 256 pixels at most per detection
_BLEND = 0.3  # how far a track's colour moves towards its new detection's


def polygons_of(predictions: Sequence[dict[str, Any]]) -> list[F64]:
    """Each API prediction's ``points`` as a (k, 2) array (k = 0 when it has none)."""
    out = []
    for p in predictions:
        points = p.get("points") or ()
        xy = getattr(points, "xy", None)  # agent.results.Points: already an array
        if xy is None:
            xy = [(float(q["x"]), float(q["y"])) for q in points]
        out.append(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
    return out


def mean_bgr_n3(image_hwc: U8, polygons: Sequence[F64], boxes_xyxy: F64, scale: float = 1.0) -> F64:
    """(n, 3) mean colour of ``image_hwc`` (H, W, 3) inside each polygon (k, 2) of ``polygons``, their
    boxes ``boxes_xyxy`` (n, 4); both in frame pixels, times ``scale`` on the image (``scale`` < 1: an image
    decoded at a reduced size). A polygon of fewer than
    3 points, or one too thin to cover a sample, falls back to the middle half of its box; a box outside the
    image gives ``NaN``.

    Each box is read as a grid of at most :data:`_MAX_SIDE` samples a side (its crop taken with a stride):
    its polygon drawn into its own tile of one (k, 16, 16) mask (``cv2.fillPoly`` on a view of the tile: the
    same samples as on a crop-sized mask), then the samples inside every mask gathered from the image in one
    indexing pass and the means taken as ``cv2.mean`` does (the exact integer sums times ``1 / count``): the
    same colours, bit for bit, as a crop, a mask and ``cv2.mean`` per detection."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4) * scale
    n = len(boxes)
    if len(polygons) != n:
        raise ValueError("one polygon per box")
    out = np.full((n, 3), np.nan)
    h, w = image_hwc.shape[:2]
    clipped = np.minimum(np.maximum(boxes, 0.0), (w, h, w, h))  # np.clip's values, without its overhead
    corners = np.concatenate([np.floor(clipped[:, :2]), np.ceil(clipped[:, 2:])], axis=1).astype(np.int64)
    # per box, in plain integers (a few boxes: cheaper than arrays): its strided crop's step and size
    kept: list[int] = []
    grids = []  # (samples across, samples down)
    frames = []  # (x0, y0, step, 16 / step): where its samples are
    for i, (x0, y0, x1, y1) in enumerate(corners.tolist()):
        if x1 > x0 and y1 > y0:
            step = max(1, -(-max(x1 - x0, y1 - y0) // _MAX_SIDE))
            kept.append(i)
            grids.append((-(-(x1 - x0) // step), -(-(y1 - y0) // step)))
            frames.append((x0, y0, step, 16 / step))
    if not kept:
        return out
    per_box = np.array(frames, dtype=np.float64)
    masks = _polygon_masks_k([polygons[i] for i in kept], per_box, grids, scale)
    # the samples inside the masks, gathered from the image at once: sample (r, c) of box j is the pixel
    # (y0 + step r, x0 + step c); their sums per box are exact integers, divided as cv2.mean does
    flat = np.flatnonzero(masks)
    counts = np.bincount(flat >> 8, minlength=len(kept))  # _MAX_SIDE == 16: 256 samples a box, 16 a row
    if not counts.all():  # rare: no polygon, or one too thin to cover a sample: the middle half of the box
        for j in np.flatnonzero(counts == 0).tolist():
            cw, ch = grids[j]
            masks[j, ch // 4 : max(ch // 4 + 1, (3 * ch + 3) // 4), cw // 4 : max(cw // 4 + 1, (3 * cw + 3) // 4)] = 1
        flat = np.flatnonzero(masks)
        counts = np.bincount(flat >> 8, minlength=len(kept))
    box = flat >> 8
    origin = (per_box[:, 1] * w + per_box[:, 0]).astype(np.int64)
    at = origin[box] + per_box[:, 2].astype(np.int64)[box] * (((flat >> 4) & 15) * w + (flat & 15))
    if image_hwc.flags.c_contiguous:  # a view of the pixels as rows: one gather of whole pixels
        pixels = image_hwc.reshape(h * w, -1).take(at, axis=0)
    else:
        pixels = image_hwc[at // w, at % w]
    sums = np.add.reduceat(pixels[:, :3], np.cumsum(counts) - counts, axis=0, dtype=np.int64)
    out[kept] = sums * (1.0 / counts)[:, None]
    return out


def _polygon_masks_k(
    polygons: Sequence[F64], per_box: F64, grids: Sequence[tuple[int, int]], scale: float
) -> npt.NDArray[np.uint8]:
    """(k, 16, 16) each box's polygon drawn on its sample grid (its top-left tile of ``grids``' size, samples
    across and down), to 1/16 of a sample (``fillPoly``'s shift 4); ``per_box``: (k, 4) each box's crop
    corner x0, y0, step and 16 / step. A polygon of fewer than 3 points leaves its tile empty."""
    tiles = np.zeros((len(polygons), _MAX_SIDE, _MAX_SIDE), dtype=np.uint8)
    sizes = [len(p) if len(p) >= 3 else 0 for p in polygons]
    if not any(sizes):
        return tiles
    xy = np.concatenate([p for p, k in zip(polygons, sizes, strict=True) if k], dtype=np.float64)
    centres = (xy + 0.5) * scale - 0.5  # pixel centres onto the image
    frame = np.repeat(per_box, sizes, axis=0)  # each point's box
    centres -= frame[:, :2]  # from its box's corner ...
    centres *= frame[:, 3:]  # ... in 1/16 of its box's samples
    pts = np.rint(centres).astype(np.int32)
    end = 0
    for j, (k, (cw, ch)) in enumerate(zip(sizes, grids, strict=True)):
        if k:  # a view of the tile: fillPoly draws into it clipped to the crop's size
            end += k
            cv2.fillPoly(tiles[j, :ch, :cw], [pts[end - k : end]], 1, cv2.LINE_8, 4)
    return tiles


def colour_far_nm(tracks_n3: F64, dets_m3: F64, gate: float) -> npt.NDArray[np.bool_]:
    """(n, m) True where track ``i``'s colour and detection ``j``'s are known and further apart than ``gate``
    (0: the gate is off, all False)."""
    a = np.asarray(tracks_n3, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(dets_m3, dtype=np.float64).reshape(-1, 3)
    far = np.zeros((len(a), len(b)), dtype=bool)
    known = np.nonzero(~np.isnan(b).any(axis=1))[0]  # lazily measured: most detections' colours unknown
    if gate > 0.0 and len(known):
        # the squares summed channel by channel, in the order a sum over the (n, k, 3) differences takes
        # them (the same distances, without the 3-wide arrays)
        bk = b[known].T
        d = a[:, 0:1] - bk[0]
        square = d * d
        for c in (1, 2):
            d = np.subtract(a[:, c : c + 1], bk[c], out=d)
            square += d * d
        far[:, known] = np.sqrt(square, out=square) > gate  # NaN compares False: unknown never refuses
    return far


def blend_colour_n3(old_n3: F64, new_n3: F64) -> F64:
    """(n, 3) colours after a match: ``old`` moved :data:`_BLEND` of the way to ``new``; where ``old`` is
    unknown, ``new``; where ``new`` is unknown, ``old``."""
    old = np.asarray(old_n3, dtype=np.float64).reshape(-1, 3)
    new = np.asarray(new_n3, dtype=np.float64).reshape(-1, 3)
    blended = (1.0 - _BLEND) * old + _BLEND * new
    blended = np.where(np.isnan(old), new, blended)
    return np.where(np.isnan(new), old, blended)


def colour_needed_m(candidate_nm: npt.NDArray[np.bool_], fresh_n: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """(m,) detections whose colour the gate could use. ``candidate_nm``: (tracks, detections) pairs the
    box stages could match; ``fresh_n``: tracks whose colour is known and recent, seen in the last update.
    A detection is skipped only when it is the one candidate of a fresh track that is its one candidate: the
    box match is certain unless the colours differ, which a fresh colour of the same object rarely does."""
    cand = np.asarray(candidate_nm, dtype=bool)
    sole = cand & (cand.sum(axis=1) == 1)[:, None] & (cand.sum(axis=0) == 1)[None, :]
    skipped: npt.NDArray[np.bool_] = (sole & np.asarray(fresh_n, dtype=bool)[:, None]).any(axis=0)
    return ~skipped


def lazy_colours_m3(colours_of: ColoursOf, candidate_nm: B, fresh_n: B, wanted_m: B) -> F64:
    """(m, 3) colours, asked of ``colours_of`` (once, for the indices needed) for the detections ``wanted_m``
    that :func:`colour_needed_m` finds needed; NaN (unknown: no gating, the track's colour kept) elsewhere."""
    out = np.full((len(wanted_m), 3), np.nan)
    index = np.nonzero(colour_needed_m(candidate_nm, fresh_n) & wanted_m)[0]
    if len(index):
        got = np.asarray(colours_of(index), dtype=np.float64)
        if got.shape != (len(index), 3):
            raise ValueError(f"colours_of gave {got.shape} for {len(index)} detections, need ({len(index)}, 3)")
        out[index] = got
    return out


def colours_of_image(image_hwc: U8, predictions: Sequence[dict[str, Any]], boxes_xyxy: F64, scale: float) -> ColoursOf:
    """:func:`mean_bgr_n3` of the predictions at the indices asked, from ``image_hwc`` (on demand)."""

    def colours_of(index: I64) -> F64:
        chosen = [predictions[i] for i in index.tolist()]
        return mean_bgr_n3(image_hwc, polygons_of(chosen), np.asarray(boxes_xyxy)[index], scale)

    return colours_of
