"""Tables of cases for agent.masks (the one mask path of every decoder) and agent.polygons' offset form."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent import masks
from agent.masks import (
    logit_mask,
    logit_masks,
    mask_in_box,
    proto_mask_in_box,
    proto_masks_in_boxes,
    sigmoid,
    sigmoid_inplace,
)
from agent.placement import Placement, letterbox_params, letterbox_placement, pixel_bounds_xyxy
from agent.polygons import mask_polygon, mask_polygon_at


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        ([], []),
        ([0.0], [0.5]),
        ([2.0, -2.0], [1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0))]),
        ([50.0, 1000.0, np.inf], [1.0, 1.0, 1.0]),  # clipped at 50: no overflow
        ([-50.0, -1000.0, -np.inf], [1 / (1 + np.exp(50.0))] * 3),
    ],
)
def test_sigmoid(logits: list[float], expected: list[float]) -> None:
    x = np.asarray(logits, dtype=np.float32)
    before = x.copy()
    out = sigmoid(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(x, before)  # the copying form leaves its input alone
    same = sigmoid_inplace(x)
    assert same is x
    np.testing.assert_array_equal(x, out)  # both forms: the same numbers, to the bit


def test_sigmoid_takes_any_float_or_int_array() -> None:
    np.testing.assert_array_equal(sigmoid(np.array([[0, 1]], np.float64)), sigmoid(np.array([[0, 1]], np.int64)))


@pytest.mark.parametrize(
    ("first", "last", "cells", "expected"),
    [
        ([], [], 10, ([], [])),
        ([2.0], [2.0], 10, ([2], [4])),  # a sample on a cell centre still reads its right neighbour
        ([-0.3], [2.4], 10, ([0], [4])),  # clamped at the start
        ([8.7], [9.0], 10, ([8], [10])),  # and at the end
        ([12.0], [13.0], 10, ([9], [10])),  # past the grid: its last cell, never empty
        ([-5.0], [-3.0], 10, ([0], [1])),
        ([0.0, 3.5], [0.0, 3.5], 1, ([0, 0], [1, 1])),  # a one-cell grid
    ],
)
def test_cell_span(first: list[float], last: list[float], cells: int, expected: tuple[list[int], list[int]]) -> None:
    g0, g1 = masks._cell_span(np.asarray(first, np.float64), np.asarray(last, np.float64), cells)
    np.testing.assert_array_equal(g0, expected[0])
    np.testing.assert_array_equal(g1, expected[1])


FRAME_HW, INPUT_HW = (360, 640), (192, 320)
PROTOS = np.ascontiguousarray(
    cv2.GaussianBlur(np.random.default_rng(4).normal(0, 1, size=(48, 80, 6)).astype(np.float32), (0, 0), 2).transpose(
        2, 0, 1
    )
    * 4
)
LETTERBOX = letterbox_placement(letterbox_params(FRAME_HW, INPUT_HW), FRAME_HW, INPUT_HW)
FIT_CROP = Placement(0.4, 0.4, 24, 16, 40, 20, 580, 400, 232, 160)  # a static crop, fitted with padding

DEGENERATE = [
    (5.0, 5.0, 5.0, 90.0),  # no width
    (700.0, 10.0, 800.0, 50.0),  # outside the frame
    (np.nan, 0.0, 10.0, 10.0),  # not finite
    (10.2, 10.2, 10.4, 10.4),  # no pixel centre inside
]


@pytest.mark.parametrize("fast_letterbox", [True, False])
@pytest.mark.parametrize(
    "boxes",
    [
        [],
        DEGENERATE,
        [(0.0, 0.0, 640.0, 360.0), *DEGENERATE, (100.5, 50.5, 300.2, 200.7), (630.0, 350.0, 640.0, 360.0)],
    ],
)
def test_proto_masks_in_boxes_skip_empty_bounds_and_cover_the_others(
    boxes: list[tuple[float, ...]], fast_letterbox: bool
) -> None:
    boxes_xyxy = np.asarray(boxes, np.float64).reshape(-1, 4)
    coeffs = np.random.default_rng(len(boxes)).normal(0, 1, (boxes_xyxy.shape[0], 6)).astype(np.float32)
    bounds = pixel_bounds_xyxy(boxes_xyxy, FRAME_HW).tolist()
    got = list(
        proto_masks_in_boxes(coeffs, PROTOS, boxes_xyxy, LETTERBOX, INPUT_HW, FRAME_HW, fast_letterbox=fast_letterbox)
    )
    assert [row for row, *_ in got] == [r for r, (x0, y0, x1, y1) in enumerate(bounds) if x1 > x0 and y1 > y0]
    for row, mask, x0, y0 in got:
        assert mask.dtype == np.uint8 and mask.flags.c_contiguous and set(np.unique(mask)) <= {0, 1}
        assert [x0, y0, x0 + mask.shape[1], y0 + mask.shape[0]] == bounds[row]
        if fast_letterbox:  # the frame's masks are the one-box functions' masks, to the pixel
            params = letterbox_params(FRAME_HW, INPUT_HW)
            expected, offset = mask_in_box(coeffs[row], PROTOS, boxes_xyxy[row], params, INPUT_HW, FRAME_HW)
        else:
            expected, offset = proto_mask_in_box(coeffs[row], PROTOS, boxes_xyxy[row], LETTERBOX, INPUT_HW, FRAME_HW)
        assert offset == (x0, y0)
        np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("fast_letterbox", [True, False])
@pytest.mark.parametrize(("level", "expected"), [(-20.0, 0), (20.0, 1)])
def test_proto_masks_of_constant_logits_are_constant(fast_letterbox: bool, level: float, expected: int) -> None:
    """Degenerate masks: nothing inside (all below 0.5) or the whole box; the two samplings agree."""
    protos = np.full((1, 48, 80), level, np.float32)
    boxes = np.array([[0.0, 0.0, 640.0, 360.0], [3.0, 300.0, 9.0, 360.0]])
    got = list(
        proto_masks_in_boxes(
            np.ones((2, 1), np.float32), protos, boxes, LETTERBOX, INPUT_HW, FRAME_HW, fast_letterbox=fast_letterbox
        )
    )
    assert [row for row, *_ in got] == [0, 1]
    for _, mask, *_ in got:
        assert mask.size and np.all(mask == expected)


@pytest.mark.parametrize("placement", [LETTERBOX, FIT_CROP])
def test_placed_masks_stay_in_the_used_part_of_the_frame(placement: Placement) -> None:
    box = np.array([0.0, 0.0, 640.0, 360.0])
    mask, (x0, y0) = proto_mask_in_box(np.ones(6, np.float32), PROTOS, box, placement, INPUT_HW, FRAME_HW)
    assert (x0, y0) == (0, 0) and mask.shape == FRAME_HW  # the box's pixels, whatever the placement


@pytest.mark.parametrize(
    ("box", "shape", "offset"),
    [((0.0, 0.0, 0.0, 0.0), (0, 0), (0, 0)), ((10.0, 20.0, 10.0, 50.0), (30, 0), (10, 20))],
)
def test_one_box_masks_of_an_empty_box_are_empty(
    box: tuple[float, ...], shape: tuple[int, int], offset: tuple[int, int]
) -> None:
    coeffs, box_xyxy = np.ones(6, np.float32), np.asarray(box)
    params = letterbox_params(FRAME_HW, INPUT_HW)
    for mask, at in (
        proto_mask_in_box(coeffs, PROTOS, box_xyxy, FIT_CROP, INPUT_HW, FRAME_HW),
        mask_in_box(coeffs, PROTOS, box_xyxy, params, INPUT_HW, FRAME_HW),
    ):
        assert mask.shape == shape and mask.dtype == np.uint8 and at == offset


def test_logit_masks_are_logit_mask_per_query() -> None:
    logits = np.full((4, 48, 80), -3.0, np.float32)
    logits[0, 10:20, 30:50] = 3.0
    logits[2, 0:2, 0:3] = 3.0  # at the corner of the input (padding under a fitted crop)
    logits[3, 47, 79] = 0.5  # one cell
    for placement in (LETTERBOX, FIT_CROP):
        queries = np.array([3, 0, 1, 2, 0])
        got = list(logit_masks(logits, queries, placement, INPUT_HW, FRAME_HW))
        assert [row for row, *_ in got] == list(range(queries.size))
        for (_, mask, x0, y0), query in zip(got, queries.tolist(), strict=True):
            expected, offset = logit_mask(logits[query], placement, INPUT_HW, FRAME_HW)
            assert (x0, y0) == offset
            np.testing.assert_array_equal(mask, expected)
        assert got[2][1].size == 0  # all negative: an empty mask
    assert list(logit_masks(logits, np.zeros(0, np.int64), LETTERBOX, INPUT_HW, FRAME_HW)) == []


@pytest.mark.parametrize(
    ("mask", "offset"),
    [
        (np.zeros((0, 0), np.uint8), (0, 0)),
        (np.zeros((5, 5), np.uint8), (3, 4)),
        (np.eye(1, dtype=np.uint8), (7, 7)),  # one pixel: no polygon
        (np.ones((1, 6), np.uint8), (0, 0)),  # a straight 1-pixel line: no polygon
        (np.pad(np.ones((3, 4), np.uint8), 1), (10, 20)),
        (np.pad(np.eye(4, dtype=np.uint8), 2), (-3, 5)),  # a diagonal: traced there and back
    ],
)
def test_mask_polygon_at_is_mask_polygon_with_a_whole_offset(mask: np.ndarray, offset: tuple[int, int]) -> None:
    expected = mask_polygon(mask, (float(offset[0]), float(offset[1])))
    got = mask_polygon_at(mask, *offset) if mask.size else None
    if expected.shape[0] == 0:
        assert got is None
    else:
        assert got is not None and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
