"""Tables of cases for the decoders' shared steps (agent.decoders): candidates per layout, and the pipeline's
empty and degenerate cases, the same for every format."""

from __future__ import annotations

import numpy as np
import pytest

from agent import decoders
from agent.decoders import decode_end2end_seg, decode_yolov5_seg, decode_yolov8_placed, decode_yolov8_seg
from agent.placement import letterbox_params, letterbox_placement

INPUT_HW, FRAME_HW = (64, 64), (48, 64)
PARAMS = letterbox_params(FRAME_HW, INPUT_HW)
PLACEMENT = letterbox_placement(PARAMS, FRAME_HW, INPUT_HW)


def _v8(rows: list[list[float]]) -> np.ndarray:
    """``(4 + 2 classes + 1 coefficient, N)`` from rows ``cx, cy, w, h, s0, s1, c``."""
    return np.asarray(rows, np.float32).reshape(-1, 7).T


@pytest.mark.parametrize(
    ("rows", "confidence", "expected"),
    [
        ([], 0.25, ([], [], [])),
        ([[10, 10, 4, 6, 0.1, 0.2, 1.0]], 0.25, ([], [], [])),
        ([[10, 10, 4, 6, 0.1, 0.25, 1.0]], 0.25, ([], [], [])),  # strictly above
        ([[10, 10, 4, 6, 0.3, 0.9, 1.0], [20, 20, 2, 2, 0.6, 0.5, 2.0]], 0.25, ([1, 0], [0.9, 0.6], [[8, 7, 12, 13]])),
    ],
)
def test_yolov8_candidates(rows: list[list[float]], confidence: float, expected: tuple[list, list, list]) -> None:
    pred = _v8(rows)
    cands = decoders._yolov8_candidates(pred, 2, confidence)
    classes, scores, first_box = expected
    np.testing.assert_array_equal(cands.classes, classes)
    np.testing.assert_allclose(cands.scores, scores)
    assert cands.boxes_in_xyxy.shape == (len(classes), 4) and cands.scores.dtype == np.float32
    if first_box:
        np.testing.assert_allclose(cands.boxes_in_xyxy[:1], first_box)
    coeffs = cands.coeffs_of(np.arange(len(classes)))
    np.testing.assert_array_equal(coeffs, np.reshape([1.0, 2.0][: len(classes)], (-1, 1)))


@pytest.mark.parametrize(
    ("score", "expected_scores", "expected_classes"),
    [("product", [0.45], [1]), ("objectness", [0.5, 0.3], [1, 0])],  # objectness alone: the best class anyway
)
def test_yolov5_candidates(score: str, expected_scores: list[float], expected_classes: list[int]) -> None:
    pred = np.array([[10, 10, 4, 4, 0.5, 0.1, 0.9, 7.0], [30, 30, 4, 4, 0.3, 0.2, 0.1, 8.0]], np.float32)
    cands = decoders._yolov5_candidates(pred, 2, 0.25, score)  # type: ignore[arg-type]
    np.testing.assert_allclose(cands.scores, expected_scores, rtol=1e-6)
    np.testing.assert_array_equal(cands.classes, expected_classes)
    np.testing.assert_array_equal(cands.coeffs_of(np.array([0])), [[7.0]])


@pytest.mark.parametrize(
    ("rows", "expected_classes"),
    [([], []), ([[1, 2, 3, 4, 0.2, 1.0, 5.0]], []), ([[1, 2, 3, 4, 0.9, 2.6, 5.0], [0, 0, 1, 1, 0.5, 0, 6.0]], [3, 0])],
)
def test_end2end_candidates(rows: list[list[float]], expected_classes: list[int]) -> None:
    pred = np.asarray(rows, np.float32).reshape(-1, 7)
    cands = decoders._end2end_candidates(pred, 0.25)
    np.testing.assert_array_equal(cands.classes, expected_classes)  # class indices rounded
    assert cands.boxes_in_xyxy.shape == (len(expected_classes), 4)


def _run_all(output_v8: np.ndarray, protos: np.ndarray, max_detections: int = 300) -> list[int]:
    """The detection count of every prototype decoder on the same candidates."""
    pred = output_v8[0]
    v5 = np.concatenate([pred[:4].T, np.ones((pred.shape[1], 1), np.float32), pred[4:].T], axis=1)[None]
    best = pred[4:6].max(axis=0)
    cx, cy, w, h = pred[:4]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    e2e = np.concatenate([xyxy, best[:, None], pred[4:6].argmax(axis=0)[:, None], pred[6:].T], axis=1)[None]
    kw = {"input_hw": INPUT_HW, "frame_hw": FRAME_HW, "confidence": 0.25, "max_detections": max_detections}
    return [
        len(decode_yolov8_seg(output_v8, protos, params=PARAMS, overlap=0.45, **kw)),
        len(decode_yolov8_placed(output_v8, protos, placement=PLACEMENT, overlap=0.45, **kw)),
        len(decode_yolov5_seg(v5.astype(np.float32), protos, placement=PLACEMENT, overlap=0.45, **kw)),
        len(decode_end2end_seg(e2e.astype(np.float32), protos, placement=PLACEMENT, **kw)),
    ]


PROTOS_ON = np.full((1, 1, 16, 16), 1.0, np.float32)  # coefficient 10: every pixel inside
PROTOS_OFF = np.full((1, 1, 16, 16), -1.0, np.float32)  # every pixel outside: degenerate masks


@pytest.mark.parametrize(
    ("rows", "protos", "max_detections", "expected"),
    [
        ([], PROTOS_ON, 300, 0),  # no anchors at all
        ([[32, 32, 20, 20, 0.1, 0.1, 10.0]], PROTOS_ON, 300, 0),  # none past the confidence
        ([[32, 32, 20, 20, 0.9, 0.1, 10.0]], PROTOS_ON, 300, 1),
        ([[32, 32, 20, 20, 0.9, 0.1, 10.0]], PROTOS_ON, 0, 0),
        ([[32, 32, 20, 20, 0.9, 0.1, 10.0]], PROTOS_OFF, 300, 0),  # an empty mask: no polygon, dropped
        ([[32, 32, 0, 20, 0.9, 0.1, 10.0]], PROTOS_ON, 300, 0),  # a box without width: no pixels
        ([[32, 2, 20, 2, 0.9, 0.1, 10.0]], PROTOS_ON, 300, 0),  # only in the padding: no frame pixels
        ([[20, 32, 10, 10, 0.9, 0.1, 10.0], [44, 32, 10, 10, 0.8, 0.1, 10.0]], PROTOS_ON, 1, 1),
    ],
)
def test_every_prototype_decoder_handles_the_empty_and_degenerate_cases_alike(
    rows: list[list[float]], protos: np.ndarray, max_detections: int, expected: int
) -> None:
    counts = _run_all(_v8(rows)[None], protos, max_detections)
    assert counts == [expected] * 4
