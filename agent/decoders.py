"""Pure decoders: each supported format's raw outputs to :class:`~agent.postprocess.Detections` in frame pixels.

One function per layout (contract §3), all taking the frame's :class:`~agent.preprocess.Placement`, so any
resize (Ultralytics letterbox, Roboflow ``Stretch to`` / ``Fit ... in``) and a static crop come back right:

* :func:`decode_yolov8_placed`: ``output0 [1, 4+nc+nm, N]`` (``cx, cy, w, h``, class scores) + prototypes;
* :func:`decode_yolov5_seg`: ``output0 [1, N, 5+nc+nm]`` (``cx, cy, w, h``, objectness, class scores) +
  prototypes; score = objectness x class score (Ultralytics) or objectness alone (Roboflow's server);
* :func:`decode_end2end_seg`: ``output0 [1, K, 6+nm]`` (``x1, y1, x2, y2``, score, class) + prototypes,
  NMS-free (YOLO26 ``end2end``);
* :func:`decode_rfdetr_seg`: ``dets [1, Q, 4]`` (normalised ``cx, cy, w, h``), ``labels [1, Q, C]``
  (logits, one sigmoid per class), ``masks [1, Q, H/4, W/4]`` (logits), NMS-free.

Conventions are :mod:`agent.postprocess`'s: confidence ``score > confidence``, class-aware NMS suppressing
``IoU > overlap`` in input pixels, at most ``max_detections``, highest confidence first, polygon = outer
contour of the mask's largest part, detections without a 3-point polygon dropped. Masks are sampled straight
at frame pixel centres through the placement (bilinear, clamped to the image content) and only where they
can be non-empty: inside the box for prototype masks (cropped to the box, as Ultralytics and Roboflow crop
them), around the positive cells for RF-DETR's mask logits (not cropped to the box, as RF-DETR's own
post-processing and Roboflow's server leave them). Nothing of size (n, H, W) is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.postprocess import (
    MAX_NMS_CANDIDATES,
    Detections,
    box_pixel_bounds,
    mask_polygon,
    nms_xyxy,
    xywh_to_xyxy,
)
from agent.preprocess import Placement, input_to_frame_xy, sample_positions

__all__ = [
    "boxes_to_frame",
    "decode_end2end_seg",
    "decode_rfdetr_seg",
    "decode_yolov5_seg",
    "decode_yolov8_placed",
    "logit_mask",
    "proto_mask_in_box",
]

_LOGIT_CLIP = 50.0
_MaskFn = Callable[[int, NDArray[np.float32]], tuple[NDArray[np.uint8], tuple[int, int]]]


def _sigmoid(x: NDArray[Any]) -> NDArray[np.float32]:
    clipped = np.clip(np.asarray(x, dtype=np.float32), -_LOGIT_CLIP, _LOGIT_CLIP)
    return np.asarray(1.0 / (1.0 + np.exp(-clipped)), dtype=np.float32)


def _squeeze_batch(array: NDArray[Any], ndim: int, what: str) -> NDArray[Any]:
    out = np.asarray(array)
    if out.ndim == ndim + 1:
        out = out[0]
    if out.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions (after the batch), got shape {np.shape(array)}")
    return out


def boxes_to_frame(
    boxes_in_xyxy: NDArray[np.floating[Any]], placement: Placement, frame_hw: tuple[int, int]
) -> NDArray[np.float32]:
    """Boxes in model-input pixels back to frame pixels, clipped to the used (static-crop) part of the frame."""
    boxes = np.asarray(boxes_in_xyxy, dtype=np.float64).reshape(-1, 4)
    x1, y1 = input_to_frame_xy(boxes[:, 0], boxes[:, 1], placement)
    x2, y2 = input_to_frame_xy(boxes[:, 2], boxes[:, 3], placement)
    out = np.stack([x1, y1, x2, y2], axis=1)
    p = placement
    x_hi, y_hi = min(p.offset_x + p.crop_w, frame_hw[1]), min(p.offset_y + p.crop_h, frame_hw[0])
    np.clip(out[:, 0::2], p.offset_x, x_hi, out=out[:, 0::2])
    np.clip(out[:, 1::2], p.offset_y, y_hi, out=out[:, 1::2])
    return out.astype(np.float32)


def _remap(grid_hw: NDArray[np.float32], cols: NDArray[np.float32], rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Bilinear samples of ``grid_hw`` at every ``(rows[i], cols[j])`` (cell centres at integers, edges clamped)."""
    map_x = np.ascontiguousarray(np.broadcast_to(cols[np.newaxis, :], (rows.size, cols.size)))
    map_y = np.ascontiguousarray(np.broadcast_to(rows[:, np.newaxis], (rows.size, cols.size)))
    sampled = cv2.remap(grid_hw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.asarray(sampled, dtype=np.float32).reshape(rows.size, cols.size)


def proto_mask_in_box(
    coeffs: NDArray[np.floating[Any]],
    protos_chw: NDArray[np.floating[Any]],
    box_xyxy: NDArray[np.floating[Any]],
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """A YOLO instance mask over its box only: ``(mask_hw, (x0, y0))``, 1 inside, 0 outside.

    sigmoid(coeffs . prototypes) on the prototype cells under the box, sampled at the box's frame pixel
    centres through the placement, threshold 0.5; ``mask_hw`` covers ``box_pixel_bounds(box_xyxy)``.
    """
    x0, y0, x1, y1 = box_pixel_bounds(box_xyxy, frame_hw)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8), (x0, y0)
    num_masks, proto_h, proto_w = protos_chw.shape
    cols = sample_positions(x0, x1, "x", placement, proto_w, input_hw[1])
    rows = sample_positions(y0, y1, "y", placement, proto_h, input_hw[0])
    gx0 = min(max(math.floor(float(cols[0])), 0), proto_w - 1)
    gy0 = min(max(math.floor(float(rows[0])), 0), proto_h - 1)
    gx1 = max(min(math.floor(float(cols[-1])) + 2, proto_w), gx0 + 1)
    gy1 = max(min(math.floor(float(rows[-1])) + 2, proto_h), gy0 + 1)
    crop = np.asarray(protos_chw[:, gy0:gy1, gx0:gx1], dtype=np.float32).reshape(num_masks, -1)
    logits = np.asarray(coeffs, dtype=np.float32).reshape(1, num_masks) @ crop
    probs = _sigmoid(logits.reshape(gy1 - gy0, gx1 - gx0))
    values = _remap(probs, cols - np.float32(gx0), rows - np.float32(gy0))
    return np.greater(values, 0.5).view(np.uint8), (x0, y0)


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


def _assemble(
    boxes_xyxy: NDArray[np.float32], scores: NDArray[np.float32], classes: NDArray[np.int64], mask_of: _MaskFn
) -> Detections:
    polygons: list[NDArray[np.float32]] = []
    rows: list[int] = []
    for row in range(boxes_xyxy.shape[0]):
        mask_hw, offset_xy = mask_of(row, boxes_xyxy[row])
        polygon = mask_polygon(mask_hw, offset_xy)
        if polygon.shape[0] >= 3:
            polygons.append(polygon)
            rows.append(row)
    if not rows:
        return Detections.empty()
    kept = np.asarray(rows, dtype=np.int64)
    return Detections(
        boxes_xyxy=np.ascontiguousarray(boxes_xyxy[kept]),
        confidence=np.ascontiguousarray(scores[kept], dtype=np.float32),
        class_id=np.ascontiguousarray(classes[kept], dtype=np.int64),
        polygons=polygons,
    )


def _proto_detections(
    boxes_in_xyxy: NDArray[np.float32],
    scores: NDArray[np.float32],
    classes: NDArray[np.int64],
    coeffs: NDArray[np.floating[Any]],
    protos_chw: NDArray[np.floating[Any]],
    *,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    overlap: float | None,
    max_detections: int,
) -> Detections:
    """Candidates (already past the confidence filter) -> NMS (or none) -> frame boxes -> box-cropped masks."""
    if scores.size == 0 or max_detections <= 0:
        return Detections.empty()
    if scores.size > MAX_NMS_CANDIDATES:
        top = np.sort(np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES])
        boxes_in_xyxy, scores, classes, coeffs = boxes_in_xyxy[top], scores[top], classes[top], coeffs[top]
    if overlap is None:
        keep = np.argsort(-scores, kind="stable")[:max_detections]
    else:
        keep = nms_xyxy(boxes_in_xyxy, scores, classes, overlap, max_keep=max_detections)
    boxes = boxes_to_frame(boxes_in_xyxy[keep], placement, frame_hw)
    kept_coeffs = coeffs[keep]

    def mask_of(row: int, box: NDArray[np.float32]) -> tuple[NDArray[np.uint8], tuple[int, int]]:
        return proto_mask_in_box(kept_coeffs[row], protos_chw, box, placement, input_hw, frame_hw)

    return _assemble(boxes, scores[keep], classes[keep], mask_of)


