"""Tables of cases for agent.placement: model-input coordinates <-> frame pixels."""

from __future__ import annotations

import numpy as np
import pytest

from agent.placement import (
    LetterboxParams,
    Placement,
    box_pixel_bounds,
    boxes_to_frame,
    centre_inside_range,
    letterbox_params,
    letterbox_placement,
    pixel_bounds_xyxy,
    sample_positions,
    unletterbox_boxes_xyxy,
)
from agent.preprocess import letterbox_ultralytics

EMPTY_BOXES = np.zeros((0, 4), dtype=np.float32)


@pytest.mark.parametrize(
    ("frame_hw", "input_hw", "expected"),
    [
        ((720, 1280), (640, 640), Placement(0.5, 0.5, 0, 140, 0, 0, 1280, 720, 640, 360)),
        ((480, 640), (320, 320), Placement(0.5, 0.5, 0, 40, 0, 0, 640, 480, 320, 240)),
        ((1000, 500), (256, 256), Placement(0.256, 0.256, 64, 0, 0, 0, 500, 1000, 128, 256)),
        ((64, 64), (64, 64), Placement(1.0, 1.0, 0, 0, 0, 0, 64, 64, 64, 64)),
        ((10, 20), (100, 100), Placement(5.0, 5.0, 0, 25, 0, 0, 20, 10, 100, 50)),  # upscaled
        ((1, 1000), (32, 32), Placement(0.032, 0.032, 0, 15, 0, 0, 1000, 1, 32, 1)),  # content never 0 rows
    ],
)
def test_letterbox_placement(frame_hw: tuple[int, int], input_hw: tuple[int, int], expected: Placement) -> None:
    placement = letterbox_placement(letterbox_params(frame_hw, input_hw), frame_hw, input_hw)
    assert placement == pytest.approx(expected)
    _, canvas_placement = letterbox_ultralytics(np.zeros((*frame_hw, 3), np.uint8), input_hw)
    assert placement == canvas_placement


@pytest.mark.parametrize(("frame_hw", "input_hw"), [((0, 10), (32, 32)), ((10, 10), (32, -1))])
def test_letterbox_placement_rejects_empty_sizes(frame_hw: tuple[int, int], input_hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        letterbox_placement(LetterboxParams(1.0, 0, 0), frame_hw, input_hw)


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        (EMPTY_BOXES, np.zeros((0, 4), np.int64)),
        ([[10.0, 20.0, 30.0, 40.0]], [[10, 20, 30, 40]]),
        ([[10.4, 20.6, 30.5, 40.49]], [[10, 21, 31, 40]]),  # a centre on the edge (30.5) is inside
        ([[5.0, 5.0, 5.0, 9.0]], [[5, 5, 5, 9]]),  # zero width: empty
        ([[-10.0, -10.0, 3.0, 2.0]], [[0, 0, 3, 2]]),  # clipped at the top-left
        ([[90.0, 40.0, 200.0, 80.0]], [[90, 40, 100, 50]]),  # clipped at the bottom-right
        ([[150.0, 10.0, 160.0, 20.0]], [[100, 10, 100, 20]]),  # outside: empty
        ([[np.nan, 1.0, 5.0, 5.0], [1.0, 1.0, np.inf, 5.0]], [[0, 0, 0, 0], [0, 0, 0, 0]]),  # not finite
    ],
)
def test_pixel_bounds_xyxy(boxes: object, expected: object) -> None:
    bounds = pixel_bounds_xyxy(np.asarray(boxes, np.float64), (50, 100))
    assert bounds.dtype == np.int64 and bounds.shape == np.shape(expected)
    np.testing.assert_array_equal(bounds, expected)
    for box, row in zip(np.asarray(boxes), bounds.tolist(), strict=True):
        assert box_pixel_bounds(box, (50, 100)) == tuple(row)  # the one-box form: the same pixels


