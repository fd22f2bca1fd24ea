"""Pure post-processing for Ultralytics YOLOv8 / YOLO11 ``-seg`` ONNX outputs.

Everything here is a function of its arguments: no I/O, no state. The way of one frame::

    letterbox(frame) -> session.run -> decode_yolov8_seg(output0, protos, ...) -> Detections

``decode_yolov8_seg`` is made of the smaller helpers below, each usable (and tested) on its own.

Conventions:

* Array names say their layout: ``boxes_xyxy`` is ``(n, 4)`` corners, ``boxes_xywh`` is ``(n, 4)`` centre x,
  centre y, width, height, ``mask_hw`` is one ``(h, w)`` mask, ``protos_chw`` is ``(c, h, w)``.
* Coordinates are continuous pixels: the pixel with index ``i`` covers ``[i, i + 1)`` and its centre is at
  ``i + 0.5`` (OpenCV's and PyTorch's ``align_corners=False`` convention). Polygon vertices are pixel
  indices, as ``cv2.findContours`` returns them, so ``cv2.fillPoly`` of a polygon gives back its pixels.
* Confidence filter: a candidate is kept when its best class score is strictly greater than ``confidence``
  (``score > confidence``), as Ultralytics' ``non_max_suppression`` does.
* NMS: greedy, class-aware; a box is suppressed by a higher-scoring box of the same class when their IoU is
  strictly greater than the threshold (``IoU > overlap``), as ``torchvision.ops.nms`` does. Equal scores
  keep their input order.
* Memory: masks are decoded per instance over its box only; nothing of size (n, H, W) is ever allocated.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "LETTERBOX_FILL",
    "MAX_NMS_CANDIDATES",
    "Detections",
    "LetterboxParams",
    "box_iou_xyxy",
    "box_pixel_bounds",
    "decode_yolov8_seg",
    "letterbox",
    "letterbox_content_hw",
    "letterbox_params",
    "mask_in_box",
    "mask_polygon",
    "nms_xyxy",
    "unletterbox_boxes_xyxy",
    "xywh_to_xyxy",
]

LETTERBOX_FILL = 114
"""Grey level of the letterbox padding, as Ultralytics pads."""

MAX_NMS_CANDIDATES = 30_000
"""At most this many candidates (the highest scores) enter NMS, as Ultralytics caps them."""

_NMS_PAIR_CHUNK = 1 << 16  # candidate pairs whose IoU is computed at once (bounds the memory)
_NMS_PAIR_LIMIT = 1 << 18  # more overlapping same-class pairs than this: one vector operation per kept box
_MASK_THRESHOLD = 0.5
_CONTOUR_LOOP_MAX = 32  # parts per mask up to which the largest is picked in a plain loop
_LOGIT_CLIP = 50.0  # sigmoid(±50) is 0/1 in float32; clipping keeps np.exp from overflowing
_SEPARABLE_MAX_CELLS = 64  # crops up to this many prototype cells a side resample by two matmuls, not warpAffine


@dataclass(frozen=True, slots=True, eq=False)
class Detections:
    """Instances found in one frame, in the frame's own pixels, sorted by confidence, highest first.

    ``eq=False``: arrays have no single truth value, so instances compare by identity.
    """

    boxes_xyxy: NDArray[np.float32]  # (n, 4) x1, y1, x2, y2
    confidence: NDArray[np.float32]  # (n,) 0..1, descending
    class_id: NDArray[np.int64]  # (n,)
    polygons: list[NDArray[np.float32]]  # n arrays of (k, 2) x, y with k >= 3

    def __post_init__(self) -> None:
        n = self.confidence.shape[0] if self.confidence.ndim == 1 else -1
        if n < 0 or self.boxes_xyxy.shape != (n, 4) or self.class_id.shape != (n,) or len(self.polygons) != n:
            raise ValueError(
                "Detections: inconsistent shapes: boxes_xyxy "
                f"{self.boxes_xyxy.shape}, confidence {self.confidence.shape}, "
                f"class_id {self.class_id.shape}, {len(self.polygons)} polygons"
            )

    @staticmethod
    def empty() -> Detections:
        return Detections(
            boxes_xyxy=np.zeros((0, 4), dtype=np.float32),
            confidence=np.zeros((0,), dtype=np.float32),
            class_id=np.zeros((0,), dtype=np.int64),
            polygons=[],
        )

    def __len__(self) -> int:
        return int(self.confidence.shape[0])


class LetterboxParams(NamedTuple):
    """How a frame was placed into the model input: ``input = frame * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: int
    pad_y: int


