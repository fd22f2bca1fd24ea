"""Zones and lines of one camera: which tracks are in which polygon, and which crossed which line, which way.

Pure NumPy and plain Python state; no I/O. A track is placed by its box's **bottom centre**
(:func:`bottom_centres`), the point where an object stands on the ground.

* A **zone** is a polygon (frame pixels, or fractions of the frame's width and height). A point on an edge
  or a vertex is inside. A track's membership changes only after ``inertia`` consecutive observations
  disagree with it (a track starts outside everything; ``inertia: 1`` follows every frame).
* A **line** goes from ``start`` to ``end``. Looking from ``start`` towards ``end`` on the image (y grows
  downwards), a crossing from its left to its right is ``in``, the other way ``out``: a line from
  ``[0, 300]`` to ``[640, 300]`` counts downward movement as ``in``. A crossing is counted once, when the
  anchor's side has changed for ``inertia`` consecutive observations and the anchor's path from its last
  place on the old side to its first place on the new one passes through the segment (a track walking
  round the line's end changes side without crossing it). An anchor exactly on the line is on neither side.

:class:`Areas` keeps the per-track state of one camera; :func:`polygon_problem` is what the config uses
to refuse a polygon at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Areas",
    "Crossing",
    "LineDef",
    "Units",
    "ZoneDef",
    "bottom_centres",
    "points_in_polygon",
    "polygon_problem",
    "segments_cross",
    "side_of_line",
]

Units = Literal["pixels", "fraction"]
FloatArray = NDArray[np.float64]
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ZoneDef:
    name: str
    points: tuple[tuple[float, float], ...]  # the polygon's vertices, in order
    units: Units = "pixels"
    inertia: int = 3  # consecutive observations before a track enters or leaves


@dataclass(frozen=True, slots=True)
class LineDef:
    name: str
    start: tuple[float, float]
    end: tuple[float, float]
    units: Units = "pixels"
    inertia: int = 1  # consecutive observations on the new side before a crossing counts


@dataclass(frozen=True, slots=True)
class Crossing:
    tracker_id: int
    line: str
    direction: Literal["in", "out"]


# --------------------------------------------------------------------------------------------- geometry


def bottom_centres(boxes_xyxy: NDArray[Any]) -> FloatArray:
    """(n, 4) boxes -> (n, 2) anchors: the middle of each box's bottom edge."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) * 0.5, b[:, 3]], axis=1)


