"""The split-head YOLOv8-seg layout: a model whose box and class decode was taken out of the graph.

``seg-agent optimize`` (and ``seg-agent quantize`` by default) cut the decode tail off an Ultralytics
YOLOv8/YOLO11-seg export or the demo architecture (:mod:`agent.head_cut`): the model then returns the raw
per-anchor tensors and its metadata key :data:`HEAD_KEY` says how to decode them (:class:`SplitHead`):

* ``boxes [1, 4*reg_max, N]``: Ultralytics' distribution logits (``box="dfl"``: per side a softmax over
  ``reg_max`` bins, the expectation is the side's distance in grid cells), or ``[1, 4, N]`` distances to
  the four sides in strides (``box="ltrb"``, the demo architecture: already through its Softplus; or
  ``box="softplus"``: before it, the Softplus applied here on the candidates);
* ``scores [1, nc, N]``: class logits (the sigmoid is applied here, on the candidates only);
* ``coeffs [1, nm, N]``: mask coefficients; ``protos [1, nm, H/4, W/4]``: prototypes, as before.

A *packed* head (``packed``, :mod:`agent.head_pack`) has the first three as one anchor-major output ``[1, N,
4*reg_max + nc + nm]`` (columns: box, class logits, coefficients) beside the prototypes: the per-level 1x1
output convolutions become one matrix product per level, in the layout ONNX Runtime's int8 kernels already
hold, with no transposes back.

Anchors are rebuilt from the recorded ``strides`` and ``grids`` (cell centres, row-major, level after
level, as both exporters lay them out). :func:`decode_yolov8_split` thresholds the class logits first
(``sigmoid(x) > c`` is ``x > log(c / (1 - c))``), then computes scores, softmax, expectation and boxes in
NumPy for the candidates only, with the same float32 operations in the same order as the graph did, and
hands them to the same NMS / mask / polygon path as :func:`~agent.decoders.decode_yolov8_seg`.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from agent.decoders import _Candidates, _proto_detections, _squeeze_batch  # the shared decode path
from agent.detections import Detections
from agent.formats import FormatError, Layout, Port
from agent.masks import sigmoid
from agent.nms import xywh_to_xyxy
from agent.placement import Placement, check_hw
from agent.polygons import EXACT, PolygonOptions

__all__ = [
    "HEAD_KEY",
    "LAYOUT_NAME",
    "SplitHead",
    "anchor_grid",
    "boxes_xywh",
    "decode_yolov8_split",
    "split_head_from_metadata",
    "split_layout",
    "split_outputs",
]

HEAD_KEY = "seg_agent_head"
"""The metadata key of a split-head model: :meth:`SplitHead.to_json`."""
LAYOUT_NAME = "yolov8-split-head"
BoxKind = Literal["dfl", "ltrb", "softplus"]
_LOGIT_MARGIN = 0.01
"""Logit slack of the pre-filter: candidates are then kept by their float32 score, as the graph kept them."""


@dataclass(frozen=True, slots=True)
class SplitHead:
    """How to decode a split-head model's outputs (the metadata :data:`HEAD_KEY`)."""

    box: BoxKind
    reg_max: int  # bins per side for "dfl"; 1 for "ltrb" and "softplus"
    strides: tuple[int, ...]
    grids: tuple[tuple[int, int], ...]  # (h, w) cells per level
    outputs: tuple[str, ...]  # boxes, scores, coeffs, protos; packed: head, protos
    packed: bool = False

    def __post_init__(self) -> None:
        if self.box not in ("dfl", "ltrb", "softplus"):
            raise ValueError(f"box must be dfl, ltrb or softplus, got {self.box!r}")
        if self.reg_max < 1 or (self.box != "dfl" and self.reg_max != 1):
            raise ValueError(f"reg_max {self.reg_max} does not fit box {self.box!r}")
        if not self.strides or len(self.strides) != len(self.grids):
            raise ValueError(f"{len(self.strides)} strides for {len(self.grids)} grids")
        if any(s < 1 for s in self.strides) or any(h < 1 or w < 1 for h, w in self.grids):
            raise ValueError(f"strides {self.strides} and grids {self.grids} must be positive")
        count = 2 if self.packed else 4
        if len(self.outputs) != count or len(set(self.outputs)) != count:
            raise ValueError(f"outputs must be {count} distinct names, got {self.outputs}")

    @property
    def anchors(self) -> int:
        return sum(h * w for h, w in self.grids)

    @property
    def box_rows(self) -> int:
        return 4 * self.reg_max

    def to_json(self) -> str:
        return json.dumps(
            {
                "layout": LAYOUT_NAME,
                "box": self.box,
                "reg_max": self.reg_max,
                "strides": list(self.strides),
                "grids": [list(g) for g in self.grids],
                "scores": "logits",
                "outputs": list(self.outputs),
                "packed": self.packed,
            }
        )


