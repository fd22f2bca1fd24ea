"""Box geometry of the tracker: pure NumPy functions over (n, 4) boxes, named by their layouts.

``xyxy`` is corners (x1, y1, x2, y2), ``cxcywh`` centre and size, in frame pixels; an ``_nm`` result is an
(n, m) matrix of every row of the first argument against every row of the second. Re-exported by
:mod:`agent.tracking`, whose association uses them; tested by tables in ``tests/test_tracking.py``. Also the
two ends of the tracking stage over API predictions: reading their boxes and scores in one NumPy pass, and
tagging the confirmed ones with ``tracker_id`` (copies; the caller's dicts are not changed).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "cxcywh_to_xyxy",
    "iou_nm_xyxy",
    "predictions_xyxy",
    "read_predictions",
    "refind_cost_nm",
    "refind_near_nm",
    "tag_predictions",
    "xyxy_to_cxcywh",
]

F64 = npt.NDArray[np.float64]

_EPS = 1e-9


def xyxy_to_cxcywh(boxes_xyxy: F64) -> F64:
    """(n, 4) corners to (n, 4) centre and size."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) / 2
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2
    out[:, 2] = b[:, 2] - b[:, 0]
    out[:, 3] = b[:, 3] - b[:, 1]
    return out


def cxcywh_to_xyxy(boxes_cxcywh: F64) -> F64:
    """(n, 4) centre and size to (n, 4) corners."""
    b = np.asarray(boxes_cxcywh, dtype=np.float64).reshape(-1, 4)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out = np.empty_like(b)
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def iou_nm_xyxy(a_xyxy: F64, b_xyxy: F64) -> F64:
    """(n, m) IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4); 0 where a union is empty."""
    a = np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b_xyxy, dtype=np.float64).reshape(-1, 4)
    # one (n, m) array per quantity, not (n, m, 2) ones, updated in place: the same arithmetic, fewer passes
    inter = np.minimum(a[:, 2:3], b[None, :, 2])
    inter -= np.maximum(a[:, 0:1], b[None, :, 0])
    np.maximum(inter, 0.0, out=inter)
    ih = np.minimum(a[:, 3:4], b[None, :, 3])
    ih -= np.maximum(a[:, 1:2], b[None, :, 1])
    np.maximum(ih, 0.0, out=ih)
    inter *= ih
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    empty = ~(union > _EPS)  # NaN too, as before
    np.maximum(union, _EPS, out=union)
    inter /= union
    inter[empty] = 0.0
    return inter


def refind_cost_nm(tracks_cxcywh: F64, dets_cxcywh: F64) -> F64:
    """(n, m) centre distance of each detection from each track's box, in units of the track's size (the
    geometric mean of its width and height); ``inf`` where their sizes differ by more than 2x either way."""
    a = np.asarray(tracks_cxcywh, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(dets_cxcywh, dtype=np.float64).reshape(-1, 4)
    area_a = np.maximum(a[:, 2] * a[:, 3], _EPS)  # np.clip's values (NaN too), without its overhead
    area_b = np.maximum(b[:, 2] * b[:, 3], _EPS)
    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    dist /= np.sqrt(area_a)[:, None]
    ratio = area_b[None, :] / area_a[:, None]
    dist[~((ratio >= 0.25) & (ratio <= 4.0))] = np.inf
    return dist


def refind_near_nm(tracks_xyxy: F64, dets_xyxy: F64, reach_n: F64, extra_nm: F64) -> F64:
    """(n, m) the tracker's re-finding cost: :func:`refind_cost_nm` of the boxes' centres and sizes over each
    track's reach (n,), plus ``extra_nm`` (its class cost). Element by element, so the cost of some pairs is
    the same as those pairs' entries of every pair's."""
    dist = refind_cost_nm(xyxy_to_cxcywh(tracks_xyxy), xyxy_to_cxcywh(dets_xyxy))
    return dist / np.asarray(reach_n, dtype=np.float64).reshape(-1, 1) + extra_nm


def predictions_xyxy(predictions: Sequence[dict[str, Any]]) -> F64:
    """(n, 4) corners of API predictions (``x``, ``y`` the box centre, ``width``, ``height``, in pixels)."""
    cxcywh = np.array(
        [[float(p["x"]), float(p["y"]), float(p["width"]), float(p["height"])] for p in predictions],
        dtype=np.float64,
    ).reshape(-1, 4)
    return cxcywh_to_xyxy(cxcywh)


_BOX_KEYS = ("x", "y", "width", "height")
_BOX_AND_SCORE = operator.itemgetter(*_BOX_KEYS, "confidence")


def read_predictions(predictions: Sequence[dict[str, Any]]) -> tuple[F64, list[str], F64]:
    """(n, 4) corners, n class names and (n,) confidences of API predictions, in one pass over them."""
    try:  # the usual prediction: numbers under every key, read by NumPy straight from the dicts (3x faster)
        values = np.fromiter(
            itertools.chain.from_iterable(map(_BOX_AND_SCORE, predictions)), np.float64, 5 * len(predictions)
        ).reshape(-1, 5)
        usual = not np.isnan(values).any()  # NumPy reads None as NaN, where float() refuses it
    except (KeyError, TypeError, ValueError):  # no confidence, or a value that is no number
        usual = False
    if not usual:  # one by one, with float()'s rules and errors
        rows = [(*(float(p[k]) for k in _BOX_KEYS), float(p.get("confidence", 0.0))) for p in predictions]
        values = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return cxcywh_to_xyxy(values[:, :4]), [str(p.get("class", "")) for p in predictions], values[:, 4].copy()


def tag_predictions(predictions: list[dict[str, Any]], ids: list[int]) -> list[dict[str, Any]]:
    """The predictions, those with an id copied with ``tracker_id`` (as ``{**p, "tracker_id": i}``, 3x faster)."""
    out = []
    for p, i in zip(predictions, ids, strict=True):
        if i >= 0:
            p = p.copy()
            p["tracker_id"] = i
        out.append(p)
    return out
