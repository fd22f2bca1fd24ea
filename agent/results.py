"""The published JSON: the hosted API's response object plus the envelope keys (contract §2).

Both ways of computing a result end here: local detections are turned into the API's format by
:func:`detections_to_api`; hosted responses are checked and cleaned by :func:`parse_api_response`.
:func:`to_message` adds the envelope and :func:`encode` makes the MQTT payload.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from agent.postprocess import Detections

__all__ = [
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
        pts = det.polygons[i].astype(float).round(_XY_DECIMALS).tolist()
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
                "points": [{"x": p[0], "y": p[1]} for p in pts],
            }
        )
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
    dropped, as consumers' parsers drop them. Keys the hosted API may omit are tolerated and kept out.
    Raises ``ValueError`` with the reason when the object isn't the API's response.
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
        out: dict[str, Any] = {k: round(v, _XY_DECIMALS) for k, v in box.items()}
        out["confidence"] = confidence
        out["class"] = name
        for key in ("class_id", "detection_id", "tracker_id"):
            if key in p:
                out[key] = p[key]
        out["points"] = pts
        predictions.append(out)
    predictions.sort(key=lambda q: -float(q["confidence"]))
    result: dict[str, Any] = {}
    if "inference_id" in obj:
        result["inference_id"] = obj["inference_id"]
    time_value = obj.get("time")
    if isinstance(time_value, int | float) and not isinstance(time_value, bool):
        result["time"] = time_value
    result["image"] = {"width": int(image_wh[0]), "height": int(image_wh[1])}
    result["predictions"] = predictions
    return result


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


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the MQTT payload."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
