"""Zones and lines of one camera: which tracks are in which polygon, and which crossed which line, which way.

Pure NumPy and plain Python state; no I/O. A track is placed by its box's **bottom centre**
(:func:`bottom_centres`), the point where an object stands on the ground, clamped into the frame (a box's
rounded edge may lie a fraction of a pixel outside it).

* A **zone** is a polygon (frame pixels, or fractions of the frame's width and height). A point on an edge
  or a vertex is inside. A track's membership changes only after ``inertia`` consecutive observations
  disagree with it (a track starts outside everything; ``inertia: 1`` follows every frame).
* A **line** goes from ``start`` to ``end``. Looking from ``start`` towards ``end`` on the image (y grows
  downwards), a crossing from its left to its right is ``in``, the other way ``out``: a line from
  ``[0, 300]`` to ``[640, 300]`` counts downward movement as ``in``. A crossing is counted once, when the
  anchor's side has changed for ``inertia`` consecutive observations and the anchor's path from its last
  place on the old side to its first place on the new one passes through the segment (a track walking
  round the line's end changes side without crossing it). An anchor within the line's ``band`` (a dead band,
  :mod:`agent.line_band`) is on neither side: a track keeps its side there (one first seen there has none).
  A track seen for the first time may come with an **origin** (``origins``: where the tracker first saw
  the object, before its track was confirmed and had an id): its lines start from the origin's sides, so
  a line crossed while the track was tentative is counted when the track is first seen (zones are not).

:class:`Areas` keeps the per-track state of one camera; :func:`polygon_problem` is what the config uses
to refuse a polygon at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from agent.line_band import band_tolerance, side_of_line

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
    band: float | None = None  # the dead band, in ``units`` (None: agent.line_band's default; 0: none)


@dataclass(frozen=True, slots=True)
class Crossing:
    tracker_id: int
    line: str
    direction: Literal["in", "out"]


# --------------------------------------------------------------------------------------------- geometry


def bottom_centres(boxes_xyxy: NDArray[Any]) -> FloatArray:
    """(n, 4) boxes -> (n, 2) anchors: the middle of each box's bottom edge."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    out = np.empty((len(b), 2))
    np.add(b[:, 0], b[:, 2], out=out[:, 0])
    out[:, 0] *= 0.5
    out[:, 1] = b[:, 3]
    return out


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
    """Every edge of a camera's polygons, then every line, side by side (1, E + L) per coordinate, for one
    pass over all zones and lines: the cross product of each anchor with each edge and line is made once."""

    cx: FloatArray  # starts and directions of the edges, then of the lines
    cy: FloatArray
    cdx: FloatArray
    cdy: FloatArray
    ax: FloatArray  # the edges alone, from here on
    ay: FloatArray
    dx: FloatArray
    by: FloatArray  # ay + dy
    dy_or_1: FloatArray  # dy, 1 where 0 (a level edge straddles no point: its x_at is never read)
    lo_x: FloatArray
    hi_x: FloatArray
    lo_y: FloatArray
    hi_y: FloatArray
    tol: FloatArray
    starts: NDArray[np.intp]  # the first edge of each polygon
    line_tol: FloatArray  # (1, L): each line's band (:func:`agent.line_band.band_tolerance`)

    @classmethod
    def of(
        cls,
        polys: Sequence[FloatArray],
        lines: Sequence[tuple[FloatArray, FloatArray]] = (),
        tols: Sequence[float] = (),
    ) -> _Edges:
        a = np.concatenate([p for p in polys]) if polys else np.zeros((0, 2))
        b = np.concatenate([np.roll(p, -1, axis=0) for p in polys]) if polys else np.zeros((0, 2))
        starts = np.cumsum([0] + [len(p) for p in polys[:-1]]).astype(np.intp) if polys else np.zeros(0, np.intp)
        d = b - a
        ls = np.array([s for s, _ in lines], dtype=np.float64).reshape(-1, 2)
        ld = np.array([e for _, e in lines], dtype=np.float64).reshape(-1, 2) - ls
        c, cd = np.concatenate([a, ls]), np.concatenate([d, ld])

        def row(v: FloatArray) -> FloatArray:
            return v.reshape(1, -1)

        return cls(
            row(c[:, 0]),
            row(c[:, 1]),
            row(cd[:, 0]),
            row(cd[:, 1]),
            row(a[:, 0]),
            row(a[:, 1]),
            row(d[:, 0]),
            row(a[:, 1] + d[:, 1]),
            row(np.where(d[:, 1] == 0, 1.0, d[:, 1])),
            row(np.minimum(a[:, 0], b[:, 0]) - _EPS),
            row(np.maximum(a[:, 0], b[:, 0]) + _EPS),
            row(np.minimum(a[:, 1], b[:, 1]) - _EPS),
            row(np.maximum(a[:, 1], b[:, 1]) + _EPS),
            row(1e-7 * np.maximum(np.hypot(d[:, 0], d[:, 1]), 1.0)),
            starts,
            row(np.asarray(tols, dtype=np.float64).reshape(len(ls))),  # agent.line_band.band_tolerance's
        )

    def inside(self, anchors_xy: FloatArray) -> NDArray[np.bool_]:
        """(n, 2) points -> (zones, n) inside, by :func:`points_in_polygon`'s rule, all zones in one pass."""
        zones = len(self.starts)
        result: NDArray[np.bool_] = self.observe(anchors_xy)[:, :zones].T.astype(bool)
        return result

    def observe(self, anchors_xy: FloatArray) -> NDArray[np.int8]:
        """(n, 2) points -> (n, zones + lines): 1 inside a zone (:func:`points_in_polygon`'s rule) else 0,
        then each line's :func:`side_of_line`."""
        n, zones, edges = len(anchors_xy), len(self.starts), self.ax.shape[1]
        out = np.zeros((n, zones + self.line_tol.shape[1]), dtype=np.int8)
        if n == 0 or out.shape[1] == 0:
            return out
        px, py = anchors_xy[:, 0:1], anchors_xy[:, 1:2]
        rx, ry = px - self.cx, py - self.cy
        cross = self.cdx * ry - self.cdy * rx
        if zones:
            ry_e = ry[:, :edges]
            on_edge = np.abs(cross[:, :edges]) <= self.tol
            straddles = (self.ay > py) != (self.by > py)
            hits = straddles & (px < self.ax + ry_e * self.dx / self.dy_or_1)
            inside = np.logical_xor.reduceat(hits, self.starts, axis=1)  # an odd number of hits
            if on_edge.any():  # rare: a point on an edge's line; is it within the edge?
                on_edge &= (self.lo_x <= px) & (px <= self.hi_x) & (self.lo_y <= py) & (py <= self.hi_y)
                inside |= np.logical_or.reduceat(on_edge, self.starts, axis=1)
            out[:, :zones] = inside
        if out.shape[1] > zones:
            lc = cross[:, edges:]
            out[:, zones:] = (lc > self.line_tol).view(np.int8) - (lc < -self.line_tol).view(np.int8)
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