def split_head_from_metadata(metadata: Mapping[str, str]) -> SplitHead | None:
    """The :class:`SplitHead` of a model's metadata, ``None`` when it has none; ``ValueError`` when malformed."""
    text = metadata.get(HEAD_KEY)
    if text is None:
        return None
    try:
        value = json.loads(text)
        if value.get("layout") != LAYOUT_NAME or value.get("scores") != "logits":
            raise ValueError(f"layout {value.get('layout')!r}, scores {value.get('scores')!r}")
        return SplitHead(
            box=value["box"],
            reg_max=int(value["reg_max"]),
            strides=tuple(int(s) for s in value["strides"]),
            grids=tuple((int(h), int(w)) for h, w in value["grids"]),
            outputs=tuple(str(n) for n in value["outputs"]),
            packed=bool(value.get("packed", False)),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"metadata {HEAD_KEY} is not a {LAYOUT_NAME} description: {exc}") from None


def split_layout(head: SplitHead, ports: Sequence[Port]) -> Layout:
    """The :class:`~agent.formats.Layout` (kind ``yolov8``, the head's outputs) of a split-head model whose
    outputs are ``ports``; :class:`~agent.formats.FormatError` when they disagree."""
    by_name = {p.name: p.shape for p in ports}
    missing = [n for n in head.outputs if n not in by_name]
    if missing:
        raise FormatError(f"{LAYOUT_NAME}: the metadata names outputs {missing} that the graph does not have")
    n = head.anchors
    if head.packed:
        packed, protos = (by_name[name] for name in head.outputs)
        ok = len(packed) == 3 and len(protos) == 4 and packed[1] == n
        classes = packed[2] - head.box_rows - protos[1] if ok else 0
        if not ok or classes < 1:
            raise FormatError(
                f"{LAYOUT_NAME}: packed outputs {list(packed)}, {list(protos)} do not fit "
                f"[1, {n}, {head.box_rows} + classes + nm], [1, nm, h, w]"
            )
        return Layout("yolov8", head.outputs, classes, protos[1])
    boxes, scores, coeffs, protos = (by_name[name] for name in head.outputs)
    ok = (
        len(boxes) == len(scores) == len(coeffs) == 3
        and len(protos) == 4
        and boxes[1:] == (head.box_rows, n)
        and scores[2] == n
        and coeffs[2] == n
        and coeffs[1] == protos[1]
        and scores[1] >= 1
    )
    if not ok:
        raise FormatError(
            f"{LAYOUT_NAME}: outputs {list(boxes)}, {list(scores)}, {list(coeffs)}, {list(protos)} do not fit "
            f"[1, {head.box_rows}, {n}], [1, classes, {n}], [1, nm, {n}], [1, nm, h, w]"
        )
    return Layout("yolov8", head.outputs, scores[1], protos[1])


@functools.lru_cache(maxsize=8)
def anchor_grid(
    strides: tuple[int, ...], grids: tuple[tuple[int, int], ...]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(anchors_n2, strides_n)``: cell centres ``(x + 0.5, y + 0.5)`` in cells, row-major per level, and
    each anchor's stride (read-only arrays, shared)."""
    centres, per_anchor = [], []
    for stride, (h, w) in zip(strides, grids, strict=True):
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        centres.append(np.stack([xx.ravel(), yy.ravel()], axis=1))
        per_anchor.append(np.full(h * w, stride, dtype=np.float32))
    anchors, steps = np.concatenate(centres), np.concatenate(per_anchor)
    anchors.setflags(write=False)
    steps.setflags(write=False)
    return anchors, steps


def boxes_xywh(head: SplitHead, boxes_raw: NDArray[Any], rows: NDArray[np.intp]) -> NDArray[np.float32]:
    """``(k, 4)`` ``cx, cy, w, h`` in input pixels of the anchors ``rows`` from the raw box output
    ``(4 * reg_max, N)``, computed as the exporters' graphs compute them (same operations, same order)."""
    anchors, steps = anchor_grid(head.strides, head.grids)
    centre = anchors[rows].T  # (2, k)
    stride = steps[rows]
    raw = np.asarray(boxes_raw[:, rows], dtype=np.float32)
    if head.box == "softplus":  # the demo's Softplus, out of the graph: on the candidates only
        raw = np.logaddexp(np.float32(0), raw)
    if head.box == "dfl":  # Ultralytics: softmax per side, expectation in cells, dist2bbox, then x stride
        logits = raw.reshape(4, head.reg_max, rows.size)
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=1, keepdims=True)
        dist = np.einsum("srk,r->sk", weights, np.arange(head.reg_max, dtype=np.float32))
        x1y1, x2y2 = centre - dist[:2], centre + dist[2:]
        xywh = np.concatenate([(x1y1 + x2y2) / np.float32(2), x2y2 - x1y1]) * stride
    else:  # the demo architecture (ltrb, softplus): distances x stride first, anchors in pixels
        dist = raw * stride
        centre_px = centre * stride
        x1y1, x2y2 = centre_px - dist[:2], centre_px + dist[2:]
        xywh = np.concatenate([(x1y1 + x2y2) / np.float32(2), x2y2 - x1y1])
    return np.ascontiguousarray(xywh.T, dtype=np.float32)


