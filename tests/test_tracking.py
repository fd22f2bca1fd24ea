"""agent.tracking: the pure NumPy parts by tables, the tracker by scripted scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.appearance import COLOUR_EVERY
from agent.config import ConfigError, parse_settings
from agent.tracking import (
    CameraTracks,
    Tracker,
    TrackingSettings,
    assign_greedy,
    covered_m,
    cxcywh_to_xyxy,
    iou_nm_xyxy,
    predictions_xyxy,
    refind_cost_nm,
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
    [
        ("min_frames", 0),
        ("lost_s", 0.0),
        ("max_missed", 0),
        ("low_score", 0.9),
        ("match_iou", 0.0),
        ("appearance_gate", -1.0),
    ],
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
    doc = _config(tmp_path, {"enabled": True, "min_frames": 5, "lost_s": 1.5, "class_cost": 1.0})
    got = parse_settings(doc, base_dir=tmp_path, env={}).tracking
    assert (got.enabled, got.min_frames, got.lost_s, got.class_cost) == (True, 5, 1.5, 1.0)
    assert got.appearance_gate == 60.0
    doc = _config(tmp_path, {"enabled": True, "appearance_gate": 0})
    assert parse_settings(doc, base_dir=tmp_path, env={}).tracking.appearance_gate == 0.0


@pytest.mark.parametrize(
    ("tracking", "where"),
    [
        ({"min_frames": 0}, "tracking.min_frames"),
        ({"lost_s": -1}, "tracking.lost_s"),
        ({"low_score": 0.8, "high_score": 0.5}, "tracking.low_score"),
        ({"match_iou": 2}, "tracking.match_iou"),
        ({"enabled": "yes"}, "tracking.enabled"),
        ({"speed": 1}, "tracking.speed"),
        ({"appearance_gate": -1}, "tracking.appearance_gate"),
    ],
)
def test_tracking_section_errors_name_the_key(tmp_path: Path, tracking: object, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_config(tmp_path, tracking), base_dir=tmp_path, env={})
    assert info.value.path == where


# ---- scenes: crossings, misses, occlusion -------------------------------------------------------------


def _run(tracker: Tracker, frames: list[tuple[list[tuple[float, float]], list[str], list[float]]], fps: float = 10.0):  # type: ignore[no-untyped-def]
    return [
        tracker.update(i / fps, _boxes(*centres), classes, np.array(scores, float)).tolist()
        for i, (centres, classes, scores) in enumerate(frames)
    ]


def test_two_objects_of_one_class_crossing_keep_their_ids() -> None:
    # one moves right, one left, on the same line: their boxes overlap fully at the crossing
    frames = [([(100 + 10 * k, 200), (400 - 10 * k, 200)], ["a", "a"], [0.9, 0.9]) for k in range(31)]
    ids = _run(Tracker(ON), frames)
    first = ids[3]
    assert -1 not in first
    for k, row in enumerate(ids[3:], start=3):
        if k != 15:  # at k == 15 both boxes coincide: either order is right
            assert row == first, (k, row)


def test_a_short_miss_keeps_the_id_and_a_long_one_ends_the_track() -> None:
    tracker = Tracker(TrackingSettings(enabled=True, lost_s=1.0))
    seen = ([(100.0, 100.0)], ["a"], [0.9])
    gap = ([], [], [])
    ids = _run(tracker, [seen] * 5 + [gap] * 5 + [seen] * 2)  # 0.5 s unseen
    assert ids[4] == ids[10] == ids[11] == [1]
    ids = _run(Tracker(TrackingSettings(enabled=True, lost_s=1.0)), [seen] * 5 + [gap] * 12 + [seen] * 4)
    assert ids[4] == [1] and ids[17] == [-1] and ids[19] == [2]  # a new track, a new id, never 1 again


def test_an_occluded_object_found_again_where_its_motion_takes_it() -> None:
    # moving 8 px a frame (80 px/s); hidden for 6 frames: comes back 56 px on, no overlap with where it was
    frames = [([(100.0 + 8 * k, 100.0)], ["a"], [0.9]) if not 5 <= k < 11 else ([], [], []) for k in range(16)]
    ids = _run(Tracker(ON), frames)
    assert ids[4] == [1] and ids[11] == [1] and ids[15] == [1]


def test_low_scores_continue_a_track_but_never_start_one() -> None:
    tracker = Tracker(ON)  # high_score 0.6, low_score 0.1
    frames = [([(100.0 + 5 * k, 100.0)], ["a"], [0.9 if k < 4 else 0.3]) for k in range(8)]
    ids = _run(tracker, frames)
    assert ids[3] == [1] and ids[7] == [1]  # the partly hidden object keeps its id at a low score
    ids = _run(Tracker(ON), [([(100.0, 100.0)], ["a"], [0.3])] * 6)
    assert ids[-1] == [-1]


def test_class_cost_of_one_keeps_classes_apart_and_below_a_flip_continues() -> None:
    frames = [([(100.0, 100.0)], ["a"], [0.9])] * 4 + [([(100.0, 100.0)], ["b"], [0.9])] * 4
    ids = _run(Tracker(TrackingSettings(enabled=True, class_cost=1.0)), frames)
    assert ids[3] == [1] and ids[5] == [-1] and ids[6] == ids[7] == [2]
    # class_cost below the IoU's slack: the same box continues, whatever the class says
    ids = _run(Tracker(TrackingSettings(enabled=True, class_cost=0.2)), frames)
    assert ids[7] == [1]
    assert _run(Tracker(ON), frames)[7] == [1]  # the default (0.5): a class flip on the same box continues
    far = frames[:4] + [([(300.0, 100.0)], ["b"], [0.9])] * 4  # another class far off: a new track
    assert _run(Tracker(ON), far)[7] == [2]


def test_frames_out_of_order_are_refused() -> None:
    tracker = Tracker(ON)
    tracker.update(1.0, np.zeros((0, 4)), [], np.zeros(0))
    with pytest.raises(ValueError, match="capture order"):
        tracker.update(0.5, np.zeros((0, 4)), [], np.zeros(0))


@pytest.mark.parametrize(
    ("tracks", "dets", "finite"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 0), bool)),
        ([[0, 0, 10, 10]], [[5, 0, 10, 10]], [[True]]),
        ([[0, 0, 10, 10]], [[0, 0, 30, 30]], [[False]]),  # 9x the area: not the same object
        ([[0, 0, 0, 0]], [[0, 0, 10, 10]], [[False]]),  # degenerate track box
    ],
)
def test_refind_cost_nm(tracks: object, dets: object, finite: object) -> None:
    got = refind_cost_nm(np.asarray(tracks, float), np.asarray(dets, float))
    np.testing.assert_array_equal(np.isfinite(got), np.asarray(finite, bool).reshape(got.shape))
    if got.size and np.isfinite(got[0, 0]) and np.asarray(tracks).size:
        assert got[0, 0] == pytest.approx(0.5)  # 5 px off a 10 px box


@pytest.mark.parametrize(
    ("x", "cls", "expected"),
    [
        (110.0, "b", [1]),  # low score, flipped class, 10 px off a 40 px box (IoU 0.6): the lost track goes on
        (110.0, "a", [1]),  # the same in its own class
        (130.0, "b", [-1]),  # 30 px off and another class: too far for a low detection (it may be clutter)
        (300.0, "a", [-1]),  # far off: a low detection starts nothing
    ],
)
def test_a_lost_track_is_refound_by_a_near_low_scored_detection(x: float, cls: str, expected: list[int]) -> None:
    seen = ([(100.0, 100.0)], ["a"], [0.9])
    frames = [seen] * 4 + [([], [], [])] + [([(x, 100.0)], [cls], [0.4])]
    assert _run(Tracker(ON), frames)[5] == expected


@pytest.mark.parametrize(
    ("x", "expected_id"),
    [
        # 2.5 track sizes off, another class: too far for stage 3 (reach 1.8-2.2 in the 0.4-0.6 s lost:
        # 1.14 + 0.5 > 1.5 at best), healed at confirmation
        (200.0, 1),
        (250.0, 1),  # 3.75 sizes off after 0.6 s lost (reach 2.2): 1.7 < 3, healed
        (600.0, 2),  # far off: another object, a new id
    ],
)
def test_a_fragment_takes_over_the_lost_track_it_continues(x: float, expected_id: int) -> None:
    tracker = Tracker(ON)
    seen = ([(100.0, 100.0)], ["a"], [0.9])
    ids = _run(tracker, [seen] * 4 + [([], [], [])] * 3 + [([(x, 100.0)], ["b"], [0.9])] * 4)
    assert ids[8] == [-1]  # the fragment had no id before it was confirmed: no published id changes
    assert ids[9] == ids[10] == [expected_id]
    ended = tracker.finish()
    assert sorted(e.tracker_id for e in ended) == ([1] if expected_id == 1 else [1, 2])
    if expected_id == 1:  # one track: its first time and all its detections, the class by the vote
        assert (ended[0].hits, ended[0].first_t) == (8, 0.0)


@pytest.mark.parametrize(
    ("cost", "rows", "max_cost", "expected"),
    [
        (np.zeros((0, 0)), [], 0.4, []),
        (np.zeros((0, 2)), [], 0.4, [False, False]),  # no tracks
        (np.zeros((2, 0)), [True, True], 0.4, []),  # no detections
        ([[0.1, 0.9]], [False], 0.4, [False, False]),  # the one row not chosen
        ([[0.1, 0.9], [0.9, 0.4]], [True, True], 0.4, [True, True]),  # the bound itself counts
        ([[0.1, 0.9], [0.9, 0.4]], [False, True], 0.4, [False, True]),
        ([[np.nan, np.inf]], [True], 0.4, [False, False]),  # NaN (inf - inf) and inf never
    ],
)
def test_covered_m(cost: object, rows: list[bool], max_cost: float, expected: list[bool]) -> None:
    got = covered_m(np.asarray(cost, float), np.array(rows, bool), max_cost)
    assert got.dtype == bool and got.tolist() == expected


@pytest.mark.parametrize(
    ("a_class", "expected"),
    [
        ("b", [-1]),  # A's detection flips to B's class: A's box claims it, so lost B does not take it (was [2])
        ("a", [1]),  # in A's own class: it continues A, as always
    ],
)
def test_a_lost_track_does_not_take_a_live_tracks_flipped_detection(a_class: str, expected: list[int]) -> None:
    a, b = (100.0, 100.0), (130.0, 100.0)
    frames = [([a, b], ["a", "b"], [0.9, 0.9])] * 5 + [([a], ["a"], [0.9])]  # B hidden from frame 5
    # frame 6: A's detection 4 px off (IoU 0.82 with A) at a low score, in ``a_class``; B is 0.65 of its size
    # off (0.46 after 0.2 s lost: near enough for stage 3b, were the detection not A's)
    frames += [([(104.0, 100.0)], [a_class], [0.4])] + [([a], ["a"], [0.9])] * 2
    ids = _run(Tracker(ON), frames)
    assert ids[4] == [1, 2] and ids[6] == expected and ids[7] == ids[8] == [1]


def test_a_new_object_beside_a_track_that_missed_a_frame_gets_its_own_id() -> None:
    # B appears 98 px (2.45 sizes) from A while A is seen; A is missed in the frame B is confirmed
    a, b = (100.0, 100.0), (198.0, 100.0)
    both = ([a, b], ["a", "a"], [0.9, 0.9])
    ids = _run(Tracker(ON), [([a], ["a"], [0.9])] * 6 + [both] * 2 + [([b], ["a"], [0.9])] + [both] * 2)
    assert ids[8] == [2]  # not A's id: A was seen beside it, so it is another object
    assert ids[10] == [1, 2]  # A comes back under its own id


def _greedy_reference(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """The plain greedy assignment: every pair in row-major order, stably sorted by cost, taken when both free."""
    n, m = cost.shape
    pairs = sorted(
        ((cost[r, c], r, c) for r in range(n) for c in range(m) if cost[r, c] <= max_cost), key=lambda p: p[0]
    )
    rows: set[int] = set()
    cols: set[int] = set()
    out = []
    for _, r, c in pairs:
        if r not in rows and c not in cols:
            rows.add(r)
            cols.add(c)
            out.append((r, c))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_assign_greedy_matches_the_plain_greedy_reference(seed: int) -> None:
    """assign_greedy (a shortcut when no row or column has two candidates, a loop otherwise) against the plain
    greedy reference, pair for pair and in order, on random costs with ties (rounded) and sparse ones."""
    rng = np.random.default_rng(seed)
    n, m = rng.integers(0, 12, size=2)
    cost = np.round(rng.random((n, m)), 1 if seed % 2 else 3)
    if seed % 3 == 0:
        cost[rng.random((n, m)) < 0.8] = 1.0  # sparse: mostly one candidate per row and column
    bound = float(rng.choice([0.3, 0.65, 1.0]))
    pairs, rows, cols = assign_greedy(cost, bound)
    want = _greedy_reference(cost, bound)
    assert [tuple(p) for p in pairs.tolist()] == want
    assert rows.tolist() == sorted(set(range(n)) - {r for r, _ in want})
    assert cols.tolist() == sorted(set(range(m)) - {c for _, c in want})


def _iou_reference(a: list[float], b: list[float]) -> float:
    """One pair's IoU in plain floats, the operations in iou_nm_xyxy's order (so the two agree exactly)."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0) + max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0) - inter
    return inter / max(union, 1e-9) if union > 1e-9 else 0.0


