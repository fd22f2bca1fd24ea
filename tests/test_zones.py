"""Zones and lines: the geometry as tables of cases, then the per-track state (inertia, crossings)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.zones import (
    Areas,
    Crossing,
    LineDef,
    ZoneDef,
    bottom_centres,
    points_in_polygon,
    polygon_problem,
    segments_cross,
    side_of_line,
)
from tests.zones_reference import ReferenceAreas

SQUARE = [(10.0, 10.0), (20.0, 10.0), (20.0, 20.0), (10.0, 20.0)]
CONCAVE = [(0.0, 0.0), (30.0, 0.0), (30.0, 30.0), (15.0, 10.0), (0.0, 30.0)]  # a "V" notch from the bottom


def test_bottom_centres_and_the_empty_case() -> None:
    boxes = np.array([[0, 0, 10, 20], [5, 5, 7, 9]], dtype=np.float32)
    assert bottom_centres(boxes).tolist() == [[5.0, 20.0], [6.0, 9.0]]
    assert bottom_centres(np.zeros((0, 4))).shape == (0, 2)


@pytest.mark.parametrize(
    ("point", "polygon", "inside"),
    [
        ((15, 15), SQUARE, True),
        ((5, 15), SQUARE, False),
        ((25, 15), SQUARE, False),
        ((10, 15), SQUARE, True),  # on the left edge
        ((20, 15), SQUARE, True),  # on the right edge
        ((15, 10), SQUARE, True),  # on the top edge
        ((15, 20), SQUARE, True),  # on the bottom edge
        ((10, 10), SQUARE, True),  # a vertex
        ((20, 20), SQUARE, True),  # the opposite vertex
        ((20.001, 20), SQUARE, False),
        ((15, 5), CONCAVE, True),
        ((15, 20), CONCAVE, False),  # in the notch
        ((2, 25), CONCAVE, True),
        ((5, 25), CONCAVE, False),  # under the notch's edge
        ((15, 10), CONCAVE, True),  # the notch's vertex
        ((7.5, 20), CONCAVE, True),  # on the notch's slanted edge
        ((-1, 0), CONCAVE, False),  # on the line of the top edge, outside it
    ],
)
def test_points_in_polygon(point: tuple[float, float], polygon: list[tuple[float, float]], inside: bool) -> None:
    assert points_in_polygon(np.array([point], dtype=float), np.array(polygon)).tolist() == [inside]


def test_points_in_polygon_batch_and_empty() -> None:
    pts = np.array([[15, 15], [0, 0], [10, 20]], dtype=float)
    assert points_in_polygon(pts, np.array(SQUARE)).tolist() == [True, False, True]
    assert points_in_polygon(np.zeros((0, 2)), np.array(SQUARE)).shape == (0,)
    assert points_in_polygon(pts, np.zeros((0, 2))).tolist() == [False, False, False]


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        ([(0, 0), (1, 1)], "at least 3 points"),
        ([], "expected a list of [x, y] pairs"),
        ([(0, 0, 0), (1, 1, 1), (2, 0, 3)], "expected a list of [x, y] pairs"),
        ([(0, 0), (5, 5), (10, 10)], "no area"),
        ([(3, 3), (3, 3), (3, 3), (3, 3)], "no area"),
        ([(0, 0), (10, 0), (10, 0), (0, 10)], "are the same"),
        ([(0, 0), (10, 10), (10, 0), (0, 20)], "intersects itself"),  # a bow tie
        ([(0, 0), (float("nan"), 0), (0, 1)], "finite"),
        ([("a", "b"), (1, 2), (3, 4)], "expected a list of [x, y] pairs"),
    ],
)
def test_polygon_problem_rejects(points: list[tuple[float, ...]], reason: str) -> None:
    problem = polygon_problem(points)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("points", [SQUARE, CONCAVE, [(0, 0), (1, 0), (0, 1)], [(0, 0), (0.5, 0), (0.5, 0.5)]])
def test_polygon_problem_accepts(points: list[tuple[float, float]]) -> None:
    assert polygon_problem(points) is None


@pytest.mark.parametrize(
    ("point", "side"),
    [((5, 10), 1), ((5, -10), -1), ((5, 0), 0), ((50, 0), 0), ((50, 1), 1)],
)
def test_side_of_line_right_is_in(point: tuple[float, float], side: int) -> None:
    # start (0,0) -> end (10,0): looking east on an image (y down), right is +y
    assert side_of_line(np.array([point], dtype=float), np.array([0, 0]), np.array([10, 0])).tolist() == [side]
    assert side_of_line(np.zeros((0, 2)), np.array([0, 0]), np.array([10, 0])).shape == (0,)


@pytest.mark.parametrize(
    ("p0", "p1", "crosses"),
    [
        ((5, -5), (5, 5), True),
        ((15, -5), (15, 5), False),  # passes beside the segment's end
        ((10, -5), (10, 5), True),  # through the end point
        ((0, 5), (10, 5), False),  # parallel
        ((0, 0), (4, 0), True),  # overlapping, collinear
        ((5, 0), (5, 3), True),  # starts on it
    ],
)
def test_segments_cross(p0: tuple[float, float], p1: tuple[float, float], crosses: bool) -> None:
    got = segments_cross(np.array([p0], dtype=float), np.array([p1], dtype=float), np.array([0, 0]), np.array([10, 0]))
    assert got.tolist() == [crosses]


def _run(
    areas: Areas, frames: list[list[tuple[int, float, float]]], wh: tuple[int, int] = (100, 100)
) -> tuple[list[dict[int, frozenset[str]]], list[Crossing]]:
    places, crossings = [], []
    for frame in frames:
        ids = np.array([f[0] for f in frame], dtype=np.int64)
        xy = np.array([[f[1], f[2]] for f in frame], dtype=float).reshape(-1, 2)
        p, c = areas.update(ids, xy, wh)
        places.append(p)
        crossings.extend(c)
    return places, crossings


def test_zone_inertia_enters_and_leaves_after_n_frames() -> None:
    areas = Areas([ZoneDef("box", tuple(SQUARE), inertia=3)])
    path = [5, 15, 15, 5, 15, 15, 15, 5, 5, 15, 5, 5, 5]  # x positions, y = 15
    places, _ = _run(areas, [[(7, x, 15)] for x in path])
    inside = ["box" in p[7] for p in places]
    # a blip of 2 frames does nothing; 3 in a row enters; 2 out then back stays in; 3 out leaves
    assert inside == [False, False, False, False, False, False, True, True, True, True, True, True, False]
    assert areas.place(7) == frozenset()


def test_zone_inertia_one_follows_every_frame_and_ids_below_zero_are_skipped() -> None:
    areas = Areas([ZoneDef("box", tuple(SQUARE), inertia=1)])
    places, _ = _run(areas, [[(1, 15, 15), (-1, 15, 15)], [(1, 5, 5), (-1, 15, 15)]])
    assert places == [{1: frozenset({"box"})}, {1: frozenset()}]
    assert areas.track_count == 1
    places, crossings = _run(areas, [[]])
    assert places == [{}] and crossings == []


def test_fraction_units_scale_with_the_frame() -> None:
    areas = Areas([ZoneDef("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)), units="fraction", inertia=1)])
    (p1,), _ = _run(areas, [[(1, 150, 10)]], wh=(400, 100))
    (p2,), _ = _run(areas, [[(1, 150, 10)]], wh=(200, 100))
    assert p1[1] == frozenset({"left"}) and p2[1] == frozenset()


def test_line_counts_each_crossing_once_with_its_direction() -> None:
    line = LineDef("gate", (0.0, 50.0), (100.0, 50.0))  # downward = in
    areas = Areas(lines=[line])
    ys = [10, 30, 60, 80, 90, 40, 20, 70]  # down (in), up (out), down (in)
    _, crossings = _run(areas, [[(3, 50, y)] for y in ys])
    assert crossings == [Crossing(3, "gate", "in"), Crossing(3, "gate", "out"), Crossing(3, "gate", "in")]


def test_line_ignores_points_on_it_and_paths_round_its_end() -> None:
    areas = Areas(lines=[LineDef("gate", (0.0, 50.0), (40.0, 50.0))])
    # on the line twice, then across: one crossing; then round the end (x = 60) back up: none
    frames = [[(1, 20, 40)], [(1, 20, 50)], [(1, 20, 50)], [(1, 20, 60)], [(1, 60, 60)], [(1, 60, 40)]]
    _, crossings = _run(areas, frames)
    assert crossings == [Crossing(1, "gate", "in")]


def test_line_inertia_drops_jitter() -> None:
    areas = Areas(lines=[LineDef("gate", (0.0, 50.0), (100.0, 50.0), inertia=2)])
    ys = [40, 55, 45, 55, 45, 55, 60, 70]  # jitter across, then a real crossing held 2 frames
    _, crossings = _run(areas, [[(9, 50, y)] for y in ys])
    assert crossings == [Crossing(9, "gate", "in")]


def test_tracks_are_independent_and_forget_drops_state() -> None:
    areas = Areas([ZoneDef("box", tuple(SQUARE), inertia=1)], [LineDef("gate", (0.0, 50.0), (100.0, 50.0))])
    frames = [[(1, 15, 15), (2, 50, 40)], [(1, 15, 15), (2, 50, 60)]]
    places, crossings = _run(areas, frames)
    assert places[-1] == {1: frozenset({"box"}), 2: frozenset()}
    assert crossings == [Crossing(2, "gate", "in")]
    areas.forget([1, 2])
    assert areas.track_count == 0 and areas.place(1) == frozenset()
    # a forgotten track seen again starts afresh: its first side is no crossing
    _, crossings = _run(areas, [[(2, 50, 40)]])
    assert crossings == []


@pytest.mark.parametrize(
    ("origin", "ys", "expected"),
    [
        (None, [60, 70], []),  # no origin: the first sighting only sets the side
        ((50.0, 40.0), [60, 70], [Crossing(4, "gate", "in")]),  # first seen above, first published below
        ((50.0, 60.0), [70, 80], []),  # first seen on the side it is published on: nothing crossed
        ((50.0, 50.0), [60, 40], [Crossing(4, "gate", "out")]),  # origin on the line: no side, as usual
        ((190.0, 40.0), [60, 70], []),  # above, but past the line's end: changed side without crossing it
        ((50.0, 60.0), [40, 60], [Crossing(4, "gate", "out"), Crossing(4, "gate", "in")]),  # then as usual
    ],
)
def test_a_new_tracks_origin_starts_its_lines(
    origin: tuple[float, float] | None, ys: list[float], expected: list[Crossing]
) -> None:
    areas = Areas([ZoneDef("box", tuple(SQUARE), inertia=1)], [LineDef("gate", (0.0, 50.0), (100.0, 50.0))])
    crossings = []
    for k, y in enumerate(ys):
        origins = {4: origin} if origin is not None else None
        # the origin is read for a track seen for the first time only: given again later, it changes nothing
        places, c = areas.update(np.array([4]), np.array([[50.0, y]]), (200, 100), origins if k < 2 else None)
        crossings += c
        assert places[4] == frozenset()  # zones are not started from the origin
    assert crossings == expected


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 tracker ids for 1 anchors"):
        Areas().update(np.array([1, 2]), np.zeros((1, 2)), (10, 10))


def test_all_zones_in_one_pass_agree_with_points_in_polygon() -> None:
    from agent.zones import _Edges

    polys = [np.array(SQUARE), np.array(CONCAVE), np.array([(0.0, 0.0), (8.0, 2.0), (3.0, 9.0)])]
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(-1, 32), np.arange(-1, 32)), -1).reshape(-1, 2).astype(float)
    pts = np.concatenate([grid, rng.uniform(-2, 32, size=(500, 2)), np.array(CONCAVE), np.array(SQUARE)])
    got = _Edges.of(polys).inside(pts)
    for z, poly in enumerate(polys):
        assert got[z].tolist() == points_in_polygon(pts, poly).tolist()
    assert _Edges.of(polys).inside(np.zeros((0, 2))).shape == (3, 0)
    assert _Edges.of([]).inside(pts).shape == (0, len(pts))


def test_the_scalar_crossing_test_agrees_with_segments_cross() -> None:
    from agent.zones import _crosses

    rng = np.random.default_rng(1)
    a, b = np.array([0.0, 0.0]), np.array([10.0, 0.0])
    ends = np.concatenate([rng.integers(-3, 14, size=(400, 4)).astype(float), rng.uniform(-3, 14, size=(400, 4))])
    want = segments_cross(ends[:, :2], ends[:, 2:], a, b).tolist()
    got = [_crosses((e[0], e[1]), (e[2], e[3]), (0.0, 0.0), (10.0, 0.0)) for e in ends.tolist()]
    assert got == want


@pytest.mark.parametrize(("seed", "band"), [(s, b) for s in range(6) for b in (None, 0.0, 4.0)])
def test_areas_match_the_per_track_reference_on_random_walks(seed: int, band: float | None) -> None:
    """The fast Areas against the straightforward per-track one it replaced (tests/zones_reference.py):
    the same places and crossings, frame by frame, on integer walks that often land on lines and edges,
    with tracks forgotten and reused, an id twice in a frame, ids below 0 and a frame size change; lines
    with the default band, none, and 4 px (0.04 of the frame for the fraction line)."""
    rng = np.random.default_rng(seed)
    zones = [
        ZoneDef("box", tuple(SQUARE), inertia=int(rng.integers(1, 4))),
        ZoneDef("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)), units="fraction", inertia=1),
        ZoneDef("wedge", ((30, 5), (60, 20), (35, 26), (45, 15)), inertia=2),
    ]
    lines = [
        LineDef("gate", (0.0, 50.0), (100.0, 50.0), inertia=int(rng.integers(1, 4)), band=band),
        LineDef("door", (0.5, 0.1), (0.5, 0.6), units="fraction", band=None if band is None else band / 100),
        LineDef("slant", (10.0, 90.0), (70.0, 30.0), inertia=2, band=band),
    ]
    fast, slow = Areas(zones, lines), ReferenceAreas(zones, lines)
    pos = rng.integers(0, 100, size=(12, 2)).astype(float)
    for frame in range(300):
        pos = np.clip(pos + rng.integers(-6, 7, size=pos.shape), 0, 100)
        seen = rng.random(len(pos)) > 0.2
        ids = np.nonzero(seen)[0].astype(np.int64) + 1
        ids[rng.random(len(ids)) < 0.05] = -1
        xy = pos[seen]
        if frame % 41 == 0 and len(ids) > 1:
            ids[1] = ids[0]  # one id twice: observed in turn
        wh = (100, 100) if frame < 150 else (120, 100)
        assert fast.update(ids, xy, wh) == slow.update(ids, xy, wh)
        if frame % 17 == 0:
            gone = rng.choice(np.arange(1, 13), size=3, replace=False).tolist()
            fast.forget(gone)
            slow.forget(gone)
        assert fast.track_count == slow.track_count
    assert all(fast.place(t) == slow.place(t) for t in range(1, 13))