def _logit(confidence: float) -> float:
    if confidence <= 0.0:
        return -math.inf
    if confidence >= 1.0:
        return math.inf
    return math.log(confidence / (1.0 - confidence))


def _split_candidates(
    head: SplitHead, boxes_raw: NDArray[Any], logits: NDArray[Any], coeffs: NDArray[Any], confidence: float
) -> _Candidates:
    """Anchors whose best class score is above ``confidence``: a cheap pre-filter on the logits, then the
    float32 sigmoid of the few left decides, as the graph's sigmoid scores did."""
    threshold = _logit(confidence)
    logits = np.ascontiguousarray(
        logits
    )  # a packed head's class columns: NumPy's max over a strided view is ~15x slower
    best_logit = logits.max(axis=0)
    rough = np.flatnonzero(best_logit > threshold - _LOGIT_MARGIN * (1.0 + abs(threshold)))
    class_scores = sigmoid(logits[:, rough])
    best = class_scores.max(axis=0) if rough.size else np.zeros(0, dtype=np.float32)
    kept = best > confidence
    cand = rough[kept]
    return _Candidates(
        xywh_to_xyxy(boxes_xywh(head, boxes_raw, cand)),
        best[kept].astype(np.float32),
        np.argmax(class_scores[:, kept], axis=0).astype(np.int64),
        lambda rows: coeffs[:, cand[rows]].T,
    )


def split_outputs(
    head: SplitHead, outputs: Sequence[NDArray[np.floating[Any]]]
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:
    """``(boxes_rn, logits_cn, coeffs_mn, protos_chw)`` of a split-head model's outputs (batch dimension
    optional), channel-major (views of a packed output); ``ValueError`` when they do not fit the head."""
    what = "decode_yolov8_split"
    if len(outputs) != len(head.outputs):
        raise ValueError(f"{what}: {len(outputs)} outputs for a head of {len(head.outputs)}")
    protos_chw = _squeeze_batch(outputs[-1], 3, f"{what}: protos")
    n, rows, nm = head.anchors, head.box_rows, protos_chw.shape[0]
    if head.packed:
        packed_nc = _squeeze_batch(outputs[0], 2, f"{what}: packed head")
        if packed_nc.shape[0] != n or packed_nc.shape[1] < rows + nm:
            raise ValueError(
                f"{what}: packed head {packed_nc.shape}, protos {protos_chw.shape} do not fit {rows} box columns, "
                f"{nm} coefficients and {n} anchors"
            )
        columns = packed_nc.T
        return columns[:rows], columns[rows : packed_nc.shape[1] - nm], columns[packed_nc.shape[1] - nm :], protos_chw
    boxes_rn = _squeeze_batch(outputs[0], 2, f"{what}: boxes")
    logits_cn = _squeeze_batch(outputs[1], 2, f"{what}: scores")
    coeffs_mn = _squeeze_batch(outputs[2], 2, f"{what}: coeffs")
    if boxes_rn.shape != (rows, n) or logits_cn.shape[1] != n or coeffs_mn.shape != (nm, n):
        raise ValueError(
            f"{what}: boxes {boxes_rn.shape}, scores {logits_cn.shape}, coeffs {coeffs_mn.shape}, "
            f"protos {protos_chw.shape} do not fit {rows} box rows and {n} anchors"
        )
    return boxes_rn, logits_cn, coeffs_mn, protos_chw


def decode_yolov8_split(
    outputs: Sequence[NDArray[np.floating[Any]]],
    *,
    head: SplitHead,
    placement: Placement,
    input_hw: tuple[int, int],
    frame_hw: tuple[int, int],
    confidence: float,
    overlap: float,
    max_detections: int = 300,
    polygons: PolygonOptions = EXACT,
    fast_letterbox: bool = False,
) -> Detections:
    """Detections in frame pixels from a split-head model's outputs (module doc; four, or two when packed),
    batch dimension optional: the same result as :func:`~agent.decoders.decode_yolov8_seg` of the uncut
    model's outputs. ``fast_letterbox``: the placement is the Ultralytics letterbox (:mod:`agent.masks`' fast
    sampling)."""
    boxes_rn, logits_cn, coeffs_mn, protos_chw = split_outputs(head, outputs)
    if max_detections <= 0 or logits_cn.shape[0] == 0:
        return Detections.empty_with_rings() if polygons.rings else Detections.empty()
    sizes = (check_hw("input_hw", input_hw), check_hw("frame_hw", frame_hw))
    cands = _split_candidates(head, boxes_rn, logits_cn, coeffs_mn, confidence)
    return _proto_detections(cands, protos_chw, placement, sizes, overlap, max_detections, fast_letterbox, polygons)
