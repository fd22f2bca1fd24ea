"""agent.tracking: the pure NumPy parts by tables, the tracker by scripted scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import ConfigError, parse_settings
from agent.tracking import (
    CameraTracks,
    Tracker,
    TrackingSettings,
    assign_greedy,
    cxcywh_to_xyxy,
    iou_nm_xyxy,
    predictions_xyxy,
    xyxy_to_cxcywh,
)

ON = TrackingSettings(enabled=True)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 0))),
        (np.zeros((0, 4)), [[0, 0, 1, 1]], np.zeros((0, 1))),
        ([[0, 0, 1, 1]], np.zeros((0, 4)), np.zeros((1, 0))),
        ([[0, 0, 2, 2]], [[0, 0, 2, 2]], [[1.0]]),
        ([[0, 0, 2, 2]], [[1, 0, 3, 2]], [[1 / 3]]),
        ([[0, 0, 1, 1]], [[1, 1, 2, 2]], [[0.0]]),  # touching corners
        ([[0, 0, 0, 0]], [[0, 0, 0, 0]], [[0.0]]),  # degenerate: empty union, not NaN
        ([[2, 2, 0, 0]], [[0, 0, 2, 2]], [[0.0]]),  # inverted box has no area
        ([[0, 0, 2, 2], [10, 10, 12, 12]], [[10, 10, 12, 12]], [[0.0], [1.0]]),
    ],
)
def test_iou_nm_xyxy(a: object, b: object, expected: object) -> None:
    got = iou_nm_xyxy(np.asarray(a, float), np.asarray(b, float))
    np.testing.assert_allclose(got, np.asarray(expected, float).reshape(got.shape))
    assert not np.isnan(got).any()


@pytest.mark.parametrize(
    "boxes_xyxy", [np.zeros((0, 4)), np.array([[1.0, 2.0, 5.0, 10.0]]), np.array([[0, 0, 0, 0], [3, 3, 9, 4.0]])]
)
def test_box_layouts_round_trip(boxes_xyxy: np.ndarray) -> None:
    cxcywh = xyxy_to_cxcywh(boxes_xyxy)
    assert cxcywh.shape == boxes_xyxy.shape
    np.testing.assert_allclose(cxcywh_to_xyxy(cxcywh), boxes_xyxy)


@pytest.mark.parametrize(
    ("cost", "max_cost", "pairs", "rows", "cols"),
    [
        (np.zeros((0, 0)), 1.0, [], [], []),
        (np.zeros((0, 3)), 1.0, [], [], [0, 1, 2]),
        (np.zeros((2, 0)), 1.0, [], [0, 1], []),
        ([[0.1]], 0.5, [(0, 0)], [], []),
        ([[0.9]], 0.5, [], [0], [0]),  # over the bound: no match
        ([[0.5]], 0.5, [(0, 0)], [], []),  # the bound itself matches
        ([[0.1, 0.2], [0.3, 0.9]], 1.0, [(0, 0), (1, 1)], [], []),
        ([[0.1, 0.2], [0.3, 0.9]], 0.5, [(0, 0)], [1], [1]),
        ([[0.2, 0.1, 0.3]], 1.0, [(0, 1)], [], [0, 2]),
    ],
)
def test_assign_greedy(cost: object, max_cost: float, pairs: object, rows: object, cols: object) -> None:
    got_pairs, got_rows, got_cols = assign_greedy(np.asarray(cost, float), max_cost)
    assert sorted(map(tuple, got_pairs.tolist())) == sorted(pairs)  # type: ignore[arg-type]
    assert got_rows.tolist() == rows
    assert got_cols.tolist() == cols


def _boxes(*centres: tuple[float, float], size: float = 40.0) -> np.ndarray:
    return np.array([[x - size / 2, y - size / 2, x + size / 2, y + size / 2] for x, y in centres], float)


def test_empty_frames_give_empty_ids() -> None:
    tracker = Tracker(ON)
    ids = tracker.update(0.0, np.zeros((0, 4)), [], np.zeros(0))
    assert ids.shape == (0,) and ids.dtype == np.int64
    assert tracker.ended == []


def test_unconfirmed_detections_have_no_id_and_none_shared() -> None:
    tracker = Tracker(TrackingSettings(enabled=True, min_frames=3))
    first = tracker.update(0.0, _boxes((50, 50), (300, 50), (50, 300)), ["a", "a", "b"], np.full(3, 0.9))
    second = tracker.update(0.1, _boxes((52, 50), (302, 50), (52, 300)), ["a", "a", "b"], np.full(3, 0.9))
    third = tracker.update(0.2, _boxes((54, 50), (304, 50), (54, 300)), ["a", "a", "b"], np.full(3, 0.9))
    assert first.tolist() == [-1, -1, -1] and second.tolist() == [-1, -1, -1]
    assert sorted(third.tolist()) == [1, 2, 3]  # each its own id, from 1


def test_mismatched_lengths_fail() -> None:
    with pytest.raises(ValueError, match="same length"):
        Tracker(ON).update(0.0, _boxes((1, 1)), ["a", "b"], np.ones(1))


def test_track_ends_after_lost_s_and_finish_ends_the_rest() -> None:
    tracker = Tracker(TrackingSettings(enabled=True, min_frames=1, lost_s=1.0, max_missed=1000))
    ids = tracker.update(0.0, _boxes((50, 50), (300, 300)), ["a", "b"], np.full(2, 0.9))
    tracker.update(0.5, _boxes((300, 300)), ["b"], np.full(1, 0.9))
    assert tracker.ended == []
    tracker.update(1.2, _boxes((300, 300)), ["b"], np.full(1, 0.9))
    assert [e.tracker_id for e in tracker.ended] == [ids[0]]
    assert tracker.ended[0].class_name == "a" and tracker.ended[0].hits == 1
    ended = tracker.finish()
    assert [e.tracker_id for e in ended] == [ids[1]] and ended[0].last_t == 1.2
    assert tracker.live_count == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_frames", 0), ("lost_s", 0.0), ("max_missed", 0), ("low_score", 0.9), ("match_iou", 0.0)],
)
def test_settings_refuse_bad_values(field: str, value: float) -> None:
    with pytest.raises(ValueError):
        TrackingSettings(**{field: value})  # type: ignore[arg-type]


# ---- the pipeline's stage and its config section ---------------------------------------------------------


def _api(*boxes: tuple[float, float, str]) -> dict[str, object]:
    """An API object with one 40x40 prediction per (x, y, class); ``x``, ``y`` the box centre."""
    predictions = [
        {"x": x, "y": y, "width": 40.0, "height": 40.0, "confidence": 0.9, "class": c, "class_id": 0, "points": []}
        for x, y, c in boxes
    ]
    return {"time": 0.01, "image": {"width": 640, "height": 480}, "predictions": predictions}


def test_camera_tracks_tag_confirmed_predictions_only_and_keep_the_api_object() -> None:
    tracks = CameraTracks(TrackingSettings(enabled=True, min_frames=2), ["cam0", "cam1"])
    first = _api((100, 100, "a"), (300, 300, "b"))
    out1 = tracks.apply("cam0", 0.0, first)
    assert all("tracker_id" not in p for p in out1.api["predictions"])  # type: ignore[union-attr]
    out2 = tracks.apply("cam0", 0.1, _api((104, 100, "a"), (300, 296, "b")))
    tagged = out2.api["predictions"]
    assert [p["tracker_id"] for p in tagged] == out2.ids.tolist() and sorted(out2.ids.tolist()) == [1, 2]  # type: ignore[index,union-attr]
    assert out2.api["time"] == 0.01 and out2.api["image"] == first["image"]
    assert "tracker_id" not in first["predictions"][0]  # type: ignore[index]
    # the other camera has its own tracker: its first frame is unconfirmed
    other = tracks.apply("cam1", 0.1, _api((104, 100, "a")))
    assert other.ids.tolist() == [-1]
    # an object that leaves ends (its id with it); an empty frame is fine
    empty = tracks.apply("cam0", 0.2, {"predictions": []})
    assert empty.ids.shape == (0,) and empty.ended == []
    assert sorted(e.tracker_id for e in tracks.finish("cam0")) == [1, 2]


def test_predictions_xyxy_empty_and_centre_size() -> None:
    assert predictions_xyxy([]).shape == (0, 4)
    got = predictions_xyxy([{"x": 10, "y": 20, "width": 4, "height": 6}])
    np.testing.assert_allclose(got, [[8, 17, 12, 23]])


def _config(tmp_path: Path, tracking: object) -> dict[str, object]:
    return {
        "device_id": "dev",
        "cameras": [{"name": "cam0", "source": "rtsp://x/y"}],
        "inference": {"mode": "serverless", "serverless": {"model_id": "p/1", "api_key": "k"}},
        "mqtt": {"host": "localhost"},
        "state_dir": str(tmp_path),
        **({} if tracking is None else {"tracking": tracking}),
    }


def test_tracking_section_is_off_by_default_and_parsed(tmp_path: Path) -> None:
    assert parse_settings(_config(tmp_path, None), base_dir=tmp_path, env={}).tracking == TrackingSettings()
    assert TrackingSettings().enabled is False
    doc = _config(tmp_path, {"enabled": True, "min_frames": 5, "lost_s": 1.5, "class_aware": False})
    got = parse_settings(doc, base_dir=tmp_path, env={}).tracking
    assert (got.enabled, got.min_frames, got.lost_s, got.class_aware) == (True, 5, 1.5, False)


@pytest.mark.parametrize(
    ("tracking", "where"),
    [
        ({"min_frames": 0}, "tracking.min_frames"),
        ({"lost_s": -1}, "tracking.lost_s"),
        ({"low_score": 0.8, "high_score": 0.5}, "tracking.low_score"),
        ({"match_iou": 2}, "tracking.match_iou"),
        ({"enabled": "yes"}, "tracking.enabled"),
        ({"speed": 1}, "tracking.speed"),
    ],
)
def test_tracking_section_errors_name_the_key(tmp_path: Path, tracking: object, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_config(tmp_path, tracking), base_dir=tmp_path, env={})
    assert info.value.path == where
