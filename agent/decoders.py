"""Pure decoders: each supported format's raw outputs to :class:`~agent.detections.Detections` in frame pixels.

One function per layout (contract §3). The way of one frame::

    prepare(frame) / letterbox(frame) -> session.run -> decode_...(outputs, ...) -> Detections

* :func:`decode_yolov8_seg`: ``output0 [1, 4+nc+nm, N]`` (``cx, cy, w, h``, class scores) + prototypes, under
  the Ultralytics letterbox (:class:`~agent.placement.LetterboxParams`): the agent's per-frame hot path;
* :func:`decode_yolov8_placed`: the same layout under any :class:`~agent.placement.Placement` (a Roboflow
  package's resize, a static crop);
* :func:`decode_yolov5_seg`: ``output0 [1, N, 5+nc+nm]`` (``cx, cy, w, h``, objectness, class scores) +
  prototypes; score = objectness x class score (Ultralytics) or objectness alone (Roboflow's server);
* :func:`decode_end2end_seg`: ``output0 [1, K, 6+nm]`` (``x1, y1, x2, y2``, score, class) + prototypes,
  NMS-free (YOLO26 ``end2end``);
* :func:`decode_rfdetr_seg`: ``dets [1, Q, 4]`` (normalised ``cx, cy, w, h``), ``labels [1, Q, C]``
  (logits, one sigmoid per class), ``masks [1, Q, H/4, W/4]`` (logits), NMS-free.

Conventions: a candidate is kept when its score is strictly greater than ``confidence`` (as Ultralytics'
``non_max_suppression``); class-aware NMS suppressing ``IoU > overlap`` in input pixels (:mod:`agent.nms`), at
most ``max_detections``, highest confidence first; boxes back through the placement (:mod:`agent.placement`);
masks from :mod:`agent.masks`: cropped to the box for prototype masks (as Ultralytics and Roboflow crop them),
around the positive cells for RF-DETR's mask logits (not cropped to the box, as RF-DETR's own
post-processing and Roboflow's server leave them); polygon = outer contour of the mask's largest part
(:mod:`agent.polygons`; every decoder's ``polygons=`` :class:`~agent.polygons.PolygonOptions` asks for a
simplification tolerance and for every part and hole, ``Detections.rings``); detections without a 3-point
polygon are dropped (after the ``max_detections`` cap, as Roboflow's server drops them when it serialises, so
fewer than ``max_detections`` may come back even when more candidates exist).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from agent.detections import Detections
from agent.masks import logit_masks, proto_masks_in_boxes, sigmoid
from agent.nms import MAX_NMS_CANDIDATES, nms_xyxy, xywh_to_xyxy
from agent.placement import LetterboxParams, Placement, boxes_to_frame, check_hw, letterbox_placement
from agent.polygons import EXACT, PolygonOptions, Ring, mask_polygon_at, mask_rings_at

__all__ = [
    "decode_end2end_seg",
    "decode_rfdetr_seg",
    "decode_yolov5_seg",
    "decode_yolov8_placed",
    "decode_yolov8_seg",
]

_Masks = Iterable[tuple[int, NDArray[np.uint8], int, int]]


def _squeeze_batch(array: NDArray[Any], ndim: int, what: str) -> NDArray[Any]:
    out = np.asarray(array)
    if out.ndim == ndim + 1:
        out = out[0]
    if out.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions (after the batch), got shape {np.shape(array)}")
    return out


def _yolo_outputs(output0: NDArray[Any], protos: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any], int]:
    """A YOLO layout's ``output0`` (2-D) and prototypes (``(nm, h, w)``) without the batch, and ``nm``."""
    pred = _squeeze_batch(output0, 2, "output0")
    protos_chw = _squeeze_batch(protos, 3, "protos")
    return pred, protos_chw, int(protos_chw.shape[0])


def _assemble(
    boxes_xyxy: NDArray[np.float32],
    scores: NDArray[np.float32],
    classes: NDArray[np.int64],
    masks: _Masks,
    options: PolygonOptions = EXACT,
) -> Detections:
    """Detections of the rows whose mask has a polygon of at least 3 points, in row order; ``options``: the
    polygons' tolerance, and every part and hole (``Detections.rings``) when asked."""
    polygons: list[NDArray[np.float32]] = []
    rings: list[list[Ring]] | None = [] if options.rings else None
    rows: list[int] = []
    tolerance = options.tolerance_px
    for row, mask_hw, x0, y0 in masks:
        if not mask_hw.size:
            continue
        if rings is None:
            polygon = mask_polygon_at(mask_hw, x0, y0, tolerance)
            if polygon is not None:
                polygons.append(polygon)
                rows.append(row)
            continue
        # One contour pass for both: the first ring is the largest part's outline, mask_polygon_at's polygon.
        found = mask_rings_at(mask_hw, x0, y0, tolerance)
        if found:
            polygons.append(found[0][0])
            rows.append(row)
            rings.append(found)
    if not rows:
        return Detections.empty() if rings is None else Detections.empty_with_rings()
    kept = np.asarray(rows, dtype=np.int64)
    return Detections(
        boxes_xyxy=np.ascontiguousarray(boxes_xyxy[kept]),
        confidence=np.ascontiguousarray(scores[kept], dtype=np.float32),
        class_id=np.ascontiguousarray(classes[kept], dtype=np.int64),
        polygons=polygons,
        rings=rings,
    )