@pytest.mark.parametrize("seed", range(10))
def test_iou_nm_matches_a_per_pair_reference(seed: int) -> None:
    """iou_nm_xyxy (in-place (n, m) arrays) against the plain per-pair IoU: exactly equal, degenerate boxes
    (zero or negative width, identical, touching: integer corners) and the empty cases included."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 12, size=(int(rng.integers(0, 8)), 4)).astype(float)
    b = rng.uniform(0, 12, size=(int(rng.integers(0, 8)), 4)) if seed % 2 else a[::-1].copy()
    got = iou_nm_xyxy(a, b)
    want = [[_iou_reference(p, q) for q in b.tolist()] for p in a.tolist()]
    assert got.shape == (len(a), len(b))
    assert got.tolist() == want


def _read_one_by_one(predictions: list[dict[str, Any]]) -> tuple[list[list[float]], list[str], list[float]]:
    """What read_predictions read before its NumPy fast path: float() of each value."""
    rows = [[float(p[k]) for k in ("x", "y", "width", "height")] for p in predictions]
    boxes = [[x - w / 2, y - h / 2, x + w / 2, y + h / 2] for x, y, w, h in rows]
    return boxes, [str(p.get("class", "")) for p in predictions], [float(p.get("confidence", 0.0)) for p in predictions]


_BOX = {"x": 10.0, "y": 20.0, "width": 4.0, "height": 6.0}


@pytest.mark.parametrize(
    "predictions",
    [
        [],
        [{**_BOX, "confidence": 0.5, "class": "a"}, {**_BOX, "x": 3, "confidence": 1, "class": 7}],
        [{**_BOX, "width": True, "confidence": 0.5}],  # bools and ints are numbers to both
        [{**_BOX, "x": "12.5", "confidence": "0.25", "class": "s"}],  # strings float() reads
        [{**_BOX, "class": "no confidence"}],  # 0.0
        [{**_BOX, "x": float("nan"), "confidence": 0.5}],  # NaN stays NaN
    ],
)
def test_read_predictions_fast_path_reads_as_float_does(predictions: list[dict[str, Any]]) -> None:
    from agent.track_boxes import read_predictions

    boxes, classes, scores = read_predictions(predictions)
    want_boxes, want_classes, want_scores = _read_one_by_one(predictions)
    assert boxes.shape == (len(predictions), 4) and scores.shape == (len(predictions),)
    np.testing.assert_array_equal(boxes, np.array(want_boxes).reshape(-1, 4))
    assert classes == want_classes and np.array_equal(scores, want_scores)


@pytest.mark.parametrize(
    ("prediction", "error"),
    [({**_BOX, "x": None, "confidence": 0.5}, TypeError), ({**_BOX, "x": "wide"}, ValueError), ({"y": 1.0}, KeyError)],
)
def test_read_predictions_refuses_what_float_refuses(prediction: dict[str, Any], error: type[Exception]) -> None:
    """NumPy would read None as NaN: the one-by-one path raises as float() does."""
    from agent.track_boxes import read_predictions

    with pytest.raises(error):
        read_predictions([prediction])


def test_tagged_copies_are_the_dicts_with_tracker_id_and_the_originals_are_kept() -> None:
    from agent.track_boxes import tag_predictions

    predictions = [{"x": 1.0, "class": "a"}, {"x": 2.0, "tracker_id": 9, "class": "b"}, {"x": 3.0}]
    out = tag_predictions(predictions, [4, 5, -1])
    assert out == [{**predictions[0], "tracker_id": 4}, {**predictions[1], "tracker_id": 5}, predictions[2]]
    assert [list(p) for p in out] == [["x", "class", "tracker_id"], ["x", "tracker_id", "class"], ["x"]]
    assert "tracker_id" not in predictions[0] and predictions[1]["tracker_id"] == 9 and out[2] is predictions[2]


def test_born_gives_each_new_track_its_first_box_and_a_healed_fragment_none() -> None:
    tracker = Tracker(ON)  # min_frames 3
    borns = []
    for k in range(4):
        tracker.update(k / 10, _boxes((100.0 + 5 * k, 100.0)), ["a"], np.array([0.9]))
        borns.append(tracker.born)
    assert borns[:2] == [{}, {}] and borns[3] == {}  # only the update that confirms it
    np.testing.assert_allclose(borns[2][1], [80, 80, 120, 120])  # its first detection's box, not its last
    for k in range(4, 7):
        tracker.update(k / 10, np.zeros((0, 4)), [], np.zeros(0))
    healed = []
    for k in range(7, 11):  # a fragment 2 sizes off, healed at confirmation: it goes on as track 1
        ids = tracker.update(k / 10, _boxes((180.0, 100.0)), ["a"], np.array([0.9]))
        healed.append(tracker.born)
    assert ids.tolist() == [1] and healed == [{}, {}, {}, {}]
    assert Tracker(ON).update(0.0, np.zeros((0, 4)), [], np.zeros(0)).size == 0


# ---- appearance -----------------------------------------------------------------------------------------


def _bounce(gate: float, asked: list[list[int]] | None = None) -> list[list[int]]:
    """Two objects of one class, red and blue, 6 px a frame towards each other on one line; their boxes
    coincide at frame 10 and they bounce back: constant velocity predicts each where the other is.
    ``asked``: the colours given on demand (a function), the indices asked each frame appended to it."""
    colours = np.array([(30.0, 30.0, 220.0), (220.0, 60.0, 30.0)])  # red, blue
    tracker = Tracker(TrackingSettings(enabled=True, appearance_gate=gate))
    rows = []
    for k in range(21):
        d = 6 * (10 - abs(10 - k))
        boxes = np.array([[x - 20, 100, x + 20, 140] for x in (140 + d, 260 - d)], float)
        given: Any = colours
        if asked is not None:
            asked.append([])
            given = lambda index: (asked[-1].extend(index.tolist()), colours[index])[1]  # noqa: E731
        rows.append(tracker.update(k / 10, boxes, ["a", "a"], np.array([0.9, 0.9]), given).tolist())
    return rows


def test_the_appearance_gate_keeps_ids_where_boxes_alone_swap_them() -> None:
    off, on = _bounce(0.0), _bounce(60.0)
    assert off[9] == [1, 2] and off[20] == [2, 1]  # without colours the ids swap at the bounce
    assert all(row == [1, 2] for row in on[2:])
    asked: list[list[int]] = []
    assert _bounce(60.0, asked) == on  # colours on demand: the same ids
    # asked where each box overlaps both tracks' predictions (frames 9-12), not on the steady way in
    assert all(asked[k] == [0, 1] for k in range(9, 13)) and asked[3:7] == [[]] * 4


def test_a_steady_scene_asks_for_few_colours() -> None:
    # five objects apart, moving steadily: each detection is its track's sole candidate, so colours are
    # measured at birth, while tentative, and every COLOUR_EVERY matches, not at every frame
    asked: list[int] = []

    def colours_of(index: np.ndarray) -> np.ndarray:
        asked.extend(index.tolist())
        return np.tile([[40.0, 90.0, 200.0]], (len(index), 1)) + 10 * index[:, None]

    tracker, eager, frames, n = Tracker(ON), Tracker(ON), 40, 5
    for k in range(frames):
        boxes = _boxes(*[(100 + 150 * i + 4 * k, 200 + 2 * k) for i in range(n)])
        every = colours_of(np.arange(n))
        del asked[-n:]
        lazy_ids = tracker.update(k / 10, boxes, ["a"] * n, np.full(n, 0.9), colours_of)
        assert lazy_ids.tolist() == eager.update(k / 10, boxes, ["a"] * n, np.full(n, 0.9), every).tolist()
    assert lazy_ids.tolist() == [1, 2, 3, 4, 5]
    assert len(asked) <= n * ON.min_frames + n * frames // COLOUR_EVERY  # eager: n * frames = 200


def test_unknown_colours_track_as_without_them() -> None:
    frames = [([(100 + 10 * k, 200), (400 - 10 * k, 200)], ["a", "a"], [0.9, 0.9]) for k in range(31)]
    plain = _run(Tracker(ON), frames)
    tracker = Tracker(ON)
    nan = np.full((2, 3), np.nan)
    unknown = [
        tracker.update(i / 10, _boxes(*c), cl, np.array(s, float), nan).tolist() for i, (c, cl, s) in enumerate(frames)
    ]
    assert unknown == plain


def test_camera_tracks_measure_colours_from_the_image() -> None:
    # the bounce scene drawn: the boxes coincide at frame 10, but each mask is a strip of its own box (red
    # the top one, blue the bottom one), so the colours inside the masks stay apart through the crossing
    def api_and_image(k: int) -> tuple[dict[str, Any], np.ndarray]:
        img = np.full((240, 400, 3), 90, np.uint8)
        d = 6 * (10 - abs(10 - k))
        preds = []
        for x, (y0, y1), colour in ((140 + d, (100, 109), (30, 30, 220)), (260 - d, (131, 139), (220, 60, 30))):
            img[y0 : y1 + 1, x - 20 : x + 20] = colour
            pts = [(x - 20, y0), (x + 19, y0), (x + 19, y1), (x - 20, y1)]
            preds.append({"x": float(x), "y": 120.0, "width": 40.0, "height": 40.0, "confidence": 0.9, "class": "a"})
            preds[-1]["points"] = [{"x": float(px), "y": float(py)} for px, py in pts]
        return {"image": {"width": 400, "height": 240}, "predictions": preds}, img

    def run(gate: float, with_image: bool) -> list[list[int]]:
        tracks = CameraTracks(TrackingSettings(enabled=True, appearance_gate=gate), ["c"])
        out = []
        for k in range(21):
            api, img = api_and_image(k)
            out.append(tracks.apply("c", k / 10, api, img if with_image else None).ids.tolist())
        return out

    assert all(row == [1, 2] for row in run(60.0, True)[2:])
    assert run(60.0, False)[20] == run(0.0, True)[20] == [2, 1]  # no image, or the gate off: as before


def test_real_clips_where_class_flips_swapped_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression on short real clips (the demo model on 2 s of ``synth video --tracks --objects 7``). Seed 8:
    with the SiLU demo model (before session 6), at frame 11 a partly hidden rectangle was detected as a
    circle at a low score and a lost circle's track took it by distance (2 id switches), where the
    rectangle's own live track covered it (IoU 0.86); today's model keeps the ids there. Seed 16: today's
    model's flips, where the rule (a lost track may not take a detection a live unmatched track covers) saves
    switches. The rule itself: test_a_lost_track_does_not_take_a_live_tracks_flipped_detection."""
    pytest.importorskip("motmetrics")
    import agent.tracking as tracking
    from agent.evaluate_tracks import evaluate_tracks
    from agent.model import OnnxModel
    from agent.synth_tracks import render_track_clip

    model = OnnxModel(Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx")
    c8 = render_track_clip(tmp_path / "c8.avi", seconds=2.0, seed=8, n_objects=7)
    c16 = render_track_clip(tmp_path / "c16.avi", seconds=2.0, seed=16, n_objects=7)
    assert evaluate_tracks(model, [c8]).id_switches == 0
    with_rule = evaluate_tracks(model, [c16]).id_switches
    monkeypatch.setattr(tracking, "_CLAIM_IOU", 1.01)  # the rule off: the swaps come back (the test can fail)
    assert evaluate_tracks(model, [c16]).id_switches > with_rule
