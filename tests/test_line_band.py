"""agent.line_band: a line's dead band, as tables of cases through :class:`agent.zones.Areas`, and its tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.line_band import DEFAULT_BAND_SHARE, band_tolerance, side_of_line
from agent.zones import Areas, Crossing, LineDef

IN, OUT = Crossing(1, "gate", "in"), Crossing(1, "gate", "out")
D = DEFAULT_BAND_SHARE * 200  # the default band of a 200 x 100 frame, in pixels


def _crossings(
    line: LineDef,
    points: list[tuple[float, float]],
    wh: tuple[int, int] = (200, 100),
    origin: tuple[float, float] | None = None,
) -> list[Crossing]:
    areas = Areas(lines=[line])
    out: list[Crossing] = []
    for k, (x, y) in enumerate(points):
        origins = {1: origin} if origin is not None and k == 0 else None
        out += areas.update(np.array([1]), np.array([[x, y]]), wh, origins)[1]
    return out


def _gate(band: float | None, inertia: int = 1) -> LineDef:
    return LineDef("gate", (0.0, 50.0), (100.0, 50.0), inertia=inertia, band=band)  # downward = in


def _walk(ys: list[float], x: float = 50.0) -> list[tuple[float, float]]:
    return [(x, y) for y in ys]


@pytest.mark.parametrize(
    ("band", "points", "expected"),
    [
        # band 0: the exact rule (what every line did before the band): a 0.1 px excursion is a crossing
        (0.0, _walk([49.9, 50.1, 49.9, 50.1]), [IN, OUT, IN]),
        (0.0, _walk([40, 50, 50, 60]), [IN]),  # on the line: neither side
        # wobble inside the band: no crossing; exactly `band` away is still inside
        (3.0, _walk([40, 48, 52, 49, 51, 53]), []),
        (3.0, _walk([40, 48, 52, 49, 51, 53.01]), [IN]),  # out of the band on the other side: one
        (3.0, _walk([40, 48, 52, 47.5, 49, 44]), []),  # back out on the side it came from: none
        # born inside the band: no side until it leaves it, and leaving it is no crossing
        (3.0, _walk([51, 49, 52, 60]), []),
        (3.0, _walk([49, 51, 40, 60]), [IN]),  # then a crossing as usual
        # through the band in one step, either way
        (3.0, _walk([40, 60]), [IN]),
        (3.0, _walk([60, 40, 60]), [OUT, IN]),
        # the step from the last place beyond the band to the first beyond on the other side passes the
        # line's end (x 100) at x 120: no crossing, though the track went into the band within the segment
        (3.0, [(50.0, 40.0), (60.0, 51.0), (190.0, 60.0)], []),
        (3.0, [(50.0, 40.0), (120.0, 49.0), (140.0, 60.0)], [IN]),  # through the segment at x 95
        # the band, not the bare line, keeps the side: 51 is the `in` side by the exact rule only
        (3.0, _walk([40, 51, 45, 51, 45]), []),
        (0.0, _walk([40, 51, 45, 51, 45]), [IN, OUT, IN, OUT]),
    ],
)
def test_band_keeps_the_side_within_it(
    band: float, points: list[tuple[float, float]], expected: list[Crossing]
) -> None:
    assert _crossings(_gate(band), points) == expected


def test_band_and_inertia_together_count_observations_beyond_the_band() -> None:
    # inertia 2: two observations beyond the band on the new side; one inside the band between them breaks
    # nothing (it is on neither side), one back on the old side does
    assert _crossings(_gate(3.0, inertia=2), _walk([40, 54, 49, 55, 60])) == [IN]
    assert _crossings(_gate(3.0, inertia=2), _walk([40, 54, 45, 55, 40])) == []


@pytest.mark.parametrize(
    ("band", "origin", "ys", "expected"),
    [
        (0.0, (50.0, 51.0), [40, 60], [OUT, IN]),  # exact: the origin is on the `in` side
        (3.0, (50.0, 51.0), [40, 60], [IN]),  # within the band: the origin gives no side
        (3.0, (50.0, 40.0), [60, 70], [IN]),  # beyond it: the line starts from the origin's side
    ],
)
def test_a_new_tracks_origin_within_the_band_has_no_side(
    band: float, origin: tuple[float, float], ys: list[float], expected: list[Crossing]
) -> None:
    assert _crossings(_gate(band), _walk(ys), origin=origin) == expected


@pytest.mark.parametrize(
    ("line", "points", "expected"),
    [
        # fractions of a 200 x 100 frame: a level line's band of 0.05 is 5 px of the height ...
        (LineDef("gate", (0.0, 0.5), (1.0, 0.5), "fraction", band=0.05), _walk([40, 46, 54, 44, 56]), [IN]),
        (LineDef("gate", (0.0, 0.5), (1.0, 0.5), "fraction", band=0.05), _walk([40, 46, 54, 44, 55]), []),
        # ... an upright one's is 10 px of the width (x 109 is within it, 111 beyond)
        (
            LineDef("gate", (0.5, 0.0), (0.5, 1.0), "fraction", band=0.05),
            [(80.0, 50.0), (95.0, 50.0), (105.0, 50.0), (109.0, 50.0)],
            [],
        ),
        (
            LineDef("gate", (0.5, 0.0), (0.5, 1.0), "fraction", band=0.05),
            [(80.0, 50.0), (95.0, 50.0), (105.0, 50.0), (111.0, 50.0)],
            [OUT],  # looking down the image from start, +x is the left: `out`
        ),
        # left out: DEFAULT_BAND_SHARE of the longer side (D px of 200), whatever the units
        (
            LineDef("gate", (0.0, 0.5), (1.0, 0.5), "fraction"),
            _walk([40, 50 - 0.8 * D, 50 + 0.9 * D, 50 + 0.99 * D]),
            [],
        ),
        (LineDef("gate", (0.0, 50.0), (200.0, 50.0)), _walk([40, 50 - 0.8 * D, 50 + 0.9 * D, 50 + 1.01 * D]), [IN]),
    ],
)
def test_band_units_follow_the_line(line: LineDef, points: list[tuple[float, float]], expected: list[Crossing]) -> None:
    assert _crossings(line, points) == expected


@pytest.mark.parametrize(
    ("start", "end", "band", "units", "wh", "tol"),
    [
        ((0, 0), (10, 0), 2.0, "pixels", (640, 480), 20.0),  # |d| x band
        ((0, 0), (3, 4), 2.0, "pixels", (640, 480), 10.0),
        ((0, 50), (200, 50), 0.05, "fraction", (200, 100), 0.05 * 200 * 100),  # 5 px: 1000 / |d| = 1000 / 200
        ((100, 0), (100, 100), 0.05, "fraction", (200, 100), 0.05 * 100 * 200),  # 10 px: 2000 / 100
        ((0, 0), (10, 0), None, "pixels", (640, 480), DEFAULT_BAND_SHARE * 640 * 10),
        ((0, 0), (10, 0), 0.0, "pixels", (640, 480), 1e-8),  # band 0: the exact rule's float tolerance
        ((0, 0), (0.5, 0), 0.0, "pixels", (640, 480), 1e-9),
    ],
)
def test_band_tolerance(
    start: tuple[float, float],
    end: tuple[float, float],
    band: float | None,
    units: str,
    wh: tuple[int, int],
    tol: float,
) -> None:
    got = band_tolerance(np.array(start, float), np.array(end, float), band, units, wh)
    assert math.isclose(got, tol, rel_tol=1e-9)


def test_side_of_line_with_a_tolerance_and_the_empty_case() -> None:
    s, e = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    pts = np.array([[5, 3.0], [5, 2.0], [5, 1e-12], [5, -2.0], [5, -2.5]])
    assert side_of_line(pts, s, e).tolist() == [1, 1, 0, -1, -1]  # exact: only the line itself
    assert side_of_line(pts, s, e, 20.0).tolist() == [1, 0, 0, 0, -1]  # 2 px: |d| x 2
    assert side_of_line(np.zeros((0, 2)), s, e, 20.0).shape == (0,)


@pytest.mark.parametrize(
    ("points", "origin", "expected"),
    [
        # an upright line ending at the frame's bottom edge (y 100); anchors 0.05 px past the edge (a rounded
        # box bottom) are clamped into the frame, so the step crosses the segment at its end, not beside it
        ([(90.0, 100.05), (110.0, 100.05)], None, [IN]),
        ([(90.0, 100.0), (110.0, 100.0)], None, [IN]),  # the same inside the frame
        ([(110.0, 100.05)], (90.0, 100.05), [IN]),  # a new track's origin is clamped too
        ([(-5.0, 50.0), (-5.0, 50.0)], None, []),  # clamped onto x 0: still one side, no crossing
    ],
)
def test_anchors_past_the_frame_are_clamped_into_it(
    points: list[tuple[float, float]], origin: tuple[float, float] | None, expected: list[Crossing]
) -> None:
    upright = LineDef("gate", (100.0, 0.0), (100.0, 100.0), band=0.0)  # left to right across it = out
    got = _crossings(upright, points, origin=origin)
    assert [c.direction for c in got] == ["out" if e == IN else "in" for e in expected]
