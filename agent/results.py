"""The published JSON: the hosted API's response object plus the envelope keys (contract §2).

Both ways of computing a result end here: local detections are turned into the API's format by
:func:`detections_to_api`; hosted responses are checked and cleaned by :func:`parse_api_response`.
:func:`to_message` adds the envelope and :func:`encode` makes the MQTT payload.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from agent.postprocess import Detections

__all__ = [
    "Points",
    "Source",
    "detections_to_api",
    "encode",
    "iso_utc",
    "parse_api_response",
    "to_message",
]

Source = Literal["serverless", "local"]

# Coordinates keep one decimal (a tenth of a pixel), as the hosted API does; confidences four.
_XY_DECIMALS = 1
_CONF_DECIMALS = 4
_JSON_OPTIONS: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
_TABLE_SIZE = 8192  # whole pixel coordinates written from a table: frames up to 8K


@functools.cache
def _coordinate_texts() -> tuple[NDArray[np.object_], NDArray[np.object_]]:
    """``"12.0"`` and ``"12.0}"`` for 0 .. _TABLE_SIZE - 1, exactly as ``json.dumps`` writes the float 12.0."""
    xs = np.array([repr(float(i)) for i in range(_TABLE_SIZE)], dtype=object)
    ys = np.array([repr(float(i)) + "}" for i in range(_TABLE_SIZE)], dtype=object)
    return xs, ys


class Points(Sequence[dict[str, float]]):
    """A polygon's ``points`` as the hosted API has them: a read-only sequence of ``{"x": float, "y": float}``
    (``list(points)`` gives plain dicts), kept as one array so that a dense frame's 20,000 vertices are not
    20,000 dicts. :func:`encode` writes them; ``json.dumps`` alone refuses them, loudly."""

    __slots__ = ("_xy",)

    def __init__(self, polygon_nx2: NDArray[np.floating[Any]]) -> None:
        self._xy: NDArray[np.float64] = np.asarray(polygon_nx2, dtype=np.float64).reshape(-1, 2).round(_XY_DECIMALS)

    def __len__(self) -> int:
        return len(self._xy)

    @property
    def xy(self) -> NDArray[np.float64]:
        """The (k, 2) vertices as one array (read it, don't change it): for the tracker's appearance."""
        return self._xy

    @overload
    def __getitem__(self, index: int) -> dict[str, float]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, float]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, float] | list[dict[str, float]]:
        if isinstance(index, slice):
            return [{"x": x, "y": y} for x, y in self._xy[index].tolist()]
        x, y = self._xy[index].tolist()
        return {"x": x, "y": y}

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self[:])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Points):
            return bool(np.array_equal(self._xy, other._xy))
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Points({list(self)!r})"

    def to_json(self) -> str:
        """The JSON text ``json.dumps`` writes for ``list(self)`` (compact), without making the dicts when
        every coordinate is a whole pixel."""
        xy = self._xy
        if (
            xy.size
            and bool(np.isfinite(xy).all())
            and not bool(np.signbit(xy).any())  # -0.0 is written "-0.0"
            and float(xy.max()) < _TABLE_SIZE
            and bool((xy == np.floor(xy)).all())
        ):
            x_text, y_text = _coordinate_texts()
            whole = xy.astype(np.intp)
            parts = np.empty((len(xy), 4), dtype=object)
            parts[:, 0] = ',{"x":'
            parts[:, 1] = x_text[whole[:, 0]]
            parts[:, 2] = ',"y":'
            parts[:, 3] = y_text[whole[:, 1]]
            return "[" + "".join(parts.ravel().tolist())[1:] + "]"
        return json.dumps(self[:], **_JSON_OPTIONS)


def _rings(rings: Sequence[tuple[NDArray[np.floating[Any]], int]]) -> list[dict[str, Any]]:
    """A mask's parts and holes (:data:`agent.polygons.Ring`) as the ``rings`` field: one
    ``{"points": [...], "hole": bool, "parent": index of the part | None}`` per contour, largest part first."""
    return [
        {"points": Points(xy), "hole": parent >= 0, "parent": parent if parent >= 0 else None} for xy, parent in rings
    ]


def detections_to_api(
    det: Detections,
    class_names: Sequence[str],
    *,
    image_wh: tuple[int, int],
    time_s: float,
    class_map: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Local detections as the hosted API's response object (centre ``x, y``, ``points`` polygon)."""
    class_map = class_map or {}
    boxes = det.boxes_xyxy.astype(float)
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2).round(_XY_DECIMALS)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2).round(_XY_DECIMALS)
    bw = (boxes[:, 2] - boxes[:, 0]).round(_XY_DECIMALS)
    bh = (boxes[:, 3] - boxes[:, 1]).round(_XY_DECIMALS)
    conf = det.confidence.astype(float).round(_CONF_DECIMALS)
    predictions = []
    for i in range(len(det)):
        cid = int(det.class_id[i])
        name = class_names[cid] if 0 <= cid < len(class_names) else str(cid)
        predictions.append(
            {
                "x": float(cx[i]),
                "y": float(cy[i]),
                "width": float(bw[i]),
                "height": float(bh[i]),
                "confidence": float(conf[i]),
                "class": class_map.get(name, name),
                "class_id": cid,
                "detection_id": str(uuid.uuid4()),
                "points": Points(det.polygons[i]),
            }
        )
        if det.rings is not None:  # opt-in (inference.local.polygons.rings): every part and hole
            predictions[-1]["rings"] = _rings(det.rings[i])
    return {
        "inference_id": str(uuid.uuid4()),
        "time": round(time_s, 4),
        "image": {"width": int(image_wh[0]), "height": int(image_wh[1])},
        "predictions": predictions,
    }


