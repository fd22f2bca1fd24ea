"""agent.tracking: the pure NumPy parts by tables, the tracker by scripted scenes."""

from __future__ import annotations

import numpy as np
import pytest

from agent.tracking import (
    Tracker,
    TrackingSettings,
    assign_greedy,
    cxcywh_to_xyxy,
    iou_nm_xyxy,
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