class _Candidates(NamedTuple):
    """Anchors past the confidence filter: boxes in input pixels, scores and classes, and ``coeffs_of(rows)``,
    the ``(k, nm)`` mask coefficients of those rows (asked for the kept ones only)."""

    boxes_in_xyxy: NDArray[np.float32]
    scores: NDArray[np.float32]
    classes: NDArray[np.int64]
    coeffs_of: Callable[[NDArray[np.intp]], NDArray[np.floating[Any]]]


def _proto_detections(
    cands: _Candidates,
    protos_chw: NDArray[np.floating[Any]],
    placement: Placement,
    sizes: tuple[tuple[int, int], tuple[int, int]],
    overlap: float | None,
    max_detections: int,
    fast_letterbox: bool = False,
    options: PolygonOptions = EXACT,
) -> Detections:
    """Candidates -> NMS (``overlap`` None: none) -> frame boxes -> box-cropped masks -> polygons.

    ``sizes``: ``(input_hw, frame_hw)``; ``fast_letterbox``: :func:`~agent.masks.proto_masks_in_boxes`';
    ``options``: :func:`_assemble`'s.
    """
    boxes_in_xyxy, scores, classes, coeffs_of = cands
    input_hw, frame_hw = sizes
    empty = Detections.empty_with_rings() if options.rings else Detections.empty()
    if scores.size == 0 or max_detections <= 0:
        return empty
    picked: NDArray[np.intp] | None = None
    if scores.size > MAX_NMS_CANDIDATES:
        picked = np.sort(np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES])
        boxes_in_xyxy, scores, classes = boxes_in_xyxy[picked], scores[picked], classes[picked]
    if overlap is None:
        keep = np.argsort(-scores, kind="stable")[:max_detections]
    else:
        keep = nms_xyxy(boxes_in_xyxy, scores, classes, overlap, max_keep=max_detections)
    if keep.size == 0:
        return empty
    boxes = boxes_to_frame(boxes_in_xyxy[keep], placement, frame_hw)
    coeffs = coeffs_of(keep if picked is None else picked[keep])
    masks = proto_masks_in_boxes(
        coeffs, protos_chw, boxes, placement, input_hw, frame_hw, fast_letterbox=fast_letterbox
    )
    return _assemble(boxes, scores[keep], classes[keep], masks, options)


def _yolov8_candidates(pred: NDArray[Any], num_classes: int, confidence: float) -> _Candidates:
    """``pred`` ``(4 + nc + nm, N)``: anchors whose best class score is above ``confidence``."""
    class_scores = pred[4 : 4 + num_classes]
    best_score = class_scores.max(axis=0)  # a max down the rows is cheaper than an argmax; argmax only below
    cand = np.flatnonzero(best_score > confidence)
    return _Candidates(
        xywh_to_xyxy(pred[0:4, cand].T),
        best_score[cand].astype(np.float32),
        np.argmax(class_scores[:, cand], axis=0).astype(np.int64),
        lambda rows: pred[4 + num_classes :, cand[rows]].T,
    )


def _yolov5_candidates(
    pred: NDArray[Any], num_classes: int, confidence: float, score: Literal["product", "objectness"]
) -> _Candidates:
    """``pred`` ``(N, 5 + nc + nm)``: anchors whose score (see :func:`decode_yolov5_seg`) is above ``confidence``."""
    objectness = pred[:, 4]
    class_scores = pred[:, 5 : 5 + num_classes]
    best_class = np.argmax(class_scores, axis=1)
    if score == "product":
        conf = objectness * np.take_along_axis(class_scores, best_class[:, np.newaxis], axis=1)[:, 0]
    else:
        conf = objectness
    cand = np.flatnonzero(conf > confidence)
    return _Candidates(
        xywh_to_xyxy(pred[cand, 0:4]),
        conf[cand].astype(np.float32),
        best_class[cand].astype(np.int64),
        lambda rows: pred[cand[rows], 5 + num_classes :],
    )


