"""Tables of cases for agent.polygons: every part and hole of a mask (rings), and the simplification tolerance."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.polygons import PolygonOptions, Ring, mask_polygon_at, mask_rings_at


def _mask(hw: tuple[int, int], *on: tuple[slice, slice], off: tuple[tuple[slice, slice], ...] = ()) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    for rows, cols in on:
        mask[rows, cols] = 1
    for rows, cols in off:
        mask[rows, cols] = 0
    return mask


def _bounds(xy: np.ndarray) -> tuple[int, int, int, int]:
    return int(xy[:, 0].min()), int(xy[:, 1].min()), int(xy[:, 0].max()), int(xy[:, 1].max())


def _filled(rings: list[Ring], hw: tuple[int, int]) -> np.ndarray:
    """The pixels the rings describe, drawn in their order (a part, then its holes; an island in a hole is a
    smaller part, so it comes after): parts filled, holes cut out with their outline put back (the part's own
    pixels: OpenCV traces a hole on them)."""
    out = np.zeros(hw, np.uint8)
    for xy, parent in rings:
        cv2.fillPoly(out, [xy.astype(np.int32)], 1 if parent < 0 else 0)
        if parent >= 0:
            cv2.polylines(out, [xy.astype(np.int32)], True, 1)
    return out


def _island_in_hole() -> np.ndarray:
    mask = np.zeros((20, 20), np.uint8)
    mask[1:19, 1:19] = 1
    mask[4:16, 4:16] = 0  # the hole
    mask[7:12, 7:12] = 1  # an island in it
    mask[14, 14] = 1  # a 1-pixel island
    return mask


RING_CASES = [
    pytest.param(np.zeros((8, 8), np.uint8), [], id="empty"),
    pytest.param(np.zeros((0, 0), np.uint8), [], id="zero-size"),
    pytest.param(_mask((8, 8), (slice(3, 4), slice(3, 4))), [], id="single-pixel"),
    pytest.param(_mask((8, 8), (slice(2, 3), slice(1, 7))), [], id="straight-1px-line"),
    pytest.param(_mask((8, 8), (slice(1, 7), slice(1, 7))), [(-1, (1, 1, 6, 6))], id="one-square"),
    pytest.param(  # a split triangle: two parts, the larger first whatever its order in the mask
        _mask((20, 30), (slice(2, 5), slice(2, 5)), (slice(8, 18), slice(10, 28))),
        [(-1, (10, 8, 27, 17)), (-1, (2, 2, 4, 4))],
        id="split-two-parts-largest-first",
    ),
    pytest.param(
        _mask((10, 10), (slice(1, 9), slice(1, 9)), off=((slice(3, 6), slice(3, 6)),)),
        [(-1, (1, 1, 8, 8)), (0, (2, 2, 6, 6))],
        id="ring-with-a-hole",
    ),
    pytest.param(  # a part inside the hole of another is a part of its own; a 1-pixel island is left out
        _island_in_hole(),
        [(-1, (1, 1, 18, 18)), (0, (3, 3, 16, 16)), (-1, (7, 7, 11, 11))],
        id="island-in-a-hole",
    ),
    pytest.param(  # two holes, one a single pixel
        _mask((12, 16), (slice(1, 11), slice(1, 15)), off=((slice(3, 8), slice(3, 7)), (slice(5, 6), slice(11, 12)))),
        [(-1, (1, 1, 14, 10)), (0, (2, 2, 7, 8)), (0, (10, 4, 12, 6))],
        id="two-holes",
    ),
]


@pytest.mark.parametrize(("mask", "expected"), RING_CASES)
def test_mask_rings_at(mask: np.ndarray, expected: list[tuple[int, tuple[int, int, int, int]]]) -> None:
    rings = mask_rings_at(np.ascontiguousarray(mask), 0, 0) if mask.size else []
    assert [(parent, _bounds(xy)) for xy, parent in rings] == expected
    for xy, _ in rings:
        assert xy.dtype == np.float32 and xy.ndim == 2 and xy.shape[0] >= 3 and xy.shape[1] == 2
    if rings and mask.size:  # the rings rasterise back to the mask, less what was left out (under 3 vertices)
        described = _filled(rings, mask.shape)
        assert np.count_nonzero(described & ~mask.astype(bool)) == 0
        assert np.count_nonzero(mask.astype(bool) & ~described.astype(bool)) <= 1


@pytest.mark.parametrize(("mask", "expected"), RING_CASES)
def test_the_first_ring_is_the_points_polygon(mask: np.ndarray, expected: list[object]) -> None:
    if not mask.size:
        return
    polygon = mask_polygon_at(np.ascontiguousarray(mask), 5, 7)
    rings = mask_rings_at(np.ascontiguousarray(mask), 5, 7)
    if polygon is None:
        assert rings == []
        return
    assert rings[0][1] == -1
    np.testing.assert_array_equal(rings[0][0], polygon)


def _blob() -> np.ndarray:
    mask = np.zeros((120, 160), np.uint8)
    cv2.ellipse(mask, (80, 60), (60, 40), 20.0, 0, 360, 1, -1)
    cv2.circle(mask, (70, 55), 12, 0, -1)
    return mask


@pytest.mark.parametrize("tolerance", [0.0, 0.5, 1.0, 3.0])
def test_tolerance_simplifies_within_the_tolerance(tolerance: float) -> None:
    mask = _blob()
    exact = mask_polygon_at(mask, 0, 0)
    simple = mask_polygon_at(mask, 0, 0, tolerance)
    assert exact is not None and simple is not None
    if tolerance == 0.0:
        np.testing.assert_array_equal(simple, exact)
    else:
        assert 3 <= simple.shape[0] < exact.shape[0]
    # Every exact vertex lies within the tolerance of the simplified outline.
    contour = simple.reshape(-1, 1, 2)
    distances = [abs(cv2.pointPolygonTest(contour, (float(x), float(y)), True)) for x, y in exact]
    assert max(distances) <= tolerance + 1e-6
    rings = mask_rings_at(mask, 0, 0, tolerance)
    assert [parent for _, parent in rings] == [-1, 0]
    np.testing.assert_array_equal(rings[0][0], simple)


def test_tolerance_never_drops_a_thin_part() -> None:
    """A 2-pixel sliver simplified at a large tolerance would collapse to a line: it keeps its exact outline."""
    mask = _mask((10, 40), (slice(4, 6), slice(2, 38)))
    exact = mask_polygon_at(mask, 0, 0)
    assert exact is not None
    simple = mask_polygon_at(mask, 0, 0, 50.0)
    assert simple is not None and simple.shape[0] >= 3
    assert mask_rings_at(mask, 0, 0, 50.0)[0][0].shape[0] >= 3


@pytest.mark.parametrize("tolerance", [-1.0, float("nan")])
def test_polygon_options_refuse_a_bad_tolerance(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance_px"):
        PolygonOptions(tolerance_px=tolerance)
