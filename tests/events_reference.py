"""A straightforward per-track reference of :class:`agent.events.CameraEvents` (the code before its array
state): one Python object per track, observed one detection at a time, over
:class:`tests.zones_reference.ReferenceAreas`. tests/test_events.py checks the fast one against it on random
walks; nothing in agent/ uses it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.events import ALL, topic_segment
from agent.results import iso_utc
from agent.zones import Crossing, LineDef, ZoneDef, bottom_centres
from tests.zones_reference import ReferenceAreas

_SCORE_DECIMALS = 4
_XY_DECIMALS = 1
_TIME_DECIMALS = 3


@dataclass(slots=True)
class _Track:
    tracker_id: int
    event_id: str
    start_t: float
    last_t: float
    votes: dict[str, float]
    label: str
    score: float
    top_score: float
    box_xyxy: tuple[float, float, float, float]
    zones: frozenset[str] = frozenset()
    entered: list[str] = field(default_factory=list)
    dwell: dict[str, float] = field(default_factory=dict)  # closed stays, seconds
    since: dict[str, float] = field(default_factory=dict)  # zone -> when the current stay began
    last_emit_t: float = 0.0
    changed: bool = False  # something worth an update since the last event
    count_keys: tuple[str, ...] | None = None  # the live counts it adds 1 to (None: to be worked out)

    def dwell_at(self, t: float) -> dict[str, float]:
        out = dict(self.dwell)
        for zone, began in self.since.items():
            out[zone] = out.get(zone, 0.0) + max(0.0, t - began)
        return {z: round(s, _TIME_DECIMALS) for z, s in out.items()}


def _box_json(b: tuple[float, float, float, float]) -> dict[str, float]:
    x0, y0, x1, y1 = b
    return {
        "x": round((x0 + x1) / 2, _XY_DECIMALS),
        "y": round((y0 + y1) / 2, _XY_DECIMALS),
        "width": round(x1 - x0, _XY_DECIMALS),
        "height": round(y1 - y0, _XY_DECIMALS),
    }


class ReferenceEvents:
    """The per-track :class:`agent.events.CameraEvents` (events, zones, lines and counts)."""

    def __init__(
        self,
        camera: str,
        *,
        device_id: str,
        zones: Sequence[ZoneDef] = (),
        lines: Sequence[LineDef] = (),
        update_interval_s: float = 5.0,
        crossed: Mapping[str, int] | None = None,
    ) -> None:
        """``crossed``: line counts to go on from (kept from an earlier run, see :mod:`agent.line_counts`)."""
        self.camera = camera
        self._device_id = device_id
        self._interval = update_interval_s
        self._areas = ReferenceAreas(zones, lines)
        self._zone_names = [z.name for z in zones]
        self._line_names = [ln.name for ln in lines]
        self._tracks: dict[int, _Track] = {}
        self._crossed: dict[str, int] = dict(crossed or {})  # "{line}/{in|out}/{class}" -> crossings
        self._counts: dict[str, int] | None = None  # what counts() returns; None: build it again

    @property
    def live(self) -> int:
        return len(self._tracks)

    def observe(
        self,
        t: float,
        frame_id: int,
        frame_wh: tuple[int, int],
        tracker_ids: NDArray[Any],
        boxes_xyxy: NDArray[Any],
        classes: Sequence[str],
        scores: NDArray[Any],
        ended: Iterable[int] = (),
    ) -> list[dict[str, Any]]:
        """One frame: the events it makes, ``new`` and ``update`` in the order of the detections, then ``end``
        for the ``ended`` tracker ids."""
        ids = np.asarray(tracker_ids, dtype=np.int64).reshape(-1)
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        if not len(ids) == len(boxes) == len(conf) == len(classes):
            raise ValueError("tracker_ids, boxes_xyxy, classes and scores must have the same length")
        places, crossings = self._areas.update(ids, bottom_centres(boxes), frame_wh)
        events: list[dict[str, Any]] = []
        empty: frozenset[str] = frozenset()
        # plain Python values, read once: NumPy scalars are slow one by one
        for tid, box, label, score in zip(ids.tolist(), boxes.tolist(), classes, conf.tolist(), strict=True):
            if tid < 0:
                continue
            track = self._tracks.get(tid)
            if track is None:
                track = self._start(tid, t, label, score, (box[0], box[1], box[2], box[3]))
                self._move(track, places.get(tid, empty), t)
                events.append(self._event("new", track, t, frame_id))
                continue
            self._see(track, t, label, score, (box[0], box[1], box[2], box[3]))
            self._move(track, places.get(tid, empty), t)
            if track.changed and t - track.last_emit_t >= self._interval:
                events.append(self._event("update", track, t, frame_id))
        self._count_crossings(crossings)
        events += self.end(ended, t, frame_id)
        return events

    def end(self, tracker_ids: Iterable[int], t: float, frame_id: int) -> list[dict[str, Any]]:
        """``end`` events for tracks the tracker ended, noticed with the frame captured at ``t`` (ids never seen
        here are ignored); ``end_time`` is the track's last sighting."""
        events = []
        gone = []
        for tid in tracker_ids:
            track = self._tracks.pop(int(tid), None)
            if track is None:
                continue
            gone.append(track.tracker_id)
            self._counts = None
            self._move(track, frozenset(), track.last_t)  # close the stays at the last sighting
            events.append(self._event("end", track, t, frame_id, end_time=track.last_t))
        self._areas.forget(gone)
        return events

    def end_all(self, t: float, frame_id: int) -> list[dict[str, Any]]:
        """Every live track ends (the camera stopped)."""
        return self.end(list(self._tracks), t, frame_id)

    def crossed(self) -> dict[str, int]:
        """The line counts alone (``{line}/{in|out}/{class|all}``), what :mod:`agent.line_counts` keeps."""
        return dict(self._crossed)

    def counts(self) -> dict[str, int]:
        """Every count as ``{topic suffix under the camera: value}``; the ``all`` totals always present.
        Built again only after something it depends on changed (a track began or ended, changed class or
        zones, a line was crossed): most frames change none of it."""
        if self._counts is None:
            self._counts = self._build_counts()
        return dict(self._counts)

    def _build_counts(self) -> dict[str, int]:
        out: dict[str, int] = {f"{ALL}/{ALL}": 0}
        for zone in self._zone_names:
            out[f"{zone}/{ALL}"] = 0
        for line in self._line_names:
            out[f"{line}/in/{ALL}"] = 0
            out[f"{line}/out/{ALL}"] = 0
        get = out.get
        for track in self._tracks.values():
            keys = track.count_keys
            if keys is None:  # built again only when its class or zones changed
                label = topic_segment(track.label)
                keys = track.count_keys = tuple(k for z in (ALL, *track.zones) for k in (f"{z}/{ALL}", f"{z}/{label}"))
            for key in keys:
                out[key] = get(key, 0) + 1
        for key, n in self._crossed.items():
            out[key] = n
        return out

    # ---- steps ----------------------------------------------------------------------------------------

    def _start(self, tid: int, t: float, label: str, score: float, box: tuple[float, float, float, float]) -> _Track:
        track = _Track(
            tracker_id=tid,
            event_id=f"{self.camera}-{round(t * 1000)}-{tid}",
            start_t=t,
            last_t=t,
            votes={label: score},
            label=label,
            score=score,
            top_score=score,
            box_xyxy=box,
        )
        self._tracks[tid] = track
        self._counts = None
        return track

    def _see(self, track: _Track, t: float, label: str, score: float, box: tuple[float, float, float, float]) -> None:
        track.last_t = t
        track.score = score
        track.top_score = max(track.top_score, score)
        track.box_xyxy = box
        votes = track.votes
        votes[label] = votes.get(label, 0.0) + score
        if label != track.label and votes[label] > votes[track.label]:  # only this class's sum grew
            track.label = label  # ties keep the class it had
            track.changed = True
            track.count_keys = None
            self._counts = None

    def _move(self, track: _Track, zones: frozenset[str], t: float) -> None:
        if zones == track.zones:
            return
        for zone in track.zones - zones:
            track.dwell[zone] = track.dwell.get(zone, 0.0) + max(0.0, t - track.since.pop(zone, t))
        for zone in sorted(zones - track.zones, key=self._zone_names.index):
            track.since[zone] = t
            track.dwell.setdefault(zone, 0.0)
            if zone not in track.entered:
                track.entered.append(zone)
        track.zones = zones
        track.changed = True
        track.count_keys = None
        self._counts = None

    def _count_crossings(self, crossings: Sequence[Crossing]) -> None:
        if crossings:
            self._counts = None
        for c in crossings:
            track = self._tracks.get(c.tracker_id)
            label = topic_segment(track.label) if track is not None else "_"
            for key in (f"{c.line}/{c.direction}/{label}", f"{c.line}/{c.direction}/{ALL}"):
                self._crossed[key] = self._crossed.get(key, 0) + 1

    def _event(
        self, kind: str, track: _Track, t: float, frame_id: int, *, end_time: float | None = None
    ) -> dict[str, Any]:
        track.last_emit_t = t
        track.changed = False
        return {
            "type": kind,
            "event_id": track.event_id,
            "message_id": uuid.uuid4().hex,  # at-least-once delivery may repeat a message: drop repeats by it
            "device_id": self._device_id,
            "camera": self.camera,
            "tracker_id": track.tracker_id,
            "class": track.label,
            "score": round(track.score, _SCORE_DECIMALS),
            "top_score": round(track.top_score, _SCORE_DECIMALS),
            "box": _box_json(track.box_xyxy),
            "start_time": iso_utc(track.start_t),
            "end_time": None if end_time is None else iso_utc(end_time),
            "current_zones": [z for z in self._zone_names if z in track.zones],
            "entered_zones": list(track.entered),
            "dwell_s": track.dwell_at(t),
            "frame_id": frame_id,
            "timestamp": iso_utc(t),
        }
