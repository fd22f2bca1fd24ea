"""agent.synth_tracks: clips with ground-truth tracks, deterministic, truthful about what is visible."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.synth import CLASS_NAMES, main_synth
from agent.synth_tracks import MIN_VISIBILITY, count_pieces, render_track_clip


def test_clip_and_truth_agree_and_are_deterministic(tmp_path: Path) -> None:
    truth = render_track_clip(tmp_path / "a.avi", seconds=3.0, fps=10.0, size=(320, 240), seed=5, n_objects=4)
    again = render_track_clip(tmp_path / "b.avi", seconds=3.0, fps=10.0, size=(320, 240), seed=5, n_objects=4)
    doc = json.loads(truth.read_text())
    assert doc["frames"] == json.loads(again.read_text())["frames"]
    assert (doc["video"], doc["fps"], doc["width"], doc["height"]) == ("a.avi", 10.0, 320, 240)
    assert doc["min_visibility"] == MIN_VISIBILITY and len(doc["frames"]) == 30
    cap = cv2.VideoCapture(str(tmp_path / "a.avi"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 30
    ids = {o["id"] for frame in doc["frames"] for o in frame}
    assert ids <= {1, 2, 3, 4} and len(ids) >= 3
    for frame in doc["frames"]:
        for o in frame:
            x1, y1, x2, y2 = o["box_xyxy"]
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
            assert o["class"] in CLASS_NAMES and 0 < o["visibility"] <= 1.1  # anti-aliased edges: a little over 1


def test_objects_are_hidden_at_times(tmp_path: Path) -> None:
    # over 20 s some object is partly hidden (behind another, the pillar or the frame's edge)
    doc = json.loads(render_track_clip(tmp_path / "c.avi", seconds=20.0, seed=100).read_text())
    vis = np.array([o["visibility"] for frame in doc["frames"] for o in frame])
    assert (vis < MIN_VISIBILITY).any() and (vis > 0.9).mean() > 0.3


def test_synth_video_tracks_command(tmp_path: Path, capsys: object) -> None:
    out = tmp_path / "t.avi"
    assert main_synth(["video", str(out), "--tracks", "--seconds", "1", "--objects", "2", "--size", "160x120"]) == 0
    assert out.is_file() and out.with_suffix(".tracks.json").is_file()


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows], dtype=np.uint8).reshape(
        len(rows), len(rows[0]) if rows else 0
    )


@pytest.mark.parametrize(
    ("rows", "min_share", "pieces"),
    [
        ([], 0.05, 0),  # empty (0, 0)
        (["...", "..."], 0.05, 0),  # nothing visible
        (["##.", "##."], 0.05, 1),
        (["##..##", "##..##"], 0.05, 2),  # a pillar across it
        (["#.", ".#"], 0.05, 1),  # touching corners: 8-connected, one piece
        (["#" * 20 + "." + "#", "#" * 20 + ".."], 0.05, 1),  # a 1-pixel sliver (2 %) is no piece
        (["#" * 20 + "." + "#", "#" * 20 + ".."], 0.01, 2),  # ... unless the share allows it
        (["#.#.#"], 0.05, 3),
    ],
)
def test_count_pieces(rows: list[str], min_share: float, pieces: int) -> None:
    assert count_pieces(_mask(rows), min_share) == pieces


def test_split_objects_are_marked_where_the_pillar_cuts_them(tmp_path: Path) -> None:
    doc = json.loads(render_track_clip(tmp_path / "s.avi", seconds=20.0, seed=100).read_text())
    objs = [o for frame in doc["frames"] for o in frame]
    split = [o for o in objs if o.get("split")]
    assert split and len(split) < 0.2 * len(objs)  # some, not most
    assert all(o["split"] is True for o in split)