def _polygon_area(poly_k2: FloatArray) -> float:
    x, y = poly_k2[:, 0], poly_k2[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _proper_cross(a: FloatArray, b: FloatArray, c: FloatArray, d: FloatArray) -> bool:
    """Segments ab and cd share a point (touching included)."""
    return bool(segments_cross(a[None], b[None], c, d)[0])


def polygon_problem(points: Sequence[Sequence[float]]) -> str | None:
    """Why ``points`` is not a usable zone polygon (None if it is): fewer than 3 vertices, not finite, no
    area (all on one line or repeated), or edges that cross each other."""
    try:
        poly = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        return "expected a list of [x, y] pairs"
    if poly.ndim != 2 or poly.shape[1] != 2:
        return "expected a list of [x, y] pairs"
    if len(poly) < 3:
        return f"a polygon needs at least 3 points, got {len(poly)}"
    if not np.isfinite(poly).all():
        return "coordinates must be finite numbers"
    span = float(np.ptp(poly, axis=0).max())
    if abs(_polygon_area(poly)) <= _EPS * max(span, 1.0) ** 2:
        return "the polygon has no area (its points are on one line or repeated)"
    k = len(poly)
    for i in range(k):
        if np.allclose(poly[i], poly[(i + 1) % k]):
            return f"points {i} and {(i + 1) % k} are the same"
    for i in range(k):
        a, b = poly[i], poly[(i + 1) % k]
        for j in range(i + 2, k):
            if i == 0 and j == k - 1:
                continue  # the closing edge shares vertex 0 with the first
            if _proper_cross(a, b, poly[j], poly[(j + 1) % k]):
                return f"edges {i}-{(i + 1) % k} and {j}-{(j + 1) % k} cross (the polygon intersects itself)"
    return None


def points_in_polygon(anchors_xy: NDArray[Any], poly_k2: NDArray[Any]) -> NDArray[np.bool_]:
    """(n, 2) points, (k, 2) polygon -> (n,) inside; a point on an edge or vertex is inside."""
    p = np.asarray(anchors_xy, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(poly_k2, dtype=np.float64).reshape(-1, 2)
    if len(p) == 0 or len(poly) < 3:
        return np.zeros(len(p), dtype=bool)
    a = poly[None, :, :]  # (1, k, 2) edge starts
    b = np.roll(poly, -1, axis=0)[None, :, :]  # edge ends
    px, py = p[:, None, 0], p[:, None, 1]
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    # on an edge: collinear and within the edge's box
    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    scale = np.maximum(np.hypot(bx - ax, by - ay), 1.0)
    within = (
        (np.minimum(ax, bx) - _EPS <= px)
        & (px <= np.maximum(ax, bx) + _EPS)
        & (np.minimum(ay, by) - _EPS <= py)
        & (py <= np.maximum(ay, by) + _EPS)
    )
    on_edge = ((np.abs(cross) <= 1e-7 * scale) & within).any(axis=1)
    # even-odd ray casting to +x
    straddles = (ay > py) != (by > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
    crossings = (straddles & (px < x_at)).sum(axis=1)
    result: NDArray[np.bool_] = on_edge | (crossings % 2 == 1)
    return result


@dataclass(frozen=True, slots=True)
class _Edges:
    """Every edge of a camera's polygons, side by side (1, E) per coordinate, for one pass over all zones."""

    ax: FloatArray
    ay: FloatArray
    dx: FloatArray
    dy: FloatArray
    lo_x: FloatArray
    hi_x: FloatArray
    lo_y: FloatArray
    hi_y: FloatArray
    tol: FloatArray
    starts: NDArray[np.intp]  # the first edge of each polygon
    by: FloatArray  # ay + dy
    dy_or_1: FloatArray  # dy, 1 where 0 (a level edge straddles no point: its x_at is never read)

    @classmethod
    def of(cls, polys: Sequence[FloatArray]) -> _Edges:
        a = np.concatenate([p for p in polys]) if polys else np.zeros((0, 2))
        b = np.concatenate([np.roll(p, -1, axis=0) for p in polys]) if polys else np.zeros((0, 2))
        starts = np.cumsum([0] + [len(p) for p in polys[:-1]]).astype(np.intp) if polys else np.zeros(0, np.intp)
        d = b - a

        def row(v: FloatArray) -> FloatArray:
            return v.reshape(1, -1)

        return cls(
            row(a[:, 0]),
            row(a[:, 1]),
            row(d[:, 0]),
            row(d[:, 1]),
            row(np.minimum(a[:, 0], b[:, 0]) - _EPS),
            row(np.maximum(a[:, 0], b[:, 0]) + _EPS),
            row(np.minimum(a[:, 1], b[:, 1]) - _EPS),
            row(np.maximum(a[:, 1], b[:, 1]) + _EPS),
            row(1e-7 * np.maximum(np.hypot(d[:, 0], d[:, 1]), 1.0)),
            starts,
            row(a[:, 1] + d[:, 1]),
            row(np.where(d[:, 1] == 0, 1.0, d[:, 1])),
        )

    def inside(self, anchors_xy: FloatArray) -> NDArray[np.bool_]:
        """(n, 2) points -> (zones, n) inside, by :func:`points_in_polygon`'s rule, all zones in one pass."""
        n = len(anchors_xy)
        if n == 0 or len(self.starts) == 0:
            return np.zeros((len(self.starts), n), dtype=bool)
        px, py = anchors_xy[:, 0:1], anchors_xy[:, 1:2]
        rx, ry = px - self.ax, py - self.ay
        cross = self.dx * ry - self.dy * rx
        on_edge = np.abs(cross) <= self.tol
        straddles = (self.ay > py) != (self.by > py)
        hits = straddles & (px < self.ax + ry * self.dx / self.dy_or_1)
        inside = np.logical_xor.reduceat(hits, self.starts, axis=1)  # an odd number of hits
        if on_edge.any():  # rare: a point on an edge's line; is it within the edge?
            on_edge &= (self.lo_x <= px) & (px <= self.hi_x) & (self.lo_y <= py) & (py <= self.hi_y)
            inside |= np.logical_or.reduceat(on_edge, self.starts, axis=1)
        result: NDArray[np.bool_] = inside.T
        return result


def side_of_line(anchors_xy: NDArray[Any], start: NDArray[Any], end: NDArray[Any]) -> NDArray[np.int8]:
    """(n, 2) points -> (n,) +1 right of start->end on the image (the ``in`` side), -1 left, 0 on the line."""
    p = np.asarray(anchors_xy, dtype=np.float64).reshape(-1, 2)
    s = np.asarray(start, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    d = e - s
    cross = d[0] * (p[:, 1] - s[1]) - d[1] * (p[:, 0] - s[0])
    tol = 1e-9 * max(float(np.hypot(*d)), 1.0)
    out: NDArray[np.int8] = np.where(cross > tol, 1, np.where(cross < -tol, -1, 0)).astype(np.int8)
    return out


def segments_cross(p0_n2: NDArray[Any], p1_n2: NDArray[Any], a: NDArray[Any], b: NDArray[Any]) -> NDArray[np.bool_]:
    """(n,) whether each segment p0[i]-p1[i] shares a point with the segment a-b (touching counts)."""
    p0 = np.asarray(p0_n2, dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(p1_n2, dtype=np.float64).reshape(-1, 2)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)

    def orient(o: FloatArray, u: FloatArray, v: FloatArray) -> FloatArray:
        r: FloatArray = (u[..., 0] - o[..., 0]) * (v[..., 1] - o[..., 1]) - (u[..., 1] - o[..., 1]) * (
            v[..., 0] - o[..., 0]
        )
        return r

    def on_seg(o: FloatArray, u: FloatArray, q: FloatArray) -> NDArray[np.bool_]:  # q within o-u's box
        r: NDArray[np.bool_] = (
            (np.minimum(o[..., 0], u[..., 0]) - _EPS <= q[..., 0])
            & (q[..., 0] <= np.maximum(o[..., 0], u[..., 0]) + _EPS)
            & (np.minimum(o[..., 1], u[..., 1]) - _EPS <= q[..., 1])
            & (q[..., 1] <= np.maximum(o[..., 1], u[..., 1]) + _EPS)
        )
        return r

    a_n = np.broadcast_to(a, p0.shape)
    b_n = np.broadcast_to(b, p0.shape)
    d1, d2 = orient(a_n, b_n, p0), orient(a_n, b_n, p1)
    d3, d4 = orient(p0, p1, a_n), orient(p0, p1, b_n)
    z1, z2, z3, z4 = (np.abs(d) <= _EPS for d in (d1, d2, d3, d4))
    proper = (((d1 > 0) & (d2 < 0)) | ((d1 < 0) & (d2 > 0))) & (((d3 > 0) & (d4 < 0)) | ((d3 < 0) & (d4 > 0)))
    touch = (
        (z1 & on_seg(a_n, b_n, p0))
        | (z2 & on_seg(a_n, b_n, p1))
        | (z3 & on_seg(p0, p1, a_n))
        | (z4 & on_seg(p0, p1, b_n))
    )
    result: NDArray[np.bool_] = proper | touch
    return result


def _to_pixels(points: Iterable[tuple[float, float]], units: Units, frame_wh: tuple[int, int]) -> FloatArray:
    arr = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
    if units == "fraction":
        arr = arr * np.asarray(frame_wh, dtype=np.float64)
    return arr


# --------------------------------------------------------------------------------------------- state


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of ``ids`` with no id twice, in order: the observations of one run can be taken
    together, and a run after another sees what that one left (an id twice in a frame is observed in turn)."""
    out, start, seen = [], 0, set()
    for i, tid in enumerate(ids):
        if tid in seen:
            out.append((start, i))
            start, seen = i, set()
        seen.add(tid)
    out.append((start, len(ids)))
    return out


class Areas:
    """The zones and lines of one camera and every live track's place in them. Not thread-safe: one camera's
    frames come from one worker, in order.

    The state is arrays with a row per live track (rows of ended tracks are reused), so a frame is a few
    NumPy operations whatever the number of tracks; Python runs only for a track whose zones changed or a
    side change to test against a line's segment. Per zone: ``inside`` and the ``streak`` of observations
    that disagree with it. Per line: the confirmed side (0: none seen yet), the pending other side and its
    streak; the last anchor seen on the confirmed side and the first seen on the pending one."""

    def __init__(self, zones: Sequence[ZoneDef] = (), lines: Sequence[LineDef] = ()) -> None:
        self.zones = tuple(zones)
        self.lines = tuple(lines)
        self._zone_names = [z.name for z in self.zones]
        self._zone_inertia = np.array([z.inertia for z in self.zones], dtype=np.int64)
        self._line_inertia = np.array([ln.inertia for ln in self.lines], dtype=np.int64)
        self._wh: tuple[int, int] | None = None
        self._edges = _Edges.of([])
        self._segs: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self._line_s = self._line_d = self._line_tol = np.zeros((1, 0))
        self._row: dict[int, int] = {}  # tracker id -> row
        self._free: list[int] = []
        self._place: list[frozenset[str]] = []
        nz, nl = len(self.zones), len(self.lines)
        self._inside = np.zeros((0, nz), dtype=bool)
        self._zone_streak = np.zeros((0, nz), dtype=np.int64)
        self._line_state = np.zeros((0, nl, 3), dtype=np.int64)  # side (0: none yet), pending side, streak
        self._line_points = np.zeros((0, nl, 4))  # the last anchor on the side, the first on the pending one

    def _geometry(self, frame_wh: tuple[int, int]) -> None:
        if self._wh == frame_wh:
            return
        self._wh = frame_wh
        self._edges = _Edges.of([_to_pixels(z.points, z.units, frame_wh) for z in self.zones])
        ends = [_to_pixels((ln.start, ln.end), ln.units, frame_wh) for ln in self.lines]
        self._segs = [((float(s[0]), float(s[1])), (float(e[0]), float(e[1]))) for s, e in ends]
        starts = np.array([s for s, _ in ends]).reshape(-1, 2)
        d = np.array([e for _, e in ends]).reshape(-1, 2) - starts
        self._line_s, self._line_d = starts.T[:, None, :], d.T[:, None, :]  # (2, 1, lines)
        self._line_tol = (1e-9 * np.maximum(np.hypot(d[:, 0], d[:, 1]), 1.0))[None, :]

    def _sides(self, xy: FloatArray) -> NDArray[np.int8]:
        """(n, 2) anchors -> (n, lines) :func:`side_of_line` of every line at once."""
        (sx, sy), (dx, dy) = self._line_s, self._line_d
        cross = dx * (xy[:, 1:2] - sy) - dy * (xy[:, 0:1] - sx)
        out: NDArray[np.int8] = (cross > self._line_tol).view(np.int8) - (cross < -self._line_tol).view(np.int8)
        return out

    def update(
        self, tracker_ids: NDArray[Any], anchors_xy: NDArray[Any], frame_wh: tuple[int, int]
    ) -> tuple[dict[int, frozenset[str]], list[Crossing]]:
        """One frame's observations (tracks with id < 0 are skipped) -> every observed track's zones now, and
        the crossings this frame completed, in the order of ``tracker_ids``."""
        ids = np.asarray(tracker_ids, dtype=np.int64).reshape(-1)
        xy = np.asarray(anchors_xy, dtype=np.float64).reshape(-1, 2)
        if len(ids) != len(xy):
            raise ValueError(f"{len(ids)} tracker ids for {len(xy)} anchors")
        keep = ids >= 0
        id_list = ids[keep].tolist()
        _, crossings = self.observe(id_list, xy[keep], frame_wh)
        place, row = self._place, self._row
        return {tid: place[row[tid]] for tid in id_list}, crossings

    def observe(
        self, tracker_ids: list[int], anchors_xy: FloatArray, frame_wh: tuple[int, int]
    ) -> tuple[set[int], list[Crossing]]:
        """:meth:`update` for ids all >= 0, as plain ints: the ids whose zones changed in this frame (see
        :meth:`place`), and the crossings."""
        moved: set[int] = set()
        crossings: list[Crossing] = []
        if not tracker_ids:
            return moved, crossings
        self._geometry(frame_wh)
        rows = self._rows(tracker_ids)
        inside = self._edges.inside(anchors_xy).T if self.zones else None
        sides = self._sides(anchors_xy) if self.lines else None
        runs = [(0, len(tracker_ids))] if len(set(tracker_ids)) == len(tracker_ids) else _runs(tracker_ids)
        for a, b in runs:
            if inside is not None:
                self._zones_step(tracker_ids[a:b], rows[a:b], inside[a:b], moved)
            if sides is not None:
                self._lines_step(tracker_ids[a:b], rows[a:b], sides[a:b], anchors_xy[a:b], crossings)
        return moved, crossings

    def _zones_step(self, ids: list[int], rows: NDArray[np.intp], inside: NDArray[np.bool_], moved: set[int]) -> None:
        """The rule of :func:`_observe_zone` on (n, zones) observations of distinct tracks."""
        was = self._inside[rows]
        agree = inside == was
        streak = self._zone_streak[rows] + 1
        streak[agree] = 0
        flip = ~agree & (streak >= self._zone_inertia)
        if flip.any():
            streak[flip] = 0
            now = was ^ flip
            self._inside[rows] = now
            names = self._zone_names
            for i in np.flatnonzero(flip.any(axis=1)).tolist():
                self._place[rows[i]] = frozenset(n for n, on in zip(names, now[i].tolist(), strict=True) if on)
                moved.add(ids[i])
        self._zone_streak[rows] = streak

    def _lines_step(
        self,
        ids: list[int],
        rows: NDArray[np.intp],
        sides: NDArray[np.int8],
        xy: FloatArray,
        crossings: list[Crossing],
    ) -> None:
        """(n, lines) sides of distinct tracks: a side change confirmed after ``inertia`` observations on the
        new side is a crossing if the path from the last anchor on the old side to the first on the new one
        meets the segment (:func:`_crosses`); an anchor on the line (side 0) changes nothing."""
        state = self._line_state[rows]  # (n, lines, 3): side, pending, streak
        points = self._line_points[rows]  # (n, lines, 4): last x, y; first x, y
        side = state[..., 0]
        seen = sides != 0
        same = seen & (sides == side)
        at = xy[:, None, :]
        if not (seen & ~same).any():  # most frames: every side seen is the one confirmed
            points[..., :2] = np.where(same[..., None], at, points[..., :2])
            self._line_points[rows] = points
            if state[..., 1:].any():
                state[..., 1:][same] = 0
                self._line_state[rows] = state
            return
        pending, streak = state[..., 1], state[..., 2]
        fresh = seen & (side == 0)  # the first side seen: confirmed at once
        other = seen & ~fresh & ~same
        begin = other & (pending != sides)  # the first observation on the other side
        pending = np.where(begin, sides, pending)
        streak = np.where(begin, 0, streak) + other
        points[..., 2:] = np.where(begin[..., None], at, points[..., 2:])
        confirm = other & (streak >= self._line_inertia)
        if confirm.any():
            for i, k in zip(*(v.tolist() for v in np.nonzero(confirm)), strict=True):
                a, b = self._segs[k]
                last, first = points[i, k].tolist()[:2], points[i, k].tolist()[2:]
                if _crosses((last[0], last[1]), (first[0], first[1]), a, b):
                    crossings.append(Crossing(ids[i], self.lines[k].name, "in" if sides[i, k] > 0 else "out"))
        reset = same | confirm
        points[..., :2] = np.where((fresh | reset)[..., None], at, points[..., :2])
        state[..., 0] = np.where(fresh | confirm, sides, side)
        state[..., 1] = np.where(reset, 0, pending)
        state[..., 2] = np.where(reset, 0, streak)
        self._line_state[rows] = state
        self._line_points[rows] = points

    def _rows(self, ids: list[int]) -> NDArray[np.intp]:
        """Each id's row; a new id gets a free row, reset (a track starts outside everything, on no side)."""
        get = self._row.get
        rows = [get(tid, -1) for tid in ids]
        if -1 in rows:
            for i, tid in enumerate(ids):
                if rows[i] < 0:
                    r = get(tid)
                    rows[i] = self._new_row(tid) if r is None else r  # an id twice: its row was just made
        return np.array(rows, dtype=np.intp)

    def _new_row(self, tid: int) -> int:
        if not self._free:
            n = len(self._place)
            grow = max(16, n)
            self._place += [frozenset()] * grow
            self._free = list(range(n + grow - 1, n - 1, -1))
            for name in ("_inside", "_zone_streak", "_line_state", "_line_points"):
                arr = getattr(self, name)
                setattr(self, name, np.concatenate([arr, np.zeros((grow, *arr.shape[1:]), dtype=arr.dtype)]))
        r = self._free.pop()
        self._row[tid] = r
        self._place[r] = frozenset()
        self._inside[r] = False
        self._zone_streak[r] = 0
        self._line_state[r] = 0
        return r

    def place(self, tracker_id: int) -> frozenset[str]:
        """The zones a live track is in now (empty for an unknown one)."""
        r = self._row.get(tracker_id)
        return frozenset() if r is None else self._place[r]

    def forget(self, tracker_ids: Iterable[int]) -> None:
        """Tracks that ended: their places are dropped (they are in no zone any more)."""
        for tid in tracker_ids:
            r = self._row.pop(int(tid), None)
            if r is not None:
                self._free.append(r)

    @property
    def track_count(self) -> int:
        return len(self._row)


def _crosses(p0: tuple[float, float], p1: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    """:func:`segments_cross` for one pair, in plain floats (it runs once per side change)."""

    def orient(o: tuple[float, float], u: tuple[float, float], v: tuple[float, float]) -> float:
        return (u[0] - o[0]) * (v[1] - o[1]) - (u[1] - o[1]) * (v[0] - o[0])

    def within(o: tuple[float, float], u: tuple[float, float], q: tuple[float, float]) -> bool:
        return (
            min(o[0], u[0]) - _EPS <= q[0] <= max(o[0], u[0]) + _EPS
            and min(o[1], u[1]) - _EPS <= q[1] <= max(o[1], u[1]) + _EPS
        )

    d1, d2, d3, d4 = orient(a, b, p0), orient(a, b, p1), orient(p0, p1, a), orient(p0, p1, b)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return (
        (abs(d1) <= _EPS and within(a, b, p0))
        or (abs(d2) <= _EPS and within(a, b, p1))
        or (abs(d3) <= _EPS and within(p0, p1, a))
        or (abs(d4) <= _EPS and within(p0, p1, b))
    )
