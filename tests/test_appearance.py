from __future__ import annotations

import numpy as np
import pytest

from agent.appearance import (
    blend_colour_n3,
    colour_far_nm,
    colour_needed_m,
    colours_of_image,
    lazy_colours_m3,
    mean_bgr_n3,
    polygons_of,
)
from agent.results import Points
from tests.appearance_reference import reference_mean_bgr_n3

NAN3 = [np.nan, np.nan, np.nan]


def _image() -> np.ndarray:
    """100x100 grey; a red square x 10-49, y 10-49; the left half of a blue square x 60-99, y 60-99."""
    img = np.full((100, 100, 3), 90, np.uint8)
    img[10:50, 10:50] = (30, 30, 220)
    img[60:100, 60:80] = (220, 60, 30)
    return img


# polygons as the API has them: the contour's pixels, inclusive (the box's right edge is one further)
SQUARE = np.array([[10, 10], [49, 10], [49, 49], [10, 49]], float)
BLUE_HALF = np.array([[60, 60], [79, 60], [79, 99], [60, 99]], float)


@pytest.mark.parametrize(
    ("polygons", "boxes", "expected"),
    [
        ([], np.zeros((0, 4)), np.zeros((0, 3))),  # empty
        ([SQUARE], [[10, 10, 50, 50]], [[30, 30, 220]]),  # inside the mask only
        ([SQUARE * 0.5 + 5], [[0, 0, 60, 60]], [[30, 30, 220]]),  # a mask smaller than its box: the mask's colour
        ([BLUE_HALF], [[60, 60, 100, 100]], [[220, 60, 30]]),  # the mask, not the box (half of it grey)
        ([np.zeros((0, 2))], [[10, 10, 50, 50]], [[30, 30, 220]]),  # no points: the box's middle
        ([SQUARE[:2]], [[10, 10, 50, 50]], [[30, 30, 220]]),  # 2 points: the same
        ([SQUARE], [[200, 200, 240, 240]], [NAN3]),  # outside the image: unknown
        ([SQUARE], [[30, 30, 30, 60]], [NAN3]),  # a zero-width box: unknown
        ([SQUARE, BLUE_HALF], [[10, 10, 50, 50], [60, 60, 100, 100]], [[30, 30, 220], [220, 60, 30]]),
    ],
)
def test_mean_bgr_n3(polygons: list[np.ndarray], boxes: object, expected: object) -> None:
    out = mean_bgr_n3(_image(), polygons, np.asarray(boxes, float))
    assert out.shape == (len(polygons), 3)
    np.testing.assert_allclose(out, np.asarray(expected, float).reshape(-1, 3), atol=2.0)


def test_mean_bgr_n3_scales_frame_pixels_onto_a_smaller_image() -> None:
    small = _image()[::2, ::2]  # the frame decoded at half size; polygons and boxes stay in frame pixels
    out = mean_bgr_n3(small, [BLUE_HALF], np.array([[60.0, 60, 100, 100]]), scale=0.5)
    # fillPoly takes the polygon's edge samples too: one grey column of six at this size, far inside the gate
    assert np.linalg.norm(out[0] - (220, 60, 30)) < 30.0
    assert np.linalg.norm(out[0] - (90, 90, 90)) > 100.0


def test_mean_bgr_n3_big_box_is_sampled_not_read_whole() -> None:
    img = np.full((1000, 1000, 3), 50, np.uint8)
    img[:, 500:] = 250
    out = mean_bgr_n3(
        img, [np.array([[0, 0], [1000, 0], [1000, 1000], [0, 1000]], float)], np.array([[0.0, 0, 1000, 1000]])
    )
    np.testing.assert_allclose(out, [[150, 150, 150]], atol=10.0)


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, float]:
    """A random frame, boxes (some off the frame, thin, zero-area or huge) and polygons (0-32 points, some
    beyond their boxes), at a random scale."""
    h, w = (int(v) for v in rng.integers(1, 300, 2))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    n = int(rng.integers(0, 6))
    centre = rng.uniform(-50, [w + 50, h + 50], (n, 2))
    size = rng.choice([0, 0.3, 1, 5, 40, 400], (n, 2)) * rng.random((n, 2))
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    polygons = []
    for i in range(n):
        angle = np.sort(rng.uniform(0, 2 * np.pi, int(rng.choice([0, 1, 2, 3, 5, 32]))))
        radius = rng.uniform(0.1, 1.3) * size[i] / 2
        polygons.append(centre[i] + np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius)
    return img, polygons, boxes, float(rng.choice([1.0, 0.5, 0.37]))