def decode_yolov8_placed(
    output0: NDArray[np.floating[Any]],
    protos: NDArray[np.floating[Any]],
    *,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    overlap: float,
    max_detections: int = 300,
) -> Detections:
    """YOLOv8 / YOLO11 ``-seg`` layout under any placement (a Roboflow package's resize, a static crop)."""
    pred = _squeeze_batch(output0, 2, "output0")
    protos_chw = _squeeze_batch(protos, 3, "protos")
    num_masks = protos_chw.shape[0]
    num_classes = pred.shape[0] - 4 - num_masks
    if num_classes < 1:
        raise ValueError(f"output0 has {pred.shape[0]} rows; needs 4 + classes + {num_masks} (protos)")
    class_scores = pred[4 : 4 + num_classes]
    best_class = np.argmax(class_scores, axis=0)
    best_score = np.take_along_axis(class_scores, best_class[np.newaxis], axis=0)[0]
    cand = np.flatnonzero(best_score > confidence)
    return _proto_detections(
        xywh_to_xyxy(pred[0:4, cand].T),
        best_score[cand].astype(np.float32),
        best_class[cand].astype(np.int64),
        pred[4 + num_classes :, cand].T,
        protos_chw,
        placement=placement,
        input_hw=input_hw,
        frame_hw=frame_hw,
        overlap=overlap,
        max_detections=max_detections,
    )


