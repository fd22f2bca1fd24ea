"""Instance masks sampled at frame pixel centres: the one mask path every format's decoder calls.

Two kinds of mask, both thresholded and bounded by where they can be non-empty (nothing of size (n, H, W)
is ever allocated):

* prototype masks (the YOLO formats): ``sigmoid(coeffs . prototypes)`` over the prototype cells under each
  box, sampled at the box's frame pixels, 1 where above 0.5 (:func:`proto_masks_in_boxes`, one box:
  :func:`mask_in_box`, :func:`proto_mask_in_box`);
* full-resolution logit masks (RF-DETR): logits over the input, sampled over the frame pixels whose
  bilinear taps reach a positive cell, 1 where above 0 (:func:`logit_mask`).

Sampling is bilinear, in one step from the grid to frame pixels through the :class:`~agent.placement.Placement`.
Two sampling rules, kept as each decoder has always sampled (they differ by under a pixel at the content's
edge and in OpenCV's 1/32-cell rounding, so one for all would change masks beyond float rounding):

* the Ultralytics letterbox decode (``fast_letterbox=True``): pixels whose centres map outside the content
  repeat the nearest one inside, exact bilinear weights; made fast by ``_LetterboxPlans`` (``cv2.resize``
  when a prototype cell is a whole number of pixels, else two matmuls with cached per-axis weight tables, or
  ``cv2.warpAffine`` for big crops);
* every other placement: centres clamped to the content (:func:`~agent.placement.sample_positions`),
  ``cv2.remap``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.placement import (
    LetterboxParams,
    Placement,
    centre_inside_range,
    check_hw,
    letterbox_placement,
    pixel_bounds_xyxy,
    sample_positions,
)

__all__ = [
    "logit_mask",
    "logit_masks",
    "mask_in_box",
    "proto_mask_in_box",
    "proto_masks_in_boxes",
    "sigmoid",
    "sigmoid_inplace",
]

_MASK_THRESHOLD = 0.5
_LOGIT_CLIP = 50.0  # sigmoid(±50) is 0/1 in float32; clipping keeps np.exp from overflowing
_SEPARABLE_MAX_CELLS = 64  # crops up to this many prototype cells a side resample by two matmuls, not warpAffine

_Sizes = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # input_hw, frame_hw, grid_hw
_Crops = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def sigmoid_inplace(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """``1 / (1 + exp(-x))`` in float32, in place (``x`` is overwritten and returned)."""
    np.minimum(x, _LOGIT_CLIP, out=x)
    np.maximum(x, -_LOGIT_CLIP, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


def sigmoid(x: NDArray[Any]) -> NDArray[np.float32]:
    """``1 / (1 + exp(-x))`` as a new float32 array (``x`` is left as it is)."""
    return sigmoid_inplace(np.array(x, dtype=np.float32))


def _cell_span(
    first: NDArray[np.float64], last: NDArray[np.float64], cells: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per span: cells ``[g0, g1)`` that bilinear samples at positions ``first..last`` read (clamped to the
    grid, at least one): ``floor(first) .. floor(last) + 1``, no more (each cell costs a matmul row, a
    sigmoid and its resampled pixels)."""
    g0 = np.minimum(np.maximum(np.floor(first), 0), cells - 1)
    g1 = np.maximum(np.minimum(np.floor(last) + 2, cells), g0 + 1)
    return g0, g1