@pytest.mark.parametrize(
    ("boxes", "polygons"),
    [
        (np.zeros((0, 4)), []),  # empty
        ([[0, 0, 100, 100]], [SQUARE]),  # the whole frame
        ([[-20, -20, 15, 15]], [np.array([[-20, -20], [14, 0], [0, 14]], float)]),  # over the top-left corner
        ([[90, 95, 130, 140]], [np.array([[90, 95], [129, 100], [99, 139]], float)]),  # over the bottom-right
        ([[40, 40, 40, 40]], [SQUARE]),  # zero-area
        ([[40, 40, 40.5, 41]], [SQUARE]),  # under a pixel
        ([[40, 40, 41, 90]], [np.array([[40, 40], [40, 89], [40, 60]], float)]),  # one column, a flat polygon
        ([[10, 10, 50, 50], [100, 100, 120, 120], [60, 60, 100, 100]], [SQUARE, SQUARE, BLUE_HALF]),  # one off
    ],
)
def test_mean_bgr_n3_is_the_per_detection_reference(boxes: object, polygons: list[np.ndarray]) -> None:
    b = np.asarray(boxes, float)
    for image in (_image(), np.asfortranarray(_image())):  # a frame that is no contiguous array too
        np.testing.assert_array_equal(mean_bgr_n3(image, polygons, b), reference_mean_bgr_n3(image, polygons, b))


def test_mean_bgr_n3_is_the_per_detection_reference_on_random_cases() -> None:
    rng = np.random.default_rng(15)
    for _ in range(400):
        img, polygons, boxes, scale = _random_case(rng)
        # bit for bit: the same samples, the same integer sums, the same division
        np.testing.assert_array_equal(
            mean_bgr_n3(img, polygons, boxes, scale), reference_mean_bgr_n3(img, polygons, boxes, scale)
        )


def test_mean_bgr_n3_needs_one_polygon_per_box() -> None:
    with pytest.raises(ValueError):
        mean_bgr_n3(_image(), [SQUARE], np.zeros((2, 4)))


@pytest.mark.parametrize(
    ("tracks", "dets", "gate", "expected"),
    [
        (np.zeros((0, 3)), np.zeros((0, 3)), 60.0, np.zeros((0, 0), bool)),
        (np.zeros((2, 3)), np.zeros((0, 3)), 60.0, np.zeros((2, 0), bool)),
        ([[0, 0, 0]], [[0, 0, 59], [0, 0, 61]], 60.0, [[False, True]]),
        ([[0, 0, 0]], [[0, 0, 61]], 0.0, [[False]]),  # 0: the gate is off
        ([NAN3, [0, 0, 0]], [[255, 255, 255], NAN3], 60.0, [[False, False], [True, False]]),  # unknown never refuses
    ],
)
def test_colour_far_nm(tracks: object, dets: object, gate: float, expected: object) -> None:
    out = colour_far_nm(np.asarray(tracks, float), np.asarray(dets, float), gate)
    np.testing.assert_array_equal(out, np.asarray(expected, bool))


def test_colour_far_nm_is_the_3_wide_distance() -> None:
    """Channel by channel, the same distances as the (n, k, 3) sum of squares it replaced, bit for bit."""
    rng = np.random.default_rng(15)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(0, 20, size=2))
        tracks, dets = rng.uniform(0, 255, (n, 3)), np.round(rng.uniform(0, 255, (m, 3)))
        tracks[rng.random(n) < 0.2] = np.nan
        dets[rng.random(m) < 0.5] = np.nan
        gate = float(rng.choice([0.0, 60.0, 30.5]))
        dist = np.sqrt(((tracks[:, None, :] - dets[None, :, :]) ** 2).sum(axis=2))
        want = (dist > gate) if gate > 0 else np.zeros((n, m), bool)
        np.testing.assert_array_equal(colour_far_nm(tracks, dets, gate), want)