def decode_yolov5_seg(
    output0: NDArray[np.floating[Any]],
    protos: NDArray[np.floating[Any]],
    *,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    overlap: float,
    max_detections: int = 300,
    score: Literal["product", "objectness"] = "product",
) -> Detections:
    """YOLOv5-seg: ``output0 [1, N, 5+nc+nm]``, rows ``cx, cy, w, h, objectness, nc class scores, nm coeffs``.

    ``score="product"``: confidence = objectness x best class score (Ultralytics YOLOv5's NMS);
    ``"objectness"``: confidence = objectness, class = best class (Roboflow's server for ``yolov5*-seg``).
    """
    pred = _squeeze_batch(output0, 2, "output0")
    protos_chw = _squeeze_batch(protos, 3, "protos")
    num_masks = protos_chw.shape[0]
    num_classes = pred.shape[1] - 5 - num_masks
    if num_classes < 1:
        raise ValueError(f"output0 rows have {pred.shape[1]} values; need 5 + classes + {num_masks} (protos)")
    objectness = pred[:, 4]
    class_scores = pred[:, 5 : 5 + num_classes]
    best_class = np.argmax(class_scores, axis=1)
    if score == "product":
        conf = objectness * np.take_along_axis(class_scores, best_class[:, np.newaxis], axis=1)[:, 0]
    else:
        conf = objectness
    cand = np.flatnonzero(conf > confidence)
    return _proto_detections(
        xywh_to_xyxy(pred[cand, 0:4]),
        conf[cand].astype(np.float32),
        best_class[cand].astype(np.int64),
        pred[cand, 5 + num_classes :],
        protos_chw,
        placement=placement,
        input_hw=input_hw,
        frame_hw=frame_hw,
        overlap=overlap,
        max_detections=max_detections,
    )