# --------------------------------------------------------------------------------------------------------
# Letterbox


def _check_hw(name: str, hw: tuple[int, int]) -> tuple[int, int]:
    h, w = int(hw[0]), int(hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive (height, width), got {hw!r}")
    return h, w


def _resized_hw(src_hw: tuple[int, int], dst_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    # Python's round(), as Ultralytics' LetterBox uses; never 0 and never past the destination.
    new_h = min(dst_hw[0], max(1, round(src_hw[0] * scale)))
    new_w = min(dst_hw[1], max(1, round(src_hw[1] * scale)))
    return new_h, new_w


def letterbox_params(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> LetterboxParams:
    """Scale and padding that fit ``src_hw`` into ``dst_hw`` keeping the aspect ratio, centred.

    Same numbers as Ultralytics' ``LetterBox(auto=False, scaleup=True)``: the padding before the image is
    the smaller half when the total padding is odd.
    """
    src_hw = _check_hw("src_hw", src_hw)
    dst_hw = _check_hw("dst_hw", dst_hw)
    scale = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    new_h, new_w = _resized_hw(src_hw, dst_hw, scale)
    return LetterboxParams(scale=scale, pad_x=(dst_hw[1] - new_w) // 2, pad_y=(dst_hw[0] - new_h) // 2)


def letterbox_content_hw(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int]:
    """The size ``(h, w)`` a ``src_hw`` frame is resized to inside a ``dst_hw`` letterbox."""
    src_hw = _check_hw("src_hw", src_hw)
    dst_hw = _check_hw("dst_hw", dst_hw)
    return _resized_hw(src_hw, dst_hw, min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]))


def letterbox(
    image_bgr: NDArray[Any], dst_hw: tuple[int, int], *, frame_hw: tuple[int, int] | None = None
) -> tuple[NDArray[np.float32], LetterboxParams]:
    """The model input for a BGR frame: ``(1, 3, H, W)`` float32 RGB in 0..1, letterboxed with grey 114.

    One ``cv2.resize`` (linear), skipped when the frame already has the right size. Anything but an HxWx3
    uint8 array raises ``ValueError``.

    ``frame_hw``: the frame's true size when ``image_bgr`` is a reduced decode of it (a JPEG decoded at 1/2,
    1/4 or 1/8). The params are then the true frame's, so everything mapped back lands in its pixels, and
    the image is resized into the same content rectangle.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
    image_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
    src_hw = image_hw if frame_hw is None else _check_hw("frame_hw", frame_hw)
    dst_hw = _check_hw("dst_hw", dst_hw)
    params = letterbox_params(src_hw, dst_hw)
    new_h, new_w = _resized_hw(src_hw, dst_hw, params.scale)
    if (new_h, new_w) == image_hw:
        resized = image_bgr
    else:
        resized = np.asarray(cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
    # Written straight into the tensor: the padding as its constant, then each colour plane (split from BGR
    # by OpenCV, RGB order) converted and scaled in one pass: no uint8 canvas, no strided HWC -> CHW copy.
    scale = np.float32(1.0 / 255.0)
    tensor = np.empty((1, 3, dst_hw[0], dst_hw[1]), dtype=np.float32)
    planes = tensor[0]
    top, left, bottom, right = params.pad_y, params.pad_x, params.pad_y + new_h, params.pad_x + new_w
    fill = np.float32(LETTERBOX_FILL) * scale  # the value a uint8 114 becomes, to the bit
    planes[:, :top] = fill
    planes[:, bottom:] = fill
    planes[:, top:bottom, :left] = fill
    planes[:, top:bottom, right:] = fill
    for channel, plane in enumerate(reversed(cv2.split(resized))):
        np.multiply(plane, scale, out=planes[channel, top:bottom, left:right])
    return tensor, params


def unletterbox_boxes_xyxy(
    boxes_xyxy: NDArray[np.floating], params: LetterboxParams, frame_hw: tuple[int, int]
) -> NDArray[np.float32]:
    """Boxes from model-input pixels back to frame pixels, clipped to ``[0, W] x [0, H]``."""
    frame_h, frame_w = _check_hw("frame_hw", frame_hw)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty(boxes.shape, dtype=np.float64)
    out[:, 0::2] = (boxes[:, 0::2] - params.pad_x) / params.scale
    out[:, 1::2] = (boxes[:, 1::2] - params.pad_y) / params.scale
    np.clip(out[:, 0::2], 0.0, frame_w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, frame_h, out=out[:, 1::2])
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Boxes and NMS


def xywh_to_xyxy(boxes_xywh: NDArray[np.floating]) -> NDArray[np.float32]:
    """``(n, 4)`` centre x, centre y, width, height -> ``(n, 4)`` x1, y1, x2, y2."""
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4)
    half = boxes[:, 2:4] * np.float32(0.5)
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)


def _box_area(boxes_xyxy: NDArray[np.float64]) -> NDArray[np.float64]:
    wh = np.clip(boxes_xyxy[:, 2:4] - boxes_xyxy[:, 0:2], 0.0, None)
    return np.asarray(wh[:, 0] * wh[:, 1], dtype=np.float64)


def box_iou_xyxy(boxes_a_xyxy: NDArray[np.floating], boxes_b_xyxy: NDArray[np.floating]) -> NDArray[np.float64]:
    """``(n, m)`` IoU of every box in ``a`` with every box in ``b``; 0 where the union is empty."""
    a = np.asarray(boxes_a_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b_xyxy, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, 0:2], b[None, :, 0:2])
    bottom_right = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = np.clip(bottom_right - top_left, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = _box_area(a)[:, None] + _box_area(b)[None, :] - inter
    iou = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def _iou_one_to_many(
    boxes: NDArray[np.float64], areas: NDArray[np.float64], one: int, many: NDArray[np.intp]
) -> NDArray[np.float64]:
    top_left = np.maximum(boxes[one, 0:2], boxes[many, 0:2])
    bottom_right = np.minimum(boxes[one, 2:4], boxes[many, 2:4])
    wh = np.clip(bottom_right - top_left, 0.0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = areas[one] + areas[many] - inter
    iou = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def nms_xyxy(
    boxes_xyxy: NDArray[np.floating],
    scores: NDArray[np.floating],
    class_id: NDArray[np.integer],
    iou_threshold: float,
    *,
    max_keep: int | None = None,
) -> NDArray[np.int64]:
    """Greedy class-aware NMS; indices of the kept boxes, highest score first (ties: lower index first).

    A box is dropped when a kept, higher-scoring box of the same class overlaps it with IoU strictly greater
    than ``iou_threshold``. Vectorised: a sweep over each class's boxes sorted by ``x1`` lists the pairs whose
    x-spans overlap, their IoU is computed at once, and one pass in score order over the boxes that overlap
    anything above the threshold makes the greedy choices (a pass over plain lists, no NumPy call per box).
    When a frame has so many overlapping same-class pairs that listing them costs more than it saves (more
    than ``_NMS_PAIR_LIMIT``, e.g. thousands of boxes of one class at a very low confidence), the classic
    loop, one vector operation per kept box stopping at ``max_keep``, is used instead; both give the same
    result.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores_arr = np.asarray(scores).reshape(-1)
    classes = np.asarray(class_id).reshape(-1)
    if not boxes.shape[0] == scores_arr.shape[0] == classes.shape[0]:
        raise ValueError(
            f"nms_xyxy: {boxes.shape[0]} boxes, {scores_arr.shape[0]} scores, {classes.shape[0]} class ids"
        )
    limit = boxes.shape[0] if max_keep is None else max(0, int(max_keep))
    if limit == 0 or boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    by_score = np.argsort(-scores_arr, kind="stable")
    keep_rank = _nms_sweep(boxes[by_score], classes[by_score], float(iou_threshold), limit)
    if keep_rank is None:
        return _nms_per_kept_box(boxes, scores_arr, classes, by_score, float(iou_threshold), limit)
    return np.asarray(by_score[keep_rank], dtype=np.int64)


def _nms_sweep(
    boxes: NDArray[np.float64], classes: NDArray[np.integer], threshold: float, limit: int
) -> NDArray[np.intp] | None:
    """Ranks (positions in score order) of the kept boxes; None when there are too many pairs to list."""
    n = boxes.shape[0]
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
    area = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    # A box without area (or with a non-finite corner) has IoU 0 with every box: it never suppresses or is
    # suppressed, so only the others are swept.
    live = np.flatnonzero(np.isfinite(boxes).all(axis=1) & (area > 0))
    if live.size < 2:
        return np.arange(min(n, limit))
    # Sort key: class blocks far apart, x1 within a block; box i can only overlap the boxes after it whose
    # key is below key_i + width_i (a slightly wider reach is harmless: every pair is checked exactly).
    left = float(x1[live].min())
    span = float(x2[live].max()) - left + 1.0
    _, class_rank = np.unique(classes[live], return_inverse=True)
    key = class_rank.reshape(-1) * (2.0 * span) + (x1[live] - left)
    order = np.argsort(key, kind="stable")
    sweep = live[order]
    key = key[order]
    reach = key + (x2[sweep] - x1[sweep]) * (1.0 + 1e-9) + span * 1e-9
    counts = np.maximum(np.searchsorted(key, reach, side="right") - np.arange(sweep.size) - 1, 0)
    ends = np.cumsum(counts)
    if int(ends[-1]) > _NMS_PAIR_LIMIT:
        return None
    lo_parts: list[NDArray[np.intp]] = []
    hi_parts: list[NDArray[np.intp]] = []
    first = 0 if int(ends[-1]) else sweep.size
    while first < sweep.size:
        before = int(ends[first - 1]) if first else 0
        last = min(sweep.size, max(int(np.searchsorted(ends, before + _NMS_PAIR_CHUNK, side="right")), first + 1))
        owners_count = counts[first:last]
        owner = np.repeat(np.arange(first, last), owners_count)
        if owner.size:
            offsets = np.arange(owner.size) - np.repeat(np.cumsum(owners_count) - owners_count, owners_count)
            partner = owner + 1 + offsets
            i, j = sweep[owner], sweep[partner]
            near = (x1[j] < x2[i]) & (x1[i] < x2[j]) & (y1[j] < y2[i]) & (y1[i] < y2[j])
            i, j = i[near], j[near]
            inter = (np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j])) * (
                np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j])
            )
            over = inter / (area[i] + area[j] - inter) > threshold
            if over.any():
                i, j = i[over], j[over]
                lo_parts.append(np.minimum(i, j))  # the higher-scoring box of the pair
                hi_parts.append(np.maximum(i, j))
        first = last
    if not lo_parts:
        return np.arange(min(n, limit))
    lo_arr = np.concatenate(lo_parts)
    by_lo = np.argsort(lo_arr, kind="stable")
    lo = lo_arr[by_lo].tolist()
    hi = np.concatenate(hi_parts)[by_lo].tolist()
    removed = bytearray(n)
    k, pairs = 0, len(lo)
    while k < pairs:  # greedy in score order: a box suppresses its partners only if it was not suppressed
        here = lo[k]
        alive = not removed[here]
        while k < pairs and lo[k] == here:
            if alive:
                removed[hi[k]] = 1
            k += 1
    return np.flatnonzero(np.frombuffer(bytes(removed), dtype=np.uint8) == 0)[:limit]