@pytest.mark.parametrize(
    ("scale", "content", "expected"),
    [
        (1.0, 64, (0, 63)),
        (0.25, 180, (2, 717)),  # 1280x720 into 320: two band pixels at each end
        (0.5, 320, (1, 638)),
        (2.0, 120, (0, 59)),  # upscaled: every pixel's centre is inside
        (0.256, 128, (2, 497)),
        (0.01, 1, (50, 49)),  # one content pixel narrower than a frame pixel's reach: empty
    ],
)
def test_centre_inside_range(scale: float, content: int, expected: tuple[int, int]) -> None:
    assert centre_inside_range(scale, content) == expected
    lo, hi = expected
    for pixel in range(max(lo - 3, 0), hi + 4):
        centre = (pixel + 0.5) * scale  # the padding cancels out
        assert (lo <= pixel <= hi) == (0.5 - 1e-9 <= centre <= content - 0.5 + 1e-9), pixel


CROPPED = Placement(0.5, 0.25, 10, 20, 100, 50, 200, 300, 100, 75)  # input = (frame - (100, 50)) * s + pad


@pytest.mark.parametrize(
    ("placement", "boxes", "expected"),
    [
        (CROPPED, EMPTY_BOXES, np.zeros((0, 4), np.float32)),
        (CROPPED, [[10, 20, 60, 45]], [[100, 50, 200, 150]]),
        (CROPPED, [[0, 0, 1000, 1000]], [[100, 50, 300, 350]]),  # clipped to the crop
        (CROPPED, [[-5, -5, -1, -1]], [[100, 50, 100, 50]]),
        (Placement(2.0, 2.0, 0, 0, 0, 0, 60, 40, 120, 80), [[30, 10, 50, 70]], [[15, 5, 25, 35]]),
        (Placement(2.0, 2.0, 0, 0, 0, 0, 60, 40, 120, 80), [[30, 10, 30, 10]], [[15, 5, 15, 5]]),  # a point
    ],
)
def test_boxes_to_frame(placement: Placement, boxes: object, expected: object) -> None:
    out = boxes_to_frame(np.asarray(boxes, np.float32), placement, (480, 640))
    assert out.dtype == np.float32 and out.shape == np.shape(expected)
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("boxes", [EMPTY_BOXES, np.array([[0, 0, 640, 640], [100, 150, 90, 700], [-9, 3, 5, 1]])])
def test_unletterbox_is_boxes_to_frame_through_the_letterbox_placement(boxes: np.ndarray) -> None:
    params = letterbox_params((720, 1280), (640, 640))
    placement = letterbox_placement(params, (720, 1280), (640, 640))
    expected = boxes_to_frame(boxes, placement, (720, 1280))
    np.testing.assert_array_equal(unletterbox_boxes_xyxy(boxes, params, (720, 1280)), expected)


@pytest.mark.parametrize(
    ("placement", "axis", "frame_len"),
    [
        (CROPPED, "x", 640),
        (CROPPED, "y", 480),
        (Placement(0.25, 0.25, 0, 6, 0, 0, 1280, 720, 320, 180), "y", 720),
        (Placement(3.0, 3.0, 1, 0, 0, 0, 7, 5, 21, 15), "x", 7),
    ],
)
def test_sample_positions_of_a_slice_are_a_slice_of_the_positions(
    placement: Placement, axis: str, frame_len: int
) -> None:
    """The per-frame tables the decoders cut each box from hold the same numbers as per-box calls."""
    whole = sample_positions(0, frame_len, axis, placement, 48, 192)  # type: ignore[arg-type]
    for start, stop in [(0, 0), (0, 1), (3, 5), (frame_len // 2, frame_len), (frame_len - 1, frame_len)]:
        part = sample_positions(start, stop, axis, placement, 48, 192)  # type: ignore[arg-type]
        assert part.dtype == np.float32
        np.testing.assert_array_equal(part, whole[start:stop])
    content = placement.content_w if axis == "x" else placement.content_h
    pad = placement.pad_x if axis == "x" else placement.pad_y
    # Clamped to the content's outermost pixel centres: never into the padding.
    assert whole.min() >= (pad + 0.5) * 48 / 192 - 0.5 - 1e-6
    assert whole.max() <= (pad + content - 0.5) * 48 / 192 - 0.5 + 1e-6
