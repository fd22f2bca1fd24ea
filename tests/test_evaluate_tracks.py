"""agent.evaluate_tracks (``seg-agent eval --tracks``): the demo model and the tracker on a synthetic clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.evaluate_tracks import _frame_update, _inside_share, evaluate_tracks, format_track_report, truth_ids
from agent.synth_tracks import render_track_clip
from agent.tracking import TrackingSettings

mm = pytest.importorskip("motmetrics")
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "demo-seg.onnx"


def _obj(i: int, box: list[float], vis: float) -> dict[str, Any]:
    return {"id": i, "class": "circle", "box_xyxy": box, "visibility": vis}


@pytest.mark.parametrize(
    ("truth", "hyps", "fp", "misses"),
    [
        ([], [], 0, 0),
        ([_obj(1, [0, 0, 10, 10], 1.0)], [], 0, 1),
        ([], [[0, 0, 10, 10]], 1, 0),
        ([_obj(1, [0, 0, 10, 10], 0.2)], [[0, 0, 10, 10]], 0, 0),  # barely visible: ignored, not a false one
        ([_obj(1, [0, 0, 10, 10], 0.2)], [], 0, 0),  # ... and not expected
        ([_obj(1, [0, 0, 10, 10], 0.9)], [[50, 50, 60, 60]], 1, 1),
        ([{**_obj(1, [0, 0, 10, 10], 0.9), "split": True}], [], 0, 1),  # split: expected in the headline
        ([{**_obj(1, [0, 0, 10, 10], 0.9), "split": True}], [[0, 0, 4, 10]], 1, 1),  # one piece: no match
    ],
)
def test_frame_update(truth: list[dict[str, Any]], hyps: list[list[float]], fp: int, misses: int) -> None:
    acc = mm.MOTAccumulator(auto_id=True)
    boxes = np.array(hyps, float).reshape(-1, 4)
    _frame_update(acc, truth, 0.5, list(range(100, 100 + len(boxes))), boxes)
    summary = mm.metrics.create().compute(acc, metrics=["num_false_positives", "num_misses"])
    assert (int(summary["num_false_positives"].iloc[0]), int(summary["num_misses"].iloc[0])) == (fp, misses)
    # the second figure: split objects ignored like barely visible ones (not expected, not a false positive)
    acc = mm.MOTAccumulator(auto_id=True)
    _frame_update(acc, truth, 0.5, list(range(100, 100 + len(boxes))), boxes, split=True)
    split = any(o.get("split") for o in truth)
    if split:
        fp, misses = 0, 0
    summary = mm.metrics.create().compute(acc, metrics=["num_false_positives", "num_misses"])
    assert (int(summary["num_false_positives"].iloc[0]), int(summary["num_misses"].iloc[0])) == (fp, misses)


@pytest.mark.parametrize(
    ("truth", "boxes", "expected"),
    [
        ([], [], []),
        ([_obj(1, [0, 0, 10, 10], 1.0)], [], []),
        ([], [[0, 0, 10, 10]], [-1]),
        ([_obj(1, [0, 0, 10, 10], 1.0)], [[0, 0, 10, 10]], [1]),
        ([_obj(1, [0, 0, 10, 10], 0.2)], [[0, 0, 10, 10]], [-1]),  # not expected: no id (an ignored object)
        ([_obj(1, [0, 0, 10, 10], 1.0)], [[0, 0, 10, 4]], [-1]),  # IoU 0.4: covers none
        ([_obj(1, [0, 0, 10, 10], 1.0)], [[0, 0, 10, 9], [0, 0, 10, 10]], [-1, 1]),  # each object once, best IoU
        ([_obj(1, [0, 0, 10, 10], 1.0), _obj(2, [0, 0, 10, 9], 1.0)], [[0, 0, 10, 9.5]], [1]),  # the higher IoU
        ([_obj(7, [0, 0, 10, 10], 1.0), _obj(3, [20, 0, 30, 10], 1.0)], [[20, 0, 30, 10], [0, 0, 10, 10]], [3, 7]),
    ],
)
def test_truth_ids(truth: list[dict[str, Any]], boxes: list[list[float]], expected: list[int]) -> None:
    got = truth_ids(truth, 0.5, np.array(boxes, float).reshape(-1, 4))
    assert got.tolist() == expected


def test_eval_tracks_on_a_short_clip(tmp_path: Path) -> None:
    truth = render_track_clip(tmp_path / "clip.avi", seconds=4.0, seed=101, n_objects=3)
    report = evaluate_tracks(str(MODEL), [truth], settings=TrackingSettings(enabled=True))
    assert report.clips == 1 and report.frames == 40 and report.track_frames > 40
    assert 0.5 < report.idf1 <= 1.0 and report.mota <= 1.0, format_track_report(report)
    assert report.switches_per_100 == pytest.approx(100 * report.id_switches / report.track_frames)
    assert report.ms_track < report.ms_detect
    assert "IDF1" in format_track_report(report) and "clip.tracks.json" in report.per_clip
    assert report.split_ignored["track_frames"] <= report.track_frames and "split objects" in format_track_report(
        report
    )
    # the detector's bound: perfect identities on every detection; without those covering nothing, higher
    assert 0.5 < report.bound_idf1 <= report.ceiling_idf1 <= 1.0 and "perfect identities" in format_track_report(report)


def test_eval_tracks_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tracks.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a tracks file"):
        evaluate_tracks(str(MODEL), [bad])
    with pytest.raises(ValueError, match="no tracks file"):
        evaluate_tracks(str(MODEL), [])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 0))),
        ([[0, 0, 10, 10]], np.zeros((0, 4)), np.zeros((1, 0))),
        ([[0, 0, 10, 10]], [[0, 0, 4, 10]], [[1.0]]),  # a piece wholly inside
        ([[0, 0, 10, 10]], [[5, 0, 15, 10]], [[0.5]]),
        ([[0, 0, 10, 10]], [[20, 20, 30, 30]], [[0.0]]),
        ([[0, 0, 10, 10]], [[3, 3, 3, 3]], [[0.0]]),  # an empty box: 0, not NaN
    ],
)
def test_inside_share(a: object, b: object, expected: object) -> None:
    got = _inside_share(np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4))
    np.testing.assert_allclose(got, np.asarray(expected, float).reshape(got.shape))