def _nms_per_kept_box(
    boxes: NDArray[np.float64],
    scores: NDArray[Any],
    classes: NDArray[np.integer],
    by_score: NDArray[np.intp],
    threshold: float,
    limit: int,
) -> NDArray[np.int64]:
    """The same NMS as one vector operation per kept box, stopping at ``limit``: each class keeps its own
    queue sorted by score and a heap of the queues' heads picks the next box in global score order."""
    areas = _box_area(boxes)
    rank = np.empty(by_score.size, dtype=np.int64)
    rank[by_score] = np.arange(by_score.size)
    by_class = by_score[np.argsort(classes[by_score], kind="stable")]  # class blocks, each by score
    cuts = np.flatnonzero(classes[by_class][1:] != classes[by_class][:-1]) + 1
    queues = np.split(by_class, cuts)
    heads = [(int(rank[queue[0]]), number) for number, queue in enumerate(queues)]
    heapq.heapify(heads)
    keep: list[int] = []
    while heads and len(keep) < limit:
        number = heapq.heappop(heads)[1]
        queue = queues[number]
        best, rest = int(queue[0]), queue[1:]
        keep.append(best)
        queue = rest[_iou_one_to_many(boxes, areas, best, rest) <= threshold]
        queues[number] = queue
        if queue.size:
            heapq.heappush(heads, (int(rank[queue[0]]), number))
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------------------
# Masks and polygons


