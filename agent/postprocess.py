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

_MASK_THRESHOLD = 0.5
_LOGIT_CLIP = 50.0  # sigmoid(±50) is 0/1 in float32; clipping keeps np.exp from overflowing


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


def letterbox(image_bgr: NDArray[Any], dst_hw: tuple[int, int]) -> tuple[NDArray[np.float32], LetterboxParams]:
    """The model input for a BGR frame: ``(1, 3, H, W)`` float32 RGB in 0..1, letterboxed with grey 114.

    One ``cv2.resize`` (linear), skipped when the frame already has the right size. Anything but an HxWx3
    uint8 array raises ``ValueError``.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}")
    src_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
    dst_hw = _check_hw("dst_hw", dst_hw)
    params = letterbox_params(src_hw, dst_hw)
    new_h, new_w = _resized_hw(src_hw, dst_hw, params.scale)
    if (new_h, new_w) == src_hw:
        resized = image_bgr
    else:
        resized = np.asarray(cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
    canvas = np.full((dst_hw[0], dst_hw[1], 3), LETTERBOX_FILL, dtype=np.uint8)
    canvas[params.pad_y : params.pad_y + new_h, params.pad_x : params.pad_x + new_w] = resized
    # BGR -> RGB and HWC -> CHW in one copy, then scale to 0..1.
    tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)[::-1], dtype=np.float32)
    tensor *= np.float32(1.0 / 255.0)
    return tensor[np.newaxis], params


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
    than ``iou_threshold``. Each class keeps its own queue, sorted by score; a heap of the queues' heads
    picks the next box in global score order, which is compared with the rest of its class's queue at once.
    So the Python loop runs once per kept box and stops at ``max_keep``, and each round touches one class.
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
    areas = _box_area(boxes)
    by_score = np.argsort(-scores_arr, kind="stable")
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
        queue = rest[_iou_one_to_many(boxes, areas, best, rest) <= iou_threshold]
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
    x = np.clip(x, -_LOGIT_CLIP, _LOGIT_CLIP)
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


def _sampled_span(start: int, stop: int, scale: float, content: int) -> tuple[int, int]:
    """Frame pixels ``[first, last]`` of ``[start, stop)`` whose centres map inside the letterboxed content.

    Pixel ``v`` maps to input ``(v + 0.5) * scale + pad``; the content's outermost pixel centres are at
    ``pad + 0.5`` and ``pad + content - 0.5``. Pixels mapping outside them (at most about ``0.5 / scale``
    at each frame edge) take the value of the nearest one inside, as upsampling the unpadded input would.
    """
    lo = math.ceil(0.5 / scale - 0.5 - 1e-9)
    hi = math.floor((content - 0.5) / scale - 0.5 + 1e-9)
    first, last = max(start, lo), min(stop - 1, hi)
    if first > last:  # the whole span lies in one edge band: sample its nearest valid pixel only
        first = last = min(max(start, lo), hi) if lo <= hi else start
    return first, last


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
    sigmoid; that crop is resampled straight into frame pixels by one linear ``cv2.warpAffine`` that maps
    each frame pixel centre through the letterbox onto the prototype grid, and thresholded at 0.5. This
    samples like upsampling the prototypes to the input size, cropping the padding and resizing to the frame
    (Ultralytics' ``scale_masks``), including at the frame's edges, where samples are clamped to the content
    and never read the padding. Memory is bounded by the box, whatever the frame size.
    """
    x0, y0, x1, y1 = box_pixel_bounds(box_xyxy, frame_hw)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8), (x0, y0)
    num_masks, proto_h, proto_w = protos_chw.shape
    input_h, input_w = _check_hw("input_hw", input_hw)
    content_h, content_w = _resized_hw(_check_hw("frame_hw", frame_hw), (input_h, input_w), params.scale)
    xa, xb = _sampled_span(x0, x1, params.scale, content_w)
    ya, yb = _sampled_span(y0, y1, params.scale, content_h)
    # Frame pixel centre u + 0.5 -> input x = (u + 0.5) * scale + pad -> prototype index x / stride - 0.5.
    step_x = params.scale * proto_w / input_w
    step_y = params.scale * proto_h / input_h
    src_xa = ((xa + 0.5) * params.scale + params.pad_x) * proto_w / input_w - 0.5
    src_ya = ((ya + 0.5) * params.scale + params.pad_y) * proto_h / input_h - 0.5
    src_xb = src_xa + step_x * (xb - xa)
    src_yb = src_ya + step_y * (yb - ya)
    gx0 = min(max(math.floor(src_xa) - 1, 0), proto_w - 1)
    gy0 = min(max(math.floor(src_ya) - 1, 0), proto_h - 1)
    gx1 = max(min(math.ceil(src_xb) + 2, proto_w), gx0 + 1)
    gy1 = max(min(math.ceil(src_yb) + 2, proto_h), gy0 + 1)
    crop = np.asarray(protos_chw[:, gy0:gy1, gx0:gx1], dtype=np.float32).reshape(num_masks, -1)
    logits = np.asarray(coeffs, dtype=np.float32).reshape(1, num_masks) @ crop
    probs = _sigmoid(logits.reshape(gy1 - gy0, gx1 - gx0))
    warp = np.array([[step_x, 0.0, src_xa - gx0], [0.0, step_y, src_ya - gy0]], dtype=np.float64)
    resampled = cv2.warpAffine(
        probs,
        warp,
        (xb - xa + 1, yb - ya + 1),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    mask: NDArray[np.uint8] = np.greater(np.asarray(resampled), _MASK_THRESHOLD).view(np.uint8)
    if (xa, xb, ya, yb) != (x0, x1 - 1, y0, y1 - 1):
        # Edge bands repeat the nearest sampled row / column.
        if x0 <= xa and xb < x1 and y0 <= ya and yb < y1:
            mask = np.asarray(
                cv2.copyMakeBorder(mask, ya - y0, y1 - 1 - yb, xa - x0, x1 - 1 - xb, cv2.BORDER_REPLICATE),
                dtype=np.uint8,
            )
        else:  # a box lying wholly in an edge band: its nearest sampled pixel is outside it
            rows = np.clip(np.arange(y0, y1), ya, yb) - ya
            cols = np.clip(np.arange(x0, x1), xa, xb) - xa
            mask = mask[np.ix_(rows, cols)]
    return mask.reshape(y1 - y0, x1 - x0), (x0, y0)


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
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    largest = contours[0] if len(contours) == 1 else contours[int(np.argmax(_covered_pixels(contours)))]
    points = np.asarray(largest, dtype=np.float32).reshape(-1, 2)
    if points.shape[0] < 3:
        return np.zeros((0, 2), dtype=np.float32)
    points += np.asarray(offset_xy, dtype=np.float32).reshape(1, 2)
    return points


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
    best_class = np.argmax(class_scores, axis=0)
    best_score = np.take_along_axis(class_scores, best_class[np.newaxis], axis=0)[0]
    candidates = np.flatnonzero(best_score > confidence)
    if candidates.size == 0:
        return Detections.empty()
    if candidates.size > MAX_NMS_CANDIDATES:
        top = np.argsort(-best_score[candidates], kind="stable")[:MAX_NMS_CANDIDATES]
        candidates = np.sort(candidates[top])

    boxes_in_xyxy = xywh_to_xyxy(pred[0:4, candidates].T)
    scores = best_score[candidates].astype(np.float32)
    classes = best_class[candidates].astype(np.int64)
    keep = nms_xyxy(boxes_in_xyxy, scores, classes, overlap, max_keep=max_detections)
    if keep.size == 0:
        return Detections.empty()

    boxes_xyxy = unletterbox_boxes_xyxy(boxes_in_xyxy[keep], params, frame_hw)
    coeffs_nm = pred[4 + num_classes :, candidates[keep]].T
    polygons: list[NDArray[np.float32]] = []
    kept_rows: list[int] = []
    for row in range(keep.size):
        mask_hw, offset_xy = mask_in_box(coeffs_nm[row], protos_chw, boxes_xyxy[row], params, input_hw, frame_hw)
        polygon = mask_polygon(mask_hw, offset_xy)
        if polygon.shape[0] >= 3:
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
