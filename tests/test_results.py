from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from agent.postprocess import Detections
from agent.results import Points, detections_to_api, encode, iso_utc, parse_api_response, to_message


def _det(n: int) -> Detections:
    boxes = np.array([[10, 20, 110, 70], [0, 0, 4, 4], [5, 5, 9, 9]], dtype=np.float32)[:n]
    polys = [
        np.array([[10, 20], [110, 20], [110, 70], [10, 70]], np.float32),
        np.array([[0, 0], [4, 0], [4, 4]], np.float32),
        np.array([[5, 5], [9, 5], [9, 9]], np.float32),
    ][:n]
    return Detections(
        boxes_xyxy=boxes,
        confidence=np.array([0.9, 0.5, 0.45], np.float32)[:n],
        class_id=np.array([1, 0, 7], np.int64)[:n],
        polygons=polys,
    )


@pytest.mark.parametrize("n", [0, 1, 3])
def test_local_detections_in_the_api_format(n: int) -> None:
    api = detections_to_api(
        _det(n), ["circle", "rectangle"], image_wh=(640, 480), time_s=0.01234, class_map={"rectangle": "box"}
    )
    assert api["image"] == {"width": 640, "height": 480}
    assert api["time"] == 0.0123
    assert len(api["predictions"]) == n
    if n:
        p = api["predictions"][0]
        assert (p["x"], p["y"], p["width"], p["height"]) == (60.0, 45.0, 100.0, 50.0)
        assert p["class"] == "box" and p["class_id"] == 1 and p["confidence"] == pytest.approx(0.9)
        assert p["points"][1] == {"x": 110.0, "y": 20.0}
        assert set(p) >= {"detection_id", "points"}
    if n == 3:
        assert api["predictions"][2]["class"] == "7"  # unknown class id: shown, not dropped


def _hosted(preds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"time": 0.2, "image": {"width": 320, "height": 240}, "predictions": preds}


def _pred(conf: float, npts: int = 3, **extra: Any) -> dict[str, Any]:
    pts = [{"x": 10.0 + i, "y": 20.0 + i * 2} for i in range(npts)]
    return {"x": 50, "y": 60, "width": 20, "height": 10, "confidence": conf, "class": "A", "points": pts, **extra}