def _end2end_candidates(pred: NDArray[Any], confidence: float) -> _Candidates:
    """``pred`` ``(K, 6 + nm)``: the rows whose score is above ``confidence``."""
    cand = np.flatnonzero(pred[:, 4] > confidence)
    return _Candidates(
        np.asarray(pred[cand, 0:4], dtype=np.float32),
        pred[cand, 4].astype(np.float32),
        np.rint(pred[cand, 5]).astype(np.int64),
        lambda rows: pred[cand[rows], 6:],
    )


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
    polygons: PolygonOptions = EXACT,
) -> Detections:
    """Detections in frame pixels from a YOLOv8/YOLO11-seg export's two outputs, under the letterbox.

    ``output0``: ``(1, 4 + nc + nm, N)`` or ``(4 + nc + nm, N)``: ``cx, cy, w, h`` in input pixels, ``nc``
    class scores (already sigmoid), ``nm`` mask coefficients. ``protos``: ``(1, nm, H/4, W/4)`` or
    ``(nm, H/4, W/4)``. Steps: best class per candidate; keep ``score > confidence``; at most
    ``MAX_NMS_CANDIDATES`` highest; class-aware NMS (suppress ``IoU > overlap``) in input pixels, keeping at
    most ``max_detections``; boxes back through the letterbox, clipped to the frame; a mask per box decoded
    only inside the box (:mod:`agent.masks`' letterbox sampling); polygon = outer contour of its largest part.
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
        return Detections.empty_with_rings() if polygons.rings else Detections.empty()
    input_hw, frame_hw = check_hw("input_hw", input_hw), check_hw("frame_hw", frame_hw)
    placement = letterbox_placement(params, frame_hw, input_hw)
    cands = _yolov8_candidates(pred, num_classes, confidence)
    sizes = (input_hw, frame_hw)
    return _proto_detections(cands, protos_chw, placement, sizes, overlap, max_detections, True, polygons)


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
    polygons: PolygonOptions = EXACT,
) -> Detections:
    """YOLOv8 / YOLO11 ``-seg`` layout under any placement (a Roboflow package's resize, a static crop)."""
    pred, protos_chw, num_masks = _yolo_outputs(output0, protos)
    num_classes = pred.shape[0] - 4 - num_masks
    if num_classes < 1:
        raise ValueError(f"output0 has {pred.shape[0]} rows; needs 4 + classes + {num_masks} (protos)")
    cands = _yolov8_candidates(pred, num_classes, confidence)
    sizes = (input_hw, frame_hw)
    return _proto_detections(cands, protos_chw, placement, sizes, overlap, max_detections, options=polygons)


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
    polygons: PolygonOptions = EXACT,
) -> Detections:
    """YOLOv5-seg: ``output0 [1, N, 5+nc+nm]``, rows ``cx, cy, w, h, objectness, nc class scores, nm coeffs``.

    ``score="product"``: confidence = objectness x best class score (Ultralytics YOLOv5's NMS);
    ``"objectness"``: confidence = objectness, class = best class (Roboflow's server for ``yolov5*-seg``).
    """
    pred, protos_chw, num_masks = _yolo_outputs(output0, protos)
    num_classes = pred.shape[1] - 5 - num_masks
    if num_classes < 1:
        raise ValueError(f"output0 rows have {pred.shape[1]} values; need 5 + classes + {num_masks} (protos)")
    cands = _yolov5_candidates(pred, num_classes, confidence, score)
    sizes = (input_hw, frame_hw)
    return _proto_detections(cands, protos_chw, placement, sizes, overlap, max_detections, options=polygons)


def decode_end2end_seg(
    output0: NDArray[np.floating[Any]],
    protos: NDArray[np.floating[Any]],
    *,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    max_detections: int = 300,
    polygons: PolygonOptions = EXACT,
) -> Detections:
    """NMS-free YOLO (YOLO26 ``end2end``): ``output0 [1, K, 6+nm]`` = ``x1, y1, x2, y2`` (input pixels), score,
    class index, ``nm`` coefficients. Kept: ``score > confidence``, highest first, at most ``max_detections``;
    no NMS (the model has done it), so ``overlap`` does not apply.
    """
    pred, protos_chw, num_masks = _yolo_outputs(output0, protos)
    if pred.shape[1] != 6 + num_masks:
        raise ValueError(f"output0 rows have {pred.shape[1]} values; an end-to-end export has 6 + {num_masks}")
    cands = _end2end_candidates(pred, confidence)
    sizes = (input_hw, frame_hw)
    return _proto_detections(cands, protos_chw, placement, sizes, None, max_detections, options=polygons)


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
    polygons: PolygonOptions = EXACT,
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
        return Detections.empty_with_rings() if polygons.rings else Detections.empty()
    flat = sigmoid(logits_qc).reshape(-1)
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
    instance_masks = logit_masks(masks_qhw, query, placement, input_hw, frame_hw)
    return _assemble(boxes, flat[top].astype(np.float32), cls, instance_masks, polygons)
