"""A synthetic tracks clip (``agent/synth_tracks.py``: a video and its ground-truth JSON) read the agent's way,
shared by ``box_jitter.py``, ``line_counts.py`` and ``track_accuracy.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.model import OnnxModel
from agent.results import detections_to_api

CONFIDENCE, OVERLAP = 0.4, 0.3  # the agent's defaults, as seg-agent eval --tracks detects

__all__ = ["api_frames", "read_truth"]


def read_truth(truth_path: Path) -> dict[str, Any]:
    """The clip's ground-truth document (``video``, ``fps``, ``frames``, ``min_visibility``)."""
    doc: dict[str, Any] = json.loads(truth_path.read_text())
    return doc


def api_frames(model: OnnxModel, truth_path: Path, doc: dict[str, Any]) -> Iterator[tuple[int, np.ndarray, dict]]:
    """``(index, frame, published API object)`` of each frame of the clip's video, up to its truth's frame count
    (fewer if the video ends early), detected at the agent's default thresholds."""
    cap = cv2.VideoCapture(str(truth_path.parent / doc["video"]))
    try:
        for i in range(len(doc["frames"])):
            ok, frame = cap.read()
            if not ok:
                return
            h, w = frame.shape[:2]
            det = model.detect(frame, confidence=CONFIDENCE, overlap=OVERLAP)
            yield i, frame, detections_to_api(det, model.class_names, image_wh=(w, h), time_s=0.0)
    finally:
        cap.release()