@dataclass(slots=True)
class _Membership:
    inside: bool = False
    streak: int = 0  # consecutive observations that disagree with ``inside``


@dataclass(slots=True)
class _Side:
    side: int  # the confirmed side, +1 / -1
    last_xy: tuple[float, float]  # the last anchor seen on the confirmed side
    pending: int = 0  # the other side while it is being confirmed
    streak: int = 0
    first_xy: tuple[float, float] | None = None  # the first anchor seen on the pending side


@dataclass(slots=True)
class _Track:
    zones: list[_Membership]  # one per zone, in the camera's order
    lines: list[_Side | None]  # one per line; None until the track was seen on a side
    place: frozenset[str] = frozenset()
    steady: list[int] | None = None  # the observation that changes nothing but the lines' last points


def _steady(track: _Track) -> list[int] | None:
    """The observation (zones 0/1, line sides) under which ``track`` stays as it is: no streak running and
    a confirmed side on every line, seen again (None while any streak runs or a line has no side yet)."""
    if any(m.streak for m in track.zones):
        return None
    out = [int(m.inside) for m in track.zones]
    for state in track.lines:
        if state is None or state.pending != 0:
            return None
        out.append(state.side)
    return out


class Areas:
    """The zones and lines of one camera and every live track's place in them. Not thread-safe: one camera's
    frames come from one worker, in order."""

    def __init__(self, zones: Sequence[ZoneDef] = (), lines: Sequence[LineDef] = ()) -> None:
        self.zones = tuple(zones)
        self.lines = tuple(lines)
        self._tracks: dict[int, _Track] = {}
        self._wh: tuple[int, int] | None = None
        self._polys: list[FloatArray] = []
        self._edges = _Edges.of([])
        self._segs: list[tuple[FloatArray, FloatArray]] = []
        self._tols: list[float] = []  # each line's band_tolerance at this frame size

    def _geometry(self, frame_wh: tuple[int, int]) -> None:
        if self._wh == frame_wh:
            return
        self._wh = frame_wh
        self._polys = [_to_pixels(z.points, z.units, frame_wh) for z in self.zones]
        self._segs, self._tols = [], []
        for ln in self.lines:
            s, e = _to_pixels((ln.start, ln.end), ln.units, frame_wh)
            self._segs.append((s, e))
            self._tols.append(band_tolerance(s, e, ln.band, ln.units, frame_wh))
        self._edges = _Edges.of(self._polys, self._segs, self._tols)

    def update(
        self,
        tracker_ids: NDArray[Any],
        anchors_xy: NDArray[Any],
        frame_wh: tuple[int, int],
        origins: Mapping[int, tuple[float, float]] | None = None,
    ) -> tuple[dict[int, frozenset[str]], list[Crossing]]:
        """One frame's observations (tracks with id < 0 are skipped) -> every observed track's zones now, and
        the crossings this frame completed, in the order of ``tracker_ids``. ``origins``: an anchor per
        tracker id where a track not seen here before was first seen (see the module's docstring)."""
        ids = np.asarray(tracker_ids, dtype=np.int64).reshape(-1)
        xy = np.asarray(anchors_xy, dtype=np.float64).reshape(-1, 2)
        if len(ids) != len(xy):
            raise ValueError(f"{len(ids)} tracker ids for {len(xy)} anchors")
        keep = ids >= 0
        ids, xy = ids[keep], np.clip(xy[keep], 0.0, frame_wh)  # anchors inside the frame (docstring)
        self._geometry(frame_wh)
        # plain lists: the per-track loop below is Python, and NumPy scalars are slow to index one by one
        # each track's observation as one list (zones 0/1, then line sides), all zones and lines in one pass:
        # a track whose state it leaves as it was (the usual frame) is passed over with one comparison
        observed = self._edges.observe(xy).tolist()
        nz = len(self.zones)
        points = [(x, y) for x, y in xy.tolist()]
        places: dict[int, frozenset[str]] = {}
        crossings: list[Crossing] = []
        zones, lines = self.zones, self.lines
        for i, tid in enumerate(ids.tolist()):
            track = self._tracks.get(tid)
            if track is None:
                track = self._tracks[tid] = _Track([_Membership() for _ in zones], [None] * len(lines))
                origin = origins.get(tid) if origins else None
                if origin is not None:
                    self._start_lines(track, origin, frame_wh)
            obs = observed[i]
            if obs == track.steady:
                for state in track.lines:
                    state.last_xy = points[i]  # type: ignore[union-attr]  # steady: every line has a side
                places[tid] = track.place
                continue
            flipped = False
            for z, zone in enumerate(zones):
                flipped |= _observe_zone(track.zones[z], obs[z] == 1, zone.inertia)
            if flipped:
                track.place = frozenset(zone.name for z, zone in enumerate(zones) if track.zones[z].inside)
            places[tid] = track.place
            for k, line in enumerate(lines):
                direction = self._observe_line(track, k, line.inertia, obs[nz + k], points[i])
                if direction is not None:
                    crossings.append(Crossing(tid, line.name, direction))
            track.steady = _steady(track)
        return places, crossings

    def _start_lines(self, track: _Track, origin: tuple[float, float], frame_wh: tuple[int, int]) -> None:
        """A new track's line sides from its origin (within a line's band: no side, as usual)."""
        xy = np.clip(np.array([origin], dtype=np.float64), 0.0, frame_wh)  # into the frame, as update's
        for k, (s, e) in enumerate(self._segs):
            side = int(side_of_line(xy, s, e, self._tols[k])[0])
            if side != 0:
                track.lines[k] = _Side(side, (float(xy[0, 0]), float(xy[0, 1])))

    def _observe_line(
        self, track: _Track, k: int, inertia: int, side: int, xy: tuple[float, float]
    ) -> Literal["in", "out"] | None:
        if side == 0:
            return None  # on the line: neither side; nothing changes
        state = track.lines[k]
        if state is None:
            track.lines[k] = _Side(side, xy)
            return None
        if side == state.side:
            state.last_xy, state.pending, state.streak, state.first_xy = xy, 0, 0, None
            return None
        if state.pending != side:
            state.pending, state.streak, state.first_xy = side, 0, xy
        state.streak += 1
        if state.streak < inertia:
            return None
        assert state.first_xy is not None
        s, e = self._segs[k]
        crossed = _crosses(state.last_xy, state.first_xy, (float(s[0]), float(s[1])), (float(e[0]), float(e[1])))
        state.side, state.last_xy, state.pending, state.streak, state.first_xy = side, xy, 0, 0, None
        if not crossed:
            return None
        return "in" if side > 0 else "out"

    def place(self, tracker_id: int) -> frozenset[str]:
        """The zones a live track is in now (empty for an unknown one)."""
        track = self._tracks.get(tracker_id)
        if track is None:
            return frozenset()
        return track.place

    def forget(self, tracker_ids: Iterable[int]) -> None:
        """Tracks that ended: their places are dropped (they are in no zone any more)."""
        for tid in tracker_ids:
            self._tracks.pop(int(tid), None)

    @property
    def track_count(self) -> int:
        return len(self._tracks)


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


def _observe_zone(state: _Membership, inside: bool, inertia: int) -> bool:
    """One observation of a track against a zone; True if its membership flipped."""
    if inside == state.inside:
        state.streak = 0
        return False
    state.streak += 1
    if state.streak >= inertia:
        state.inside, state.streak = inside, 0
        return True
    return False
