"""A straightforward per-track reference of :class:`agent.zones.Areas` (the code before its fast path, zone by zone):
one Python object per track, zone and line, observed one at a time. tests/test_zones.py checks the fast
:class:`agent.zones.Areas` against it on random walks; nothing in agent/ uses it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from agent.line_band import band_tolerance
from agent.zones import Crossing, LineDef, ZoneDef, _crosses, _to_pixels, points_in_polygon, side_of_line

FloatArray = NDArray[np.float64]


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


class ReferenceAreas:
    """The zones and lines of one camera and every live track's place in them. Not thread-safe: one camera's
    frames come from one worker, in order."""

    def __init__(self, zones: Sequence[ZoneDef] = (), lines: Sequence[LineDef] = ()) -> None:
        self.zones = tuple(zones)
        self.lines = tuple(lines)
        self._tracks: dict[int, _Track] = {}
        self._wh: tuple[int, int] | None = None
        self._polys: list[FloatArray] = []
        self._segs: list[tuple[FloatArray, FloatArray]] = []
        self._tols: list[float] = []

    def _geometry(self, frame_wh: tuple[int, int]) -> None:
        if self._wh == frame_wh:
            return
        self._wh = frame_wh
        self._polys = [_to_pixels(z.points, z.units, frame_wh) for z in self.zones]
        self._segs = []
        for ln in self.lines:
            s, e = _to_pixels((ln.start, ln.end), ln.units, frame_wh)
            self._segs.append((s, e))
        self._tols = [
            band_tolerance(s, e, ln.band, ln.units, frame_wh) for ln, (s, e) in zip(self.lines, self._segs, strict=True)
        ]

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
        ids, xy = ids[keep], xy[keep]
        xy[:, 0] = [min(max(x, 0.0), frame_wh[0]) for x in xy[:, 0]]  # anchors are clamped into the frame
        xy[:, 1] = [min(max(y, 0.0), frame_wh[1]) for y in xy[:, 1]]
        self._geometry(frame_wh)
        # plain lists: the per-track loop below is Python, and NumPy scalars are slow to index one by one
        inside = [points_in_polygon(xy, poly).tolist() for poly in self._polys]  # one zone at a time
        sides = [side_of_line(xy, s, e, tol).tolist() for (s, e), tol in zip(self._segs, self._tols, strict=True)]
        points = [(x, y) for x, y in xy.tolist()]
        places: dict[int, frozenset[str]] = {}
        crossings: list[Crossing] = []
        zones, lines = self.zones, self.lines
        for i, tid in enumerate(ids.tolist()):
            track = self._tracks.get(tid)
            if track is None:
                track = self._tracks[tid] = _Track([_Membership() for _ in zones], [None] * len(lines))
            flipped = False
            for z, zone in enumerate(zones):
                flipped |= _observe_zone(track.zones[z], inside[z][i], zone.inertia)
            if flipped:
                track.place = frozenset(zone.name for z, zone in enumerate(zones) if track.zones[z].inside)
            places[tid] = track.place
            for k, line in enumerate(lines):
                direction = self._observe_line(track, k, line.inertia, sides[k][i], points[i])
                if direction is not None:
                    crossings.append(Crossing(tid, line.name, direction))
        return places, crossings

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