def parse_api_response(obj: object, *, scale: float = 1.0, image_wh: tuple[int, int]) -> dict[str, Any]:
    """Check a hosted response and bring it to the published form.

    ``scale`` multiplies every coordinate (the frame was downsized by ``1/scale`` before upload);
    ``image`` is set to the original frame size. Predictions whose polygon has fewer than 3 points are
    dropped, as consumers' parsers drop them. Keys the hosted API may omit are tolerated and kept out;
    keys this agent doesn't know (``mask_format``, ``resolved_model``, ...) pass through unchanged, in the
    server's order (their values are not rescaled). Raises ``ValueError`` with the reason when the object
    isn't the API's response.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"response is {type(obj).__name__}, not a JSON object")
    raw_predictions = obj.get("predictions")
    if not isinstance(raw_predictions, list):
        raise ValueError("response has no 'predictions' list")
    predictions = []
    for i, p in enumerate(raw_predictions):
        if not isinstance(p, dict):
            raise ValueError(f"predictions[{i}] is not an object")
        try:
            box = {k: _number(p[k]) * scale for k in ("x", "y", "width", "height")}
            confidence = _number(p["confidence"])
            name = p["class"]
        except KeyError as exc:
            raise ValueError(f"predictions[{i}] lacks {exc.args[0]!r}") from None
        if not isinstance(name, str):
            raise ValueError(f"predictions[{i}].class is not a string")
        points = p.get("points")
        if not isinstance(points, list) or len(points) < 3:
            continue
        try:
            pts = [
                {
                    "x": round(_number(q["x"]) * scale, _XY_DECIMALS),
                    "y": round(_number(q["y"]) * scale, _XY_DECIMALS),
                }
                for q in points
            ]
        except (KeyError, TypeError):
            raise ValueError(f"predictions[{i}].points holds an entry that is not {{x, y}}") from None
        checked: dict[str, Any] = {k: round(v, _XY_DECIMALS) for k, v in box.items()}
        checked.update(confidence=confidence, points=pts)
        checked["class"] = name
        predictions.append(_in_order(p, checked))
    predictions.sort(key=lambda q: -float(q["confidence"]))
    time_value = obj.get("time")
    time_ok = isinstance(time_value, int | float) and not isinstance(time_value, bool)
    raw = {k: v for k, v in obj.items() if k != "time" or time_ok}
    return _in_order(
        raw, {"image": {"width": int(image_wh[0]), "height": int(image_wh[1])}, "predictions": predictions}
    )


def _in_order(raw: Mapping[str, Any], checked: Mapping[str, Any]) -> dict[str, Any]:
    """``raw``'s keys in ``raw``'s order, each with its ``checked`` value where there is one."""
    out = {key: checked.get(key, value) for key, value in raw.items()}
    for key, value in checked.items():
        out.setdefault(key, value)
    return out


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def iso_utc(timestamp: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: ``2026-11-27T13:44:49.123Z``."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_message(
    api: Mapping[str, Any],
    *,
    device_id: str,
    camera: str,
    frame_id: int,
    timestamp: float,
    source: Source,
    model_id: str,
    latency_ms: float,
    fallback_reason: str | None = None,
) -> dict[str, Any]:
    """The published object: the API response unchanged, plus where and how it was made."""
    message: dict[str, Any] = dict(api)
    message.update(
        message_id=uuid.uuid4().hex,
        device_id=device_id,
        camera=camera,
        frame_id=frame_id,
        timestamp=iso_utc(timestamp),
        source=source,
        model_id=model_id,
        latency_ms=round(latency_ms, 1),
    )
    if fallback_reason:
        message["fallback_reason"] = fallback_reason
    return message


def _swap_points(prediction: Any, token: str, found: list[Points]) -> Any:
    """``prediction`` with its :class:`Points` (``points``, and each of ``rings``' ``points``) swapped for
    ``token``, and appended to ``found`` in the order ``json.dumps`` writes them."""
    if not isinstance(prediction, dict):
        return prediction
    points, rings = prediction.get("points"), prediction.get("rings")
    if not isinstance(points, Points) and not isinstance(rings, list):
        return prediction
    swapped = dict(prediction)  # same key order: json.dumps meets the tokens in the order of the texts
    for key in prediction:
        if key == "points" and isinstance(points, Points):
            swapped[key] = token
            found.append(points)
        elif key == "rings" and isinstance(rings, list):
            swapped[key] = [_swap_points(ring, token, found) for ring in rings]
    return swapped


@functools.cache
def _coordinate_lengths() -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The lengths of :func:`_coordinate_texts`' strings."""
    xs, ys = _coordinate_texts()
    return np.array([len(t) for t in xs], dtype=np.int64), np.array([len(t) for t in ys], dtype=np.int64)


def _points_json(polygons: Sequence[Points]) -> list[str]:
    """``[p.to_json() for p in polygons]``, the whole-pixel ones written together: one table lookup and one
    join for all their vertices, cut into polygons by character offsets (no NumPy call per polygon: a dense
    frame has hundreds)."""
    texts: list[str | None] = [None] * len(polygons)
    arrays = [p._xy for p in polygons]
    counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    if counts.sum():
        xy = np.concatenate(arrays)
        with np.errstate(invalid="ignore"):
            # Whole, finite, 0 <= v < _TABLE_SIZE, not -0.0 ("-0.0" in JSON): per coordinate, then per vertex
            # from the two columns (a reduction along an axis of 2 costs more than the comparisons).
            ok = (xy >= 0) & (xy < _TABLE_SIZE) & (xy == np.floor(xy)) & ~np.signbit(xy)
        good = ok[:, 0] & ok[:, 1]
        starts = np.cumsum(counts) - counts
        nonempty = counts > 0
        whole = np.zeros(len(arrays), dtype=bool)
        whole[nonempty] = np.logical_and.reduceat(good, starts[nonempty])
        take = np.repeat(whole, counts)  # the vertices of the whole-pixel polygons
        if whole.any():
            ints = (xy if bool(whole.all()) else xy[take]).astype(np.intp)
            x_text, y_text = _coordinate_texts()
            x_len, y_len = _coordinate_lengths()
            parts = np.empty((len(ints), 4), dtype=object)
            parts[:, 0] = ',{"x":'
            parts[:, 1] = x_text[ints[:, 0]]
            parts[:, 2] = ',"y":'
            parts[:, 3] = y_text[ints[:, 1]]
            joined = "".join(parts.ravel().tolist())
            vertex_len = x_len[ints[:, 0]] + y_len[ints[:, 1]] + (len(',{"x":') + len(',"y":'))
            ends = np.cumsum(vertex_len)[np.cumsum(counts[whole]) - 1].tolist()
            begin = 0
            for i, end in zip(np.flatnonzero(whole).tolist(), ends, strict=True):
                texts[i] = "[" + joined[begin + 1 : end] + "]"
                begin = end
    return [t if t is not None else p.to_json() for t, p in zip(texts, polygons, strict=True)]


def _plain(value: Any) -> Any:
    """``value`` with every :class:`Points` in it as a list of dicts."""
    if isinstance(value, Points):
        return list(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the MQTT payload. :class:`Points` (``points``, and ``rings`` when asked for) are
    written from their arrays (whole-pixel polygons ~10x faster than through dicts: most of a dense frame's
    payload is its vertices)."""
    predictions = message.get("predictions")
    if not isinstance(predictions, list):
        return json.dumps(message, **_JSON_OPTIONS).encode()
    token = f"\x00points {uuid.uuid4().hex}\x00"  # no string in a message holds it by chance
    found: list[Points] = []
    swapped = [_swap_points(p, token, found) for p in predictions]
    if not found:
        return json.dumps(message, **_JSON_OPTIONS).encode()
    texts = _points_json(found)
    parts = json.dumps({**message, "predictions": swapped}, **_JSON_OPTIONS).split(json.dumps(token))
    if len(parts) != len(texts) + 1:  # only if some string held the token after all: the plain way
        return json.dumps({**message, "predictions": _plain(predictions)}, **_JSON_OPTIONS).encode()
    out = [parts[0]]
    for text, rest in zip(texts, parts[1:], strict=True):
        out += (text, rest)
    return "".join(out).encode()