def box_pixel_bounds(box_xyxy: NDArray[np.floating], frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``, end exclusive: the frame pixels whose centres lie in the box (edges included).

    Empty (``x1 <= x0`` or ``y1 <= y0``) for a box of zero width or height, or one outside the frame.
    """
    frame_h, frame_w = _check_hw("frame_hw", frame_hw)
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box_xyxy, dtype=np.float64).reshape(4))
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return 0, 0, 0, 0
    x0 = min(max(math.ceil(x1 - 0.5), 0), frame_w)
    y0 = min(max(math.ceil(y1 - 0.5), 0), frame_h)
    xe = min(max(math.floor(x2 - 0.5) + 1, x0), frame_w)
    ye = min(max(math.floor(y2 - 0.5) + 1, y0), frame_h)
    return x0, y0, xe, ye


def _sigmoid(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """``1 / (1 + exp(-x))`` in float32, in place (``x`` is overwritten and returned)."""
    np.minimum(x, _LOGIT_CLIP, out=x)
    np.maximum(x, -_LOGIT_CLIP, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


def mask_in_box(
    coeffs: NDArray[np.floating],
    protos_chw: NDArray[np.floating],
    box_xyxy: NDArray[np.floating],
    params: LetterboxParams,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """One instance's mask, decoded only over its box: ``(mask_hw, (x0, y0))``.

    ``mask_hw`` (uint8, 1 inside, 0 outside) covers the frame pixels
    ``box_pixel_bounds(box_xyxy, frame_hw)``, whose top-left is ``(x0, y0)``. Only the prototype cells under
    the box (plus a cell of margin for interpolation) are combined with ``coeffs`` and passed through the
    sigmoid; that crop is resampled straight into frame pixels by one linear interpolation that maps each
    frame pixel centre through the letterbox onto the prototype grid (``cv2.resize`` when a prototype cell is
    a whole number of frame pixels, else two small matmuls or ``cv2.warpAffine``: see ``_MaskPlans``), and
    thresholded at 0.5. This
    samples like upsampling the prototypes to the input size, cropping the padding and resizing to the frame
    (Ultralytics' ``scale_masks``), including at the frame's edges, where samples are clamped to the content
    and never read the padding. Memory is bounded by the box, whatever the frame size.
    """
    protos = np.asarray(protos_chw, dtype=np.float32)
    _, proto_h, proto_w = protos.shape
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(1, 4)
    plan = _MaskPlans(box, params, _check_hw("input_hw", input_hw), _check_hw("frame_hw", frame_hw), (proto_h, proto_w))
    x0, y0, x1, y1 = plan.bounds[0]
    if x1 <= x0 or y1 <= y0:
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8), (x0, y0)
    coeffs_1xm = np.asarray(coeffs, dtype=np.float32).reshape(1, -1)
    return plan.resample(0, plan.probabilities([0], coeffs_1xm, protos)[0]), (x0, y0)


class _MaskPlans:
    """Where each box's mask is sampled, for all boxes at once (plain ints and floats, one row per box).

    Frame pixel centre ``u + 0.5`` maps to input ``x = (u + 0.5) * scale + pad``, then to prototype index
    ``x / stride - 0.5``. Per box: ``bounds`` = ``box_pixel_bounds``; ``span`` = the part of it whose centres
    map inside the letterboxed content (``_sampled_spans``; the rest repeats its nearest sampled row or
    column); ``crop`` = the prototype cells those samples read (a cell of margin for interpolation);
    ``origin`` = the prototype coordinates of the first sample, relative to the crop.

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

    def __init__(
        self,
        boxes_xyxy: NDArray[np.floating],
        params: LetterboxParams,
        input_hw: tuple[int, int],
        frame_hw: tuple[int, int],
        proto_hw: tuple[int, int],
    ) -> None:
        frame_h, frame_w = frame_hw
        input_h, input_w = input_hw
        proto_h, proto_w = proto_hw
        content_h, content_w = _resized_hw(frame_hw, input_hw, params.scale)
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        finite: NDArray[np.bool_] = np.asarray(np.isfinite(boxes).all(axis=1))
        boxes = np.where(finite[:, None], boxes, 0.0)
        # box_pixel_bounds, vectorised (the same float64 operations, so the same integers).
        x0 = np.minimum(np.maximum(np.ceil(boxes[:, 0] - 0.5), 0), frame_w)
        y0 = np.minimum(np.maximum(np.ceil(boxes[:, 1] - 0.5), 0), frame_h)
        x1 = np.minimum(np.maximum(np.floor(boxes[:, 2] - 0.5) + 1, x0), frame_w)
        y1 = np.minimum(np.maximum(np.floor(boxes[:, 3] - 0.5) + 1, y0), frame_h)
        bounds = np.where(finite[:, None], np.stack([x0, y0, x1, y1], axis=1), 0.0)
        x0, y0, x1, y1 = bounds.T
        xa, xb = _sampled_spans(x0, x1, params.scale, content_w)
        ya, yb = _sampled_spans(y0, y1, params.scale, content_h)
        self.step_x = params.scale * proto_w / input_w
        self.step_y = params.scale * proto_h / input_h
        src_xa = ((xa + 0.5) * params.scale + params.pad_x) * proto_w / input_w - 0.5
        src_ya = ((ya + 0.5) * params.scale + params.pad_y) * proto_h / input_h - 0.5
        src_xb = src_xa + self.step_x * (xb - xa)
        src_yb = src_ya + self.step_y * (yb - ya)
        # The cells the bilinear samples read: floor(first) .. floor(last) + 1, no more (every cell costs
        # a matmul row, a sigmoid and q * q resized pixels).
        gx0 = np.minimum(np.maximum(np.floor(src_xa), 0), proto_w - 1)
        gy0 = np.minimum(np.maximum(np.floor(src_ya), 0), proto_h - 1)
        gx1 = np.maximum(np.minimum(np.floor(src_xb) + 2, proto_w), gx0 + 1)
        gy1 = np.maximum(np.minimum(np.floor(src_yb) + 2, proto_h), gy0 + 1)
        self._geometry_y = (frame_h, params.scale, params.pad_y, content_h, proto_h, input_h)
        self._geometry_x = (frame_w, params.scale, params.pad_x, content_w, proto_w, input_w)
        self.bounds: list[list[int]] = bounds.astype(np.int64).tolist()
        self.span: list[list[int]] = np.stack([xa, xb, ya, yb], axis=1).astype(np.int64).tolist()
        self.crop: list[list[int]] = np.stack([gx0, gx1, gy0, gy1], axis=1).astype(np.int64).tolist()
        self.origin: list[list[float]] = np.stack([src_xa - gx0, src_ya - gy0], axis=1).tolist()
        # cv2.resize by q maps output pixel d to (d + 0.5) / q - 0.5: the first sample is output pixel
        # q * (src + 0.5) - 0.5 - q * crop_start, when that is a whole number.
        self.q = (_whole_reciprocal(self.step_x), _whole_reciprocal(self.step_y))
        self.resize_at: list[tuple[int, int] | None] = [None] * len(self.bounds)
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

    @functools.cached_property
    def _tables(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The frame's per-axis interpolation tables (y, x): looked up once per frame, only if a box needs them."""
        return _axis_weights(*self._geometry_y), _axis_weights(*self._geometry_x)

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
        _sigmoid(flat)
        return [flat[b - h * w : b].reshape(h, w) for b, (h, w) in zip(ends, shapes, strict=True)]

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
            # NumPy's BLAS: single-threaded in the agent (model.limit_helper_threads), else its idle workers spin.
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
    lo = math.ceil(0.5 / scale - 0.5 - 1e-9)
    hi = math.floor((content_len - 0.5) / scale - 0.5 + 1e-9)
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

    Pixel ``v`` maps to input ``(v + 0.5) * scale + pad``; the content's outermost pixel centres are at
    ``pad + 0.5`` and ``pad + content - 0.5``. Pixels mapping outside them (at most about ``0.5 / scale``
    at each frame edge) take the value of the nearest one inside, as upsampling the unpadded input would.
    """
    lo = math.ceil(0.5 / scale - 0.5 - 1e-9)
    hi = math.floor((content - 0.5) / scale - 0.5 + 1e-9)
    first = np.maximum(start, lo)
    last = np.minimum(stop - 1, hi)
    band = first > last  # the whole span lies in one edge band: sample its nearest valid pixel only
    if band.any():
        nearest = np.minimum(np.maximum(start, lo), hi) if lo <= hi else start
        first = np.where(band, nearest, first)
        last = np.where(band, nearest, last)
    return first, last


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
    polygon = _largest_outer_contour(mask, int(offset_x) if whole else 0, int(offset_y) if whole else 0)
    if polygon is None:
        return np.zeros((0, 2), dtype=np.float32)
    if not whole:
        polygon += np.array([offset_x, offset_y], dtype=np.float32)
    return polygon


def _largest_outer_contour(mask: NDArray[np.uint8], offset_x: int, offset_y: int) -> NDArray[np.float32] | None:
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


# --------------------------------------------------------------------------------------------------------
# The whole decode


def decode_yolov8_seg(
    output0: NDArray[np.floating],
    protos: NDArray[np.floating],
    *,
    params: LetterboxParams,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    overlap: float,
    max_detections: int = 300,
) -> Detections:
    """Detections in frame pixels from a YOLOv8/YOLO11-seg export's two outputs.

    ``output0``: ``(1, 4 + nc + nm, N)`` or ``(4 + nc + nm, N)``: ``cx, cy, w, h`` in input pixels, ``nc``
    class scores (already sigmoid), ``nm`` mask coefficients. ``protos``: ``(1, nm, H/4, W/4)`` or
    ``(nm, H/4, W/4)``. Steps: best class per candidate; keep ``score > confidence``; at most
    ``MAX_NMS_CANDIDATES`` highest; class-aware NMS (suppress ``IoU > overlap``) in input pixels, keeping at
    most ``max_detections``; boxes back through the letterbox, clipped to the frame; a mask per box decoded
    only inside the box; polygon = outer contour of its largest part; detections without a polygon of at
    least 3 points are dropped (after the ``max_detections`` cap, as Roboflow's server drops them when it
    serialises, so fewer than ``max_detections`` may come back even when more candidates exist).
    """
    pred = np.asarray(output0)
    pred = pred[0] if pred.ndim == 3 else pred
    protos_chw = np.asarray(protos)
    protos_chw = protos_chw[0] if protos_chw.ndim == 4 else protos_chw
    if pred.ndim != 2 or protos_chw.ndim != 3:
        raise ValueError(f"decode_yolov8_seg: bad shapes output0 {output0.shape}, protos {protos.shape}")
    num_masks = protos_chw.shape[0]
    num_classes = pred.shape[0] - 4 - num_masks
    if num_classes < 1:
        raise ValueError(
            f"decode_yolov8_seg: output0 has {pred.shape[0]} rows; needs 4 + classes + {num_masks} (protos)"
        )
    if max_detections <= 0 or pred.shape[1] == 0:
        return Detections.empty()

    class_scores = pred[4 : 4 + num_classes]
    best_score = class_scores.max(axis=0)  # a max down the rows is cheaper than an argmax; argmax only below
    candidates = np.flatnonzero(best_score > confidence)
    if candidates.size == 0:
        return Detections.empty()
    if candidates.size > MAX_NMS_CANDIDATES:
        top = np.argsort(-best_score[candidates], kind="stable")[:MAX_NMS_CANDIDATES]
        candidates = np.sort(candidates[top])

    boxes_in_xyxy = xywh_to_xyxy(pred[0:4, candidates].T)
    scores = best_score[candidates].astype(np.float32)
    classes = np.argmax(class_scores[:, candidates], axis=0).astype(np.int64)
    keep = nms_xyxy(boxes_in_xyxy, scores, classes, overlap, max_keep=max_detections)
    if keep.size == 0:
        return Detections.empty()

    boxes_xyxy = unletterbox_boxes_xyxy(boxes_in_xyxy[keep], params, frame_hw)
    coeffs_nm = np.ascontiguousarray(pred[4 + num_classes :, candidates[keep]].T, dtype=np.float32)
    protos_f32 = np.asarray(protos_chw, dtype=np.float32)
    plans = _MaskPlans(
        boxes_xyxy,
        params,
        _check_hw("input_hw", input_hw),
        _check_hw("frame_hw", frame_hw),
        (protos_f32.shape[1], protos_f32.shape[2]),
    )
    # A box without a pixel centre inside has no polygon.
    rows_in = [row for row, (x0, y0, x1, y1) in enumerate(plans.bounds) if x1 > x0 and y1 > y0]
    polygons: list[NDArray[np.float32]] = []
    kept_rows: list[int] = []
    for row, probs in zip(rows_in, plans.probabilities(rows_in, coeffs_nm, protos_f32), strict=True):
        x0, y0 = plans.bounds[row][0:2]
        polygon = _largest_outer_contour(plans.resample(row, probs), x0, y0)
        if polygon is not None:
            polygons.append(polygon)
            kept_rows.append(row)
    if not kept_rows:
        return Detections.empty()
    rows = np.asarray(kept_rows, dtype=np.int64)
    return Detections(
        boxes_xyxy=np.ascontiguousarray(boxes_xyxy[rows]),
        confidence=scores[keep[rows]],
        class_id=classes[keep[rows]],
        polygons=polygons,
    )