@pytest.mark.parametrize(
    ("preds", "kept"),
    [
        ([], 0),
        ([_pred(0.5)], 1),
        ([_pred(0.5, npts=2)], 0),  # fewer than 3 points: dropped, as consumers' parsers drop it
        ([_pred(0.5, npts=0)], 0),
        ([_pred(0.4), _pred(0.9, class_id=2, detection_id="d")], 2),
    ],
)
def test_hosted_response_cleaned(preds: list[dict[str, Any]], kept: int) -> None:
    out = parse_api_response(_hosted(preds), scale=2.0, image_wh=(640, 480))
    assert len(out["predictions"]) == kept
    assert out["image"] == {"width": 640, "height": 480}
    confs = [p["confidence"] for p in out["predictions"]]
    assert confs == sorted(confs, reverse=True)
    if kept:
        p = out["predictions"][-1]
        assert (p["x"], p["y"], p["width"], p["height"]) == (100.0, 120.0, 40.0, 20.0)
        assert p["points"][0] == {"x": 20.0, "y": 40.0}


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([], "not a JSON object"),
        ({"message": "busy"}, "no 'predictions'"),
        ({"predictions": [1]}, "not an object"),
        ({"predictions": [{"x": 1, "y": 2, "width": 3, "height": 4, "class": "A"}]}, "lacks 'confidence'"),
        (
            {"predictions": [{"x": "a", "y": 2, "width": 3, "height": 4, "class": "A", "confidence": 1}]},
            "not a finite number",
        ),
        ({"predictions": [{**_pred(0.5), "points": [{"x": 1}, {"x": 2}, {"x": 3}]}]}, "not {x, y}"),
    ],
)
def test_hosted_response_rejected_with_reason(obj: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_api_response(obj, image_wh=(1, 1))


def test_envelope_keeps_the_api_keys_and_adds_provenance() -> None:
    api = detections_to_api(_det(1), ["a", "b"], image_wh=(640, 480), time_s=0.01)
    msg = to_message(
        api,
        device_id="d1",
        camera="cam0",
        frame_id=7,
        timestamp=1_700_000_000.25,
        source="local",
        model_id="proj/3",
        latency_ms=12.345,
    )
    for key in api:
        assert msg[key] == api[key]
    assert msg["timestamp"] == "2023-11-14T22:13:20.250Z"
    assert (msg["device_id"], msg["camera"], msg["frame_id"], msg["source"], msg["model_id"]) == (
        "d1",
        "cam0",
        7,
        "local",
        "proj/3",
    )
    assert msg["latency_ms"] == 12.3 and len(msg["message_id"]) == 32
    decoded = json.loads(encode(msg))
    assert decoded == msg


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


# ----------------------------------------------------------------------------------------------------------
# encode's fast path for whole-pixel polygons must write exactly what json.dumps writes


def _plain(obj: Any) -> Any:
    """The same value with every sequence of points a plain list of dicts (what any other code would build)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | Points):
        return [_plain(v) for v in obj]
    return obj


def _reference(message: dict[str, Any]) -> bytes:
    return json.dumps(_plain(message), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


POLYGONS = {
    "whole": lambda rng: rng.integers(0, 4000, size=(rng.integers(3, 400), 2)).astype(np.float32),
    "tenths": lambda rng: (rng.integers(0, 40000, size=(rng.integers(3, 50), 2)) / 10).astype(np.float32),
    "zero": lambda rng: np.zeros((3, 2), np.float32),
    "negative zero": lambda rng: np.array([[-0.0, 1], [2, 3], [4, 5]], np.float32),
    "negative": lambda rng: np.array([[-3, 1], [2, 3], [4, 5]], np.float32),
    "huge": lambda rng: np.array([[3e9, 1], [2, 3], [4, 5]], np.float32),
    "empty": lambda rng: np.zeros((0, 2), np.float32),
    "nan": lambda rng: np.array([[np.nan, 1], [2, 3], [4, 5]], np.float32),
}


@pytest.mark.parametrize("seed", range(6))
def test_encode_writes_what_json_dumps_writes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kinds = list(POLYGONS)
    n = int(rng.integers(0, 12))
    picks = [kinds[int(rng.integers(0, len(kinds)))] for _ in range(n)]
    picks = [k for k in picks if k != "nan"]  # NaN is not valid JSON: tested below
    det = Detections(
        boxes_xyxy=rng.uniform(0, 500, size=(len(picks), 4)).astype(np.float32),
        confidence=rng.uniform(0, 1, size=len(picks)).astype(np.float32),
        class_id=rng.integers(0, 3, size=len(picks)),
        polygons=[POLYGONS[k](rng) for k in picks],
    )
    names = ["círculo", 'quo"te\\slash', "\x00\x01ctl"]
    api = detections_to_api(det, names, image_wh=(1920, 1080), time_s=0.02)
    msg = to_message(
        api, device_id="d1", camera="cam", frame_id=7, timestamp=1.0, source="local", model_id="m", latency_ms=3.0
    )
    assert encode(msg) == _reference(msg)
    assert json.loads(encode(msg)) == json.loads(_reference(msg))


def test_encode_of_points_next_to_plain_lists() -> None:
    api = detections_to_api(_det(3), ["a", "b"], image_wh=(640, 480), time_s=0.01)
    api["predictions"][1]["points"] = [{"x": 9.5, "y": 9.0}, {"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]
    assert encode(api) == _reference(api)
    assert json.loads(encode(api))["predictions"][1]["points"][0] == {"x": 9.5, "y": 9.0}


def test_points_refuse_plain_json_dumps_loudly() -> None:
    api = detections_to_api(_det(1), ["a", "b"], image_wh=(640, 480), time_s=0.01)
    with pytest.raises(TypeError):
        json.dumps(api)


def test_encode_refuses_nan_as_before() -> None:
    det = Detections(
        boxes_xyxy=np.array([[0, 0, 4, 4]], np.float32),
        confidence=np.array([0.5], np.float32),
        class_id=np.array([0]),
        polygons=[POLYGONS["nan"](np.random.default_rng(0))],
    )
    api = detections_to_api(det, ["a"], image_wh=(640, 480), time_s=0.01)
    with pytest.raises(ValueError):
        encode(api)


def test_points_read_as_a_sequence_of_dicts() -> None:
    api = detections_to_api(_det(1), ["a", "b"], image_wh=(640, 480), time_s=0.01)
    points = api["predictions"][0]["points"]
    assert len(points) == 4 and points[1] == {"x": 110.0, "y": 20.0} and points[-1] == {"x": 10.0, "y": 70.0}
    assert points[1:3] == [{"x": 110.0, "y": 20.0}, {"x": 110.0, "y": 70.0}]
    assert points != [{"x": 10.0, "y": 20.0}] and points != "x"
    assert Points(np.array([[10, 20], [110, 20], [110, 70], [10, 70]], np.float32)) == points
    assert points == [
        {"x": 10.0, "y": 20.0},
        {"x": 110.0, "y": 20.0},
        {"x": 110.0, "y": 70.0},
        {"x": 10.0, "y": 70.0},
    ]
    assert all(type(v) is float for q in points for v in q.values())


def test_hosted_keys_the_agent_does_not_know_pass_through_in_order() -> None:
    raw = {
        "inference_id": "abc",
        "time": 0.2,
        "image": {"width": 320, "height": 240},
        "predictions": [{**_pred(0.9), "mask_format": "polygon", "detection_id": "d1"}],
        "resolved_model": "proj/3",
    }
    out = parse_api_response(raw, scale=2.0, image_wh=(640, 480))
    assert list(out) == ["inference_id", "time", "image", "predictions", "resolved_model"]
    assert out["resolved_model"] == "proj/3" and out["image"] == {"width": 640, "height": 480}
    (p,) = out["predictions"]
    assert p["mask_format"] == "polygon" and p["detection_id"] == "d1"
    assert list(p)[: len(raw["predictions"][0])] == list(raw["predictions"][0])  # the server's order


def test_hosted_time_that_is_not_a_number_is_left_out() -> None:
    out = parse_api_response({"time": "soon", "predictions": []}, image_wh=(4, 4))
    assert "time" not in out and out["predictions"] == [] and out["image"] == {"width": 4, "height": 4}