def decode_end2end_seg(
    output0: NDArray[np.floating[Any]],
    protos: NDArray[np.floating[Any]],
    *,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    max_detections: int = 300,
) -> Detections:
    """NMS-free YOLO (YOLO26 ``end2end``): ``output0 [1, K, 6+nm]`` = ``x1, y1, x2, y2`` (input pixels), score,
    class index, ``nm`` coefficients. Kept: ``score > confidence``, highest first, at most ``max_detections``;
    no NMS (the model has done it), so ``overlap`` does not apply.
    """
    pred = _squeeze_batch(output0, 2, "output0")
    protos_chw = _squeeze_batch(protos, 3, "protos")
    num_masks = protos_chw.shape[0]
    if pred.shape[1] != 6 + num_masks:
        raise ValueError(f"output0 rows have {pred.shape[1]} values; an end-to-end export has 6 + {num_masks}")
    cand = np.flatnonzero(pred[:, 4] > confidence)
    return _proto_detections(
        np.asarray(pred[cand, 0:4], dtype=np.float32),
        pred[cand, 4].astype(np.float32),
        np.rint(pred[cand, 5]).astype(np.int64),
        pred[cand, 6:],
        protos_chw,
        placement=placement,
        input_hw=input_hw,
        frame_hw=frame_hw,
        overlap=None,
        max_detections=max_detections,
    )


def decode_rfdetr_seg(
    dets: NDArray[np.floating[Any]],
    labels: NDArray[np.floating[Any]],
    masks: NDArray[np.floating[Any]],
    *,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    max_detections: int = 300,
    num_classes: int | None = None,
    background_slot: int | None = None,
) -> Detections:
    """RF-DETR segmentation, as RF-DETR's ``PostProcess`` and Roboflow's server decode it.

    Scores = sigmoid(labels) per query and class; the ``max_detections`` best (query, class) pairs over all
    ``Q x C`` are taken, then ``score > confidence`` (a query may come back with two classes). No NMS.
    ``background_slot`` (Roboflow's ``background_class83422``) is dropped and the slots after it shift down
    by one; then slots ``>= num_classes`` (RF-DETR's unused no-object slot) are dropped. Boxes: normalised
    ``cx, cy, w, h`` of the input, through the placement to frame pixels. Masks: logits > 0, bilinear.
    """
    boxes_q4 = _squeeze_batch(dets, 2, "dets")
    logits_qc = _squeeze_batch(labels, 2, "labels")
    masks_qhw = _squeeze_batch(masks, 3, "masks")
    num_queries, slots = logits_qc.shape
    if boxes_q4.shape != (num_queries, 4) or masks_qhw.shape[0] != num_queries:
        raise ValueError(
            f"RF-DETR outputs disagree: dets {boxes_q4.shape}, labels {logits_qc.shape}, masks {masks_qhw.shape}"
        )
    if max_detections <= 0 or logits_qc.size == 0:
        return Detections.empty()
    flat = _sigmoid(logits_qc).reshape(-1)
    top = np.argsort(-flat, kind="stable")[: min(max_detections, flat.size)]
    top = top[flat[top] > confidence]
    query, cls = top // slots, (top % slots).astype(np.int64)
    if background_slot is not None:
        keep = cls != background_slot
        query, cls, top = query[keep], cls[keep], top[keep]
        cls[cls > background_slot] -= 1
    if num_classes is not None:
        keep = cls < num_classes
        query, cls, top = query[keep], cls[keep], top[keep]
    in_h, in_w = input_hw
    scale = np.array([in_w, in_h, in_w, in_h], dtype=np.float32)
    boxes = boxes_to_frame(xywh_to_xyxy(boxes_q4[query]) * scale, placement, frame_hw)

    def mask_of(row: int, _box: NDArray[np.float32]) -> tuple[NDArray[np.uint8], tuple[int, int]]:
        return logit_mask(masks_qhw[query[row]], placement, input_hw, frame_hw)

    return _assemble(boxes, flat[top].astype(np.float32), cls, mask_of)
