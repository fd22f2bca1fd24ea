"""Boxes and greedy class-aware non-maximum suppression, as pure NumPy.

Conventions: ``boxes_xyxy`` is ``(n, 4)`` corners, ``boxes_xywh`` is ``(n, 4)`` centre x, centre y, width,
height. NMS is greedy and class-aware: a box is suppressed by a higher-scoring box of the same class when
their IoU is strictly greater than the threshold (``IoU > overlap``), as ``torchvision.ops.nms`` does; equal
scores keep their input order. At most :data:`MAX_NMS_CANDIDATES` candidates enter it, as Ultralytics caps.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_NMS_CANDIDATES", "box_iou_xyxy", "nms_xyxy", "xywh_to_xyxy"]

MAX_NMS_CANDIDATES = 30_000
"""At most this many candidates (the highest scores) enter NMS, as Ultralytics caps them."""

_NMS_PAIR_CHUNK = 1 << 16  # candidate pairs whose IoU is computed at once (bounds the memory)
_NMS_PAIR_LIMIT = 1 << 18  # more overlapping same-class pairs than this: one vector operation per kept box


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
    corners = tuple(np.ascontiguousarray(boxes[:, k]) for k in range(4))
    x1, y1, x2, y2 = corners
    area = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    # A box without area (or with a non-finite corner) has IoU 0 with every box: it never suppresses or is
    # suppressed, so only the others are swept.
    live = np.flatnonzero(np.isfinite(boxes).all(axis=1) & (area > 0))
    if live.size < 2:
        return np.arange(min(n, limit))
    sweep, counts = _sweep_order(x1, x2, classes, live)
    ends = np.cumsum(counts)
    if int(ends[-1]) > _NMS_PAIR_LIMIT:
        return None
    pairs = _pairs_over(corners, area, sweep, counts, ends, threshold)
    if pairs is None:
        return np.arange(min(n, limit))
    return _greedy_keep(*pairs, n)[:limit]


def _sweep_order(
    x1: NDArray[np.float64], x2: NDArray[np.float64], classes: NDArray[np.integer], live: NDArray[np.intp]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The live boxes in sweep order and, per position, how many boxes after it its x-span may reach.

    Sort key: class blocks far apart, x1 within a block; box i can only overlap the boxes after it whose
    key is below key_i + width_i (a slightly wider reach is harmless: every pair is checked exactly).
    """
    left = float(x1[live].min())
    span = float(x2[live].max()) - left + 1.0
    _, class_rank = np.unique(classes[live], return_inverse=True)
    key = class_rank.reshape(-1) * (2.0 * span) + (x1[live] - left)
    order = np.argsort(key, kind="stable")
    sweep = live[order]
    key = key[order]
    reach = key + (x2[sweep] - x1[sweep]) * (1.0 + 1e-9) + span * 1e-9
    counts = np.maximum(np.searchsorted(key, reach, side="right") - np.arange(sweep.size) - 1, 0)
    return sweep, counts


def _pairs_over(
    corners: tuple[NDArray[np.float64], ...],
    area: NDArray[np.float64],
    sweep: NDArray[np.intp],
    counts: NDArray[np.intp],
    ends: NDArray[np.intp],
    threshold: float,
) -> tuple[NDArray[np.intp], NDArray[np.intp]] | None:
    """``(higher, lower)`` score ranks of every same-class pair with IoU above ``threshold``, or None if none.

    The candidate pairs (each sweep position with the ``counts`` after it) are listed ``_NMS_PAIR_CHUNK``
    at a time, which bounds the memory.
    """
    x1, y1, x2, y2 = corners
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
        return None
    return np.concatenate(lo_parts), np.concatenate(hi_parts)


def _greedy_keep(lo_arr: NDArray[np.intp], hi_arr: NDArray[np.intp], n: int) -> NDArray[np.intp]:
    """Ranks of the boxes kept by greedy NMS over ``n`` boxes, given the suppressing pairs (``lo`` outranks
    ``hi``): one pass in score order over plain lists, no NumPy call per box."""
    by_lo = np.argsort(lo_arr, kind="stable")
    lo = lo_arr[by_lo].tolist()
    hi = hi_arr[by_lo].tolist()
    removed = bytearray(n)
    k, pairs = 0, len(lo)
    while k < pairs:  # greedy in score order: a box suppresses its partners only if it was not suppressed
        here = lo[k]
        alive = not removed[here]
        while k < pairs and lo[k] == here:
            if alive:
                removed[hi[k]] = 1
            k += 1
    return np.flatnonzero(np.frombuffer(bytes(removed), dtype=np.uint8) == 0)


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
