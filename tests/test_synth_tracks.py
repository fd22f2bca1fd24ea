"""agent.synth_tracks: clips with ground-truth tracks, deterministic, truthful about what is visible."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from agent.synth import CLASS_NAMES, main_synth
from agent.synth_tracks import MIN_VISIBILITY, render_track_clip


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
