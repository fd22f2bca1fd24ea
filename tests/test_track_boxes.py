from __future__ import annotations

import numpy as np
import pytest

from agent.track_boxes import cxcywh_to_xyxy, refind_cost_nm, refind_near_nm, xyxy_to_cxcywh

EDGES = np.array(
    [
        [0.0, 0.0, 40.0, 30.0],  # at the frame's corner
        [1240.0, 700.0, 1280.0, 720.0],  # the other corner
        [5.0, 5.0, 5.0, 5.0],  # zero-area
        [10.0, 20.0, 10.0, 60.0],  # zero width
        [3.25, 7.5, 1e4, 7.75],  # degenerate: very wide, thin
    ]
)


def _xyxy_to_cxcywh_before(b: np.ndarray) -> np.ndarray:
    """The conversions as they were, one column at a time (the same arithmetic, so equal bit for bit)."""
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def _cxcywh_to_xyxy_before(b: np.ndarray) -> np.ndarray:
    hw, hh = b[:, 2] / 2, b[:, 3] / 2
    return np.stack([b[:, 0] - hw, b[:, 1] - hh, b[:, 0] + hw, b[:, 1] + hh], axis=1)


@pytest.mark.parametrize(
    "boxes", [np.zeros((0, 4)), EDGES[:1], EDGES, np.random.default_rng(1).normal(0, 500, (40, 4))]
)
def test_conversions_are_the_column_by_column_ones(boxes: np.ndarray) -> None:
    np.testing.assert_array_equal(xyxy_to_cxcywh(boxes), _xyxy_to_cxcywh_before(boxes))
    np.testing.assert_array_equal(cxcywh_to_xyxy(boxes), _cxcywh_to_xyxy_before(boxes))


@pytest.mark.parametrize(
    ("tracks", "dets"),
    [
        (np.zeros((0, 4)), np.zeros((0, 4))),
        (np.zeros((0, 4)), EDGES),
        (EDGES, np.zeros((0, 4))),
        (EDGES[:1], EDGES[:1]),
        (EDGES, EDGES),
    ],
)
def test_refind_near_nm(tracks: np.ndarray, dets: np.ndarray) -> None:
    reach = 1.0 + np.arange(len(tracks)) / 4
    extra = np.where(np.add.outer(np.arange(len(tracks)), np.arange(len(dets))) % 2 == 1, 0.5, 0.0)
    got = refind_near_nm(tracks, dets, reach, extra)
    want = refind_cost_nm(xyxy_to_cxcywh(tracks), xyxy_to_cxcywh(dets)) / reach[:, None] + extra
    np.testing.assert_array_equal(got, want)
    assert got.shape == (len(tracks), len(dets))


def test_refind_near_nm_of_some_pairs_is_those_entries_of_all() -> None:
    """The tracker asks for the pairs its stage looks at only: the same values as the full matrix's."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 1000, (30, 2))
    sizes = rng.uniform(0, 120, (30, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    tracks, dets = boxes[:20] + rng.normal(0, 5, (20, 4)), boxes
    reach, extra = rng.uniform(1, 2, 20), rng.choice([0.0, 0.5], (20, 30))
    full = refind_near_nm(tracks, dets, reach, extra)
    rows, cols = np.array([3, 0, 17]), np.array([29, 1, 2, 8])
    part = refind_near_nm(tracks[rows], dets[cols], reach[rows], extra[rows[:, None], cols[None, :]])
    np.testing.assert_array_equal(part, full[rows[:, None], cols[None, :]])


def _refind_cost_before(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    scale = np.sqrt(np.clip(a[:, 2] * a[:, 3], 1e-9, None))
    dist = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1]) / scale[:, None]
    ratio = np.clip(b[:, 2] * b[:, 3], 1e-9, None)[None, :] / np.clip(a[:, 2] * a[:, 3], 1e-9, None)[:, None]
    return np.where((ratio >= 0.25) & (ratio <= 4.0), dist, np.inf)


def test_refind_cost_nm_is_the_previous_arithmetic() -> None:
    rng = np.random.default_rng(5)
    cases = [(np.zeros((0, 4)), np.zeros((0, 4))), (xyxy_to_cxcywh(EDGES), xyxy_to_cxcywh(EDGES))]
    for _ in range(100):
        a, b = rng.normal(0, 100, (int(rng.integers(0, 9)), 4)), rng.normal(0, 100, (int(rng.integers(0, 9)), 4))
        a[rng.random(a.shape) < 0.1] = 0.0  # zero sizes
        b[rng.random(b.shape) < 0.05] = np.nan
        cases.append((a, b))
    for a, b in cases:
        np.testing.assert_array_equal(refind_cost_nm(a, b), _refind_cost_before(a, b))