class _Plans:
    """Where each box's mask is sampled, for all boxes at once (plain ints, one row per box).

    ``bounds``: the box's frame pixels (``pixel_bounds_xyxy``); ``crop``: ``gx0, gx1, gy0, gy1``, the grid
    cells its samples read. Subclasses resample a crop's probabilities to the box's pixels.
    """

    def __init__(
        self,
        boxes_xyxy: NDArray[np.floating[Any]],
        placement: Placement,
        input_hw: tuple[int, int],
        frame_hw: tuple[int, int],
        grid_hw: tuple[int, int],
    ) -> None:
        bounds = pixel_bounds_xyxy(boxes_xyxy, frame_hw)
        self.bounds: list[list[int]] = bounds.tolist()
        crop = self._plan(bounds, placement, (input_hw, frame_hw, grid_hw))
        self.crop: list[list[int]] = np.stack(crop, axis=1).astype(np.int64).tolist()

    def _plan(self, bounds: NDArray[np.int64], placement: Placement, sizes: _Sizes) -> _Crops:
        """Plans the boxes' sampling; returns their crops, ``gx0, gx1, gy0, gy1``."""
        raise NotImplementedError

    def probabilities(
        self, rows: Sequence[int], coeffs_nm: NDArray[np.float32], protos_chw: NDArray[np.float32]
    ) -> list[NDArray[np.float32]]:
        """``sigmoid(coeffs . prototypes)`` over each row's crop, as views into one buffer.

        One matmul per crop written straight into the buffer, then one sigmoid for all of them: the
        sigmoid's five NumPy calls are paid once per frame instead of once per instance.
        """
        num_masks = protos_chw.shape[0]
        shapes = [(self.crop[r][3] - self.crop[r][2], self.crop[r][1] - self.crop[r][0]) for r in rows]
        ends = np.cumsum([h * w for h, w in shapes]).tolist()
        flat = np.empty(ends[-1] if ends else 0, dtype=np.float32)
        start = 0
        for r, end in zip(rows, ends, strict=True):
            gx0, gx1, gy0, gy1 = self.crop[r]
            crop = protos_chw[:, gy0:gy1, gx0:gx1].reshape(num_masks, -1)
            np.matmul(coeffs_nm[r], crop, out=flat[start:end])
            start = end
        sigmoid_inplace(flat)
        return [flat[b - h * w : b].reshape(h, w) for b, (h, w) in zip(ends, shapes, strict=True)]

    def resample(self, row: int, probs: NDArray[np.float32]) -> NDArray[np.uint8]:
        raise NotImplementedError


class _PlacedPlans(_Plans):
    """Any placement: samples at :func:`~agent.placement.sample_positions` (centres clamped to the content),
    by ``cv2.remap``. The positions depend on the pixel only, so they are worked out once per frame."""

    def _plan(self, bounds: NDArray[np.int64], placement: Placement, sizes: _Sizes) -> _Crops:
        (input_h, input_w), (frame_h, frame_w), (grid_h, grid_w) = sizes
        self.cols = sample_positions(0, frame_w, "x", placement, grid_w, input_w)
        self.rows = sample_positions(0, frame_h, "y", placement, grid_h, input_h)
        x0, y0, x1, y1 = bounds.T
        # An empty box reads nothing; its (clamped) indices only keep the lookups in range.
        gx0, gx1 = _cell_span(self.cols[np.minimum(x0, frame_w - 1)], self.cols[np.maximum(x1 - 1, 0)], grid_w)
        gy0, gy1 = _cell_span(self.rows[np.minimum(y0, frame_h - 1)], self.rows[np.maximum(y1 - 1, 0)], grid_h)
        return gx0, gx1, gy0, gy1

    def resample(self, row: int, probs: NDArray[np.float32]) -> NDArray[np.uint8]:
        x0, y0, x1, y1 = self.bounds[row]
        gx0, _, gy0, _ = self.crop[row]
        values = _remap(probs, self.cols[x0:x1] - np.float32(gx0), self.rows[y0:y1] - np.float32(gy0))
        return np.greater(values, _MASK_THRESHOLD).view(np.uint8)