def test_blend_colour_n3() -> None:
    old = np.array([[100.0, 0, 0], NAN3, [10.0, 10, 10], NAN3])
    new = np.array([[0.0, 0, 100], [1.0, 2, 3], NAN3, NAN3])
    out = blend_colour_n3(old, new)
    np.testing.assert_allclose(out[:3], [[70, 0, 30], [1, 2, 3], [10, 10, 10]])
    assert np.isnan(out[3]).all()
    assert blend_colour_n3(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0, 3)


def test_polygons_of_reads_points_arrays_and_dicts() -> None:
    preds = [
        {"points": Points(SQUARE)},
        {"points": [{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]},
        {"points": []},
        {},
    ]
    out = polygons_of(preds)
    np.testing.assert_array_equal(out[0], SQUARE)
    np.testing.assert_array_equal(out[1], [[1, 2], [3, 4]])
    assert out[2].shape == (0, 2) and out[3].shape == (0, 2)


T, F = True, False


@pytest.mark.parametrize(
    ("candidate", "fresh", "expected"),
    [
        (np.zeros((0, 0), bool), np.zeros(0, bool), []),  # empty
        (np.zeros((2, 0), bool), [T, T], []),  # no detections
        (np.zeros((0, 2), bool), [], [T, T]),  # no tracks: every colour (new tracks need one)
        ([[T, F], [F, T]], [T, T], [F, F]),  # each the sole candidate of a fresh track: skipped
        ([[T, F], [F, T]], [T, F], [F, T]),  # a stale (or lost, or unknown) track's colour: measured
        ([[T, T], [F, F]], [T, T], [T, T]),  # a track with two candidates: both measured
        ([[T, F], [T, F]], [T, T], [T, T]),  # a detection with two candidate tracks (and nothing for the 2nd)
        ([[F, F], [F, F]], [T, T], [T, T]),  # no candidate: it may start a track or be found by distance
    ],
)
def test_colour_needed_m(candidate: object, fresh: object, expected: object) -> None:
    out = colour_needed_m(np.asarray(candidate, bool), np.asarray(fresh, bool))
    np.testing.assert_array_equal(out, np.asarray(expected, bool).reshape(-1))


def test_lazy_colours_m3_asks_once_for_the_needed_only() -> None:
    asked: list[list[int]] = []

    def colours_of(index: np.ndarray) -> np.ndarray:
        asked.append(index.tolist())
        return np.stack([index, index, index], axis=1).astype(float)

    candidate = np.array([[T, F, F], [F, F, F]])
    out = lazy_colours_m3(colours_of, candidate, np.array([T, T]), np.array([T, T, F]))
    assert asked == [[1]]  # 0: the sole candidate of a fresh track; 2: not wanted (an ignored detection)
    np.testing.assert_array_equal(out[1], [1, 1, 1])
    assert np.isnan(out[[0, 2]]).all()
    assert lazy_colours_m3(colours_of, candidate, np.array([T, T]), np.array([T, F, F])).shape == (3, 3)
    assert len(asked) == 1  # nothing needed: not asked at all
    with pytest.raises(ValueError, match="colours_of gave"):
        lazy_colours_m3(lambda index: np.zeros((1, 3)), np.zeros((0, 2), bool), np.zeros(0, bool), np.ones(2, bool))


def test_colours_of_image_measures_the_predictions_asked() -> None:
    preds = [{"points": Points(SQUARE)}, {"points": Points(BLUE_HALF)}]
    colours_of = colours_of_image(_image(), preds, np.array([[10, 10, 50, 50], [60, 60, 80, 100]], float), 1.0)
    np.testing.assert_allclose(colours_of(np.array([1])), [[220, 60, 30]])
    np.testing.assert_allclose(colours_of(np.array([1, 0])), [[220, 60, 30], [30, 30, 220]])