class _LetterboxPlans(_Plans):
    """The Ultralytics letterbox (no crop): samples at the pixel centres' own positions, exact bilinear.

    Frame pixel centre ``u + 0.5`` maps to input ``x = (u + 0.5) * scale + pad``, then to prototype index
    ``x / stride - 0.5``. Per box, besides ``bounds`` and ``crop``: ``span`` = the part of the bounds whose
    centres map inside the letterboxed content (``_sampled_spans``; the rest repeats its nearest sampled row
    or column); ``origin`` = the prototype coordinates of the first sample, relative to the crop.

    Resampling: samples are ``1 / step`` frame pixels per prototype cell. When that is a whole number ``q``
    and the first sample falls on the grid of ``cv2.resize`` by ``q`` (the usual case: frame sizes whose
    letterbox scale is 1/k, such as 640x480, 1280x720 and 1920x1080 into 320 or 640), the crop is upsampled
    by ``cv2.resize`` and the box's window is cut from it at ``resize_at``: the same samples, exactly.
    Otherwise (a 416 model, odd frame sizes) bilinear sampling is separable: the box's mask is
    ``Wy @ probs @ Wx.T``, where row ``u`` of ``Wx`` holds frame column ``u``'s two interpolation weights over
    the prototype columns (``_axis_weights``; band columns repeat the nearest sampled one), cut to the box's
    pixels and the crop's cells: two small matmuls, 1.4-3x cheaper than ``cv2.warpAffine`` for crops up to
    ``_SEPARABLE_MAX_CELLS`` a side, which keeps the rest (a matmul pays for every cell of the crop in each
    output pixel).
    """

    def _plan(self, bounds: NDArray[np.int64], placement: Placement, sizes: _Sizes) -> _Crops:
        (input_h, input_w), (frame_h, frame_w), (proto_h, proto_w) = sizes
        p = placement
        x0, y0, x1, y1 = bounds.astype(np.float64).T
        xa, xb = _sampled_spans(x0, x1, p.scale_x, p.content_w)
        ya, yb = _sampled_spans(y0, y1, p.scale_y, p.content_h)
        self.step_x = p.scale_x * proto_w / input_w
        self.step_y = p.scale_y * proto_h / input_h
        src_xa = ((xa + 0.5) * p.scale_x + p.pad_x) * proto_w / input_w - 0.5
        src_ya = ((ya + 0.5) * p.scale_y + p.pad_y) * proto_h / input_h - 0.5
        gx0, gx1 = _cell_span(src_xa, src_xa + self.step_x * (xb - xa), proto_w)
        gy0, gy1 = _cell_span(src_ya, src_ya + self.step_y * (yb - ya), proto_h)
        self._geometry_y = (frame_h, p.scale_y, p.pad_y, p.content_h, proto_h, input_h)
        self._geometry_x = (frame_w, p.scale_x, p.pad_x, p.content_w, proto_w, input_w)
        self.span: list[list[int]] = np.stack([xa, xb, ya, yb], axis=1).astype(np.int64).tolist()
        self.origin: list[list[float]] = np.stack([src_xa - gx0, src_ya - gy0], axis=1).tolist()
        # cv2.resize by q maps output pixel d to (d + 0.5) / q - 0.5: the first sample is output pixel
        # q * (src + 0.5) - 0.5 - q * crop_start, when that is a whole number.
        self.q = (_whole_reciprocal(self.step_x), _whole_reciprocal(self.step_y))
        self.resize_at: list[tuple[int, int] | None] = [None] * bounds.shape[0]
        qx, qy = self.q
        if qx and qy:
            first_x = qx * (src_xa + 0.5) - 0.5
            first_y = qy * (src_ya + 0.5) - 0.5
            at_x = np.round(first_x) - qx * gx0
            at_y = np.round(first_y) - qy * gy0
            fits = (
                (np.abs(first_x - np.round(first_x)) < 1e-6)
                & (np.abs(first_y - np.round(first_y)) < 1e-6)
                & (at_x >= 0)
                & (at_y >= 0)
                & (at_x + (xb - xa + 1) <= qx * (gx1 - gx0))
                & (at_y + (yb - ya + 1) <= qy * (gy1 - gy0))
            )
            for row in np.flatnonzero(fits).tolist():
                self.resize_at[row] = (int(at_x[row]), int(at_y[row]))
        return gx0, gx1, gy0, gy1

    @functools.cached_property
    def _tables(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The frame's per-axis interpolation tables (y, x): looked up once per frame, only if a box needs them."""
        return _axis_weights(*self._geometry_y), _axis_weights(*self._geometry_x)

    def resample(self, row: int, probs: NDArray[np.float32]) -> NDArray[np.uint8]:
        """Box ``row``'s mask over its (non-empty) bounds from its crop's probabilities: 1 inside, 0 outside."""
        x0, y0, x1, y1 = self.bounds[row]
        xa, xb, ya, yb = self.span[row]
        gx0, gx1, gy0, gy1 = self.crop[row]
        at = self.resize_at[row]
        if at is not None:
            qx, qy = self.q
            upsampled = cv2.resize(probs, (qx * (gx1 - gx0), qy * (gy1 - gy0)), interpolation=cv2.INTER_LINEAR)
            resampled = upsampled[at[1] : at[1] + yb - ya + 1, at[0] : at[0] + xb - xa + 1]
        elif max(gx1 - gx0, gy1 - gy0) <= _SEPARABLE_MAX_CELLS:
            # The weights already repeat the nearest sampled row / column in the edge bands: the whole box.
            table_y, table_x = self._tables
            weights_y = table_y[y0:y1, gy0:gy1]
            weights_x = table_x[x0:x1, gx0:gx1]
            # NumPy's BLAS: single-threaded in the agent (runtime.limit_helper_threads), else its idle workers spin.
            return np.greater((weights_y @ probs) @ weights_x.T, _MASK_THRESHOLD).view(np.uint8)
        else:
            tx, ty = self.origin[row]
            warp = np.array([[self.step_x, 0.0, tx], [0.0, self.step_y, ty]], dtype=np.float64)
            resampled = cv2.warpAffine(
                probs,
                warp,
                (xb - xa + 1, yb - ya + 1),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
        mask: NDArray[np.uint8] = np.greater(resampled, _MASK_THRESHOLD).view(np.uint8)
        if xa == x0 and xb == x1 - 1 and ya == y0 and yb == y1 - 1:
            return mask
        # Edge bands repeat the nearest sampled row / column.
        if x0 <= xa and xb < x1 and y0 <= ya and yb < y1:
            return np.asarray(
                cv2.copyMakeBorder(mask, ya - y0, y1 - 1 - yb, xa - x0, x1 - 1 - xb, cv2.BORDER_REPLICATE),
                dtype=np.uint8,
            )
        # A box lying wholly in an edge band: its nearest sampled pixel is outside it.
        rows = np.clip(np.arange(y0, y1), ya, yb) - ya
        cols = np.clip(np.arange(x0, x1), xa, xb) - xa
        return np.ascontiguousarray(mask[np.ix_(rows, cols)])


@functools.lru_cache(maxsize=8)
def _axis_weights(
    frame_len: int, scale: float, pad: int, content_len: int, proto_len: int, input_len: int
) -> NDArray[np.float32]:
    """``(frame_len, proto_len)``, read-only: row ``u`` holds the linear-interpolation weights (two nonzero,
    summing to 1) of frame pixel ``u``'s sample on the prototype axis.

    The sample is pixel centre ``u + 0.5`` mapped through the letterbox, ``((u + 0.5) * scale + pad) / stride
    - 0.5`` in prototype cells, for the pixels whose centres map inside the content; the others (the edge
    bands, ``_sampled_spans``) repeat the nearest one's row; samples are clamped to the prototype grid (as
    ``cv2.BORDER_REPLICATE``). Cached: one geometry per camera, a frame size changes rarely.
    """
    pixel = np.arange(frame_len, dtype=np.float64)
    lo, hi = centre_inside_range(scale, content_len)
    if lo <= hi:
        pixel = np.clip(pixel, lo, hi)
    position = np.clip(((pixel + 0.5) * scale + pad) * proto_len / input_len - 0.5, 0.0, proto_len - 1.0)
    left = np.minimum(np.floor(position), max(proto_len - 2, 0)).astype(np.intp)
    right_weight = position - left
    weights = np.zeros((frame_len, proto_len), dtype=np.float32)
    every = np.arange(frame_len)
    weights[every, left] = 1.0 - right_weight
    if proto_len > 1:
        weights[every, left + 1] += right_weight
    weights.setflags(write=False)
    return weights


def _whole_reciprocal(step: float) -> int:
    """``q`` when ``1 / step`` is the whole number ``q`` (to rounding), else 0."""
    if not step > 0:
        return 0
    q = round(1.0 / step)
    return q if q >= 1 and abs(q * step - 1.0) < 1e-9 else 0


def _sampled_spans(
    start: NDArray[np.float64], stop: NDArray[np.float64], scale: float, content: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per span: frame pixels ``[first, last]`` of ``[start, stop)`` whose centres map inside the letterboxed content.

    Pixels mapping outside it (at most about ``0.5 / scale`` at each frame edge; ``centre_inside_range``) take
    the value of the nearest one inside, as upsampling the unpadded input would.
    """
    lo, hi = centre_inside_range(scale, content)
    first = np.maximum(start, lo)
    last = np.minimum(stop - 1, hi)
    band = first > last  # the whole span lies in one edge band: sample its nearest valid pixel only
    if band.any():
        nearest = np.minimum(np.maximum(start, lo), hi) if lo <= hi else start
        first = np.where(band, nearest, first)
        last = np.where(band, nearest, last)
    return first, last


def _remap(grid_hw: NDArray[np.float32], cols: NDArray[np.float32], rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Bilinear samples of ``grid_hw`` at every ``(rows[i], cols[j])`` (cell centres at integers, edges clamped)."""
    map_x = np.ascontiguousarray(np.broadcast_to(cols[np.newaxis, :], (rows.size, cols.size)))
    map_y = np.ascontiguousarray(np.broadcast_to(rows[:, np.newaxis], (rows.size, cols.size)))
    sampled = cv2.remap(grid_hw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(sampled, dtype=np.float32).reshape(rows.size, cols.size)


def proto_masks_in_boxes(
    coeffs_nm: NDArray[np.floating[Any]],
    protos_chw: NDArray[np.floating[Any]],
    boxes_xyxy: NDArray[np.floating[Any]],
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    *,
    fast_letterbox: bool = False,
) -> Iterator[tuple[int, NDArray[np.uint8], int, int]]:
    """``(row, mask_hw, x0, y0)`` per box whose pixel bounds are not empty, in row order.

    ``mask_hw`` (uint8, 1 inside, 0 outside) covers the frame pixels ``pixel_bounds_xyxy`` of box ``row``,
    top-left ``(x0, y0)``: ``sigmoid(coeffs_nm[row] . prototypes)`` over the prototype cells its samples read,
    sampled at those pixels' centres, threshold 0.5. ``fast_letterbox``: the letterbox decode's sampling rule
    (see the module doc; the placement must be an uncropped one, :func:`~agent.placement.letterbox_placement`).
    Memory is bounded by the boxes, whatever the frame size.
    """
    protos = np.asarray(protos_chw, dtype=np.float32)
    grid_hw = (int(protos.shape[1]), int(protos.shape[2]))
    plans: _Plans = (_LetterboxPlans if fast_letterbox else _PlacedPlans)(
        boxes_xyxy, placement, input_hw, frame_hw, grid_hw
    )
    rows_in = [row for row, (x0, y0, x1, y1) in enumerate(plans.bounds) if x1 > x0 and y1 > y0]
    coeffs = np.ascontiguousarray(coeffs_nm, dtype=np.float32)
    for row, probs in zip(rows_in, plans.probabilities(rows_in, coeffs, protos), strict=True):
        x0, y0 = plans.bounds[row][0:2]
        yield row, plans.resample(row, probs), x0, y0


def _only_mask(
    masks: Iterator[tuple[int, NDArray[np.uint8], int, int]], box: NDArray[np.float64], frame_hw: tuple[int, int]
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """The one box's ``(mask_hw, (x0, y0))``; an all-zero mask of its bounds' size when they are empty."""
    for _, mask, x0, y0 in masks:
        return mask, (x0, y0)
    x0, y0, x1, y1 = pixel_bounds_xyxy(box, frame_hw)[0].tolist()
    return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8), (x0, y0)


def mask_in_box(
    coeffs: NDArray[np.floating],
    protos_chw: NDArray[np.floating],
    box_xyxy: NDArray[np.floating],
    params: LetterboxParams,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """One instance's mask under the Ultralytics letterbox, decoded only over its box: ``(mask_hw, (x0, y0))``.

    ``mask_hw`` (uint8, 1 inside, 0 outside) covers the frame pixels ``box_pixel_bounds(box_xyxy,
    frame_hw)``, whose top-left is ``(x0, y0)``. This samples like upsampling the prototypes to the input size,
    cropping the padding and resizing to the frame (Ultralytics' ``scale_masks``), including at the frame's
    edges, where samples are clamped to the content and never read the padding.
    """
    input_hw, frame_hw = check_hw("input_hw", input_hw), check_hw("frame_hw", frame_hw)
    placement = letterbox_placement(params, frame_hw, input_hw)
    box, coeffs_1xm = np.asarray(box_xyxy, dtype=np.float64).reshape(1, 4), np.reshape(coeffs, (1, -1))
    masks = proto_masks_in_boxes(coeffs_1xm, protos_chw, box, placement, input_hw, frame_hw, fast_letterbox=True)
    return _only_mask(masks, box, frame_hw)


def proto_mask_in_box(
    coeffs: NDArray[np.floating[Any]],
    protos_chw: NDArray[np.floating[Any]],
    box_xyxy: NDArray[np.floating[Any]],
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """A YOLO instance mask over its box only, under any placement: ``(mask_hw, (x0, y0))``, 1 inside, 0 outside.

    sigmoid(coeffs . prototypes) on the prototype cells under the box, sampled at the box's frame pixel
    centres through the placement, threshold 0.5; ``mask_hw`` covers ``box_pixel_bounds(box_xyxy)``.
    """
    frame_hw = check_hw("frame_hw", frame_hw)
    box, coeffs_1xm = np.asarray(box_xyxy, dtype=np.float64).reshape(1, 4), np.reshape(coeffs, (1, -1))
    return _only_mask(proto_masks_in_boxes(coeffs_1xm, protos_chw, box, placement, input_hw, frame_hw), box, frame_hw)


def _positive_span(positions: NDArray[np.float32], first: int, last: int) -> tuple[int, int]:
    """Indices ``[a, b)`` of the (sorted) sample positions whose bilinear taps can reach cells first..last."""
    cells = np.floor(positions)
    a = int(np.searchsorted(cells, first - 1, side="left"))
    b = int(np.searchsorted(cells, last, side="right"))
    return a, b


def logit_mask(
    logits_hw: NDArray[np.floating[Any]], placement: Placement, input_hw: tuple[int, int], frame_hw: tuple[int, int]
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """An RF-DETR instance mask (logits over the input at ``h x w``): ``(mask_hw, (x0, y0))``, logit > 0 inside.

    Bilinear upsampling to the frame, as RF-DETR's post-processing and Roboflow's server do, but evaluated
    only over the frame pixels whose taps reach a positive cell (a sample of a bilinear interpolation can
    only be positive next to a positive cell), inside the used part of the frame.
    """
    logits = np.asarray(logits_hw, dtype=np.float32)
    positive = logits > 0
    if not positive.any():
        return np.zeros((0, 0), dtype=np.uint8), (0, 0)
    grid_h, grid_w = logits.shape
    p = placement
    fx0, fx1 = p.offset_x, min(p.offset_x + p.crop_w, frame_hw[1])
    fy0, fy1 = p.offset_y, min(p.offset_y + p.crop_h, frame_hw[0])
    cols = sample_positions(fx0, fx1, "x", placement, grid_w, input_hw[1])
    rows = sample_positions(fy0, fy1, "y", placement, grid_h, input_hw[0])
    pos_cols, pos_rows = np.flatnonzero(positive.any(axis=0)), np.flatnonzero(positive.any(axis=1))
    a, b = _positive_span(cols, int(pos_cols[0]), int(pos_cols[-1]))
    c, d = _positive_span(rows, int(pos_rows[0]), int(pos_rows[-1]))
    if b <= a or d <= c:
        return np.zeros((0, 0), dtype=np.uint8), (fx0, fy0)
    values = _remap(logits, cols[a:b], rows[c:d])
    return np.greater(values, 0.0).view(np.uint8), (fx0 + a, fy0 + c)


def logit_masks(
    masks_qhw: NDArray[np.floating[Any]],
    queries: NDArray[np.integer[Any]],
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> Iterator[tuple[int, NDArray[np.uint8], int, int]]:
    """``(row, mask_hw, x0, y0)``: :func:`logit_mask` of ``masks_qhw[queries[row]]``, for every row."""
    for row, query in enumerate(np.asarray(queries).tolist()):
        mask_hw, (x0, y0) = logit_mask(masks_qhw[query], placement, input_hw, frame_hw)
        yield row, mask_hw, x0, y0
