"""Objects, not frames: per camera, tracked detections become ``new`` / ``update`` / ``end`` events and counts.

:class:`CameraEvents` is fed each processed frame's confirmed tracks (the tracker's ids, boxes, classes and
scores; ``-1`` ids are skipped) and the tracks that ended, and returns the events to publish:

* ``new`` when a track is first seen with an id; ``end`` when the tracker ends it (``end_time`` is when it
  was last seen); ``update`` only when something a consumer cares about changed (the zones it is in, its
  class vote) and then at most once per ``update_interval_s`` of capture time (a change made within the
  interval goes out with the first frame after it).
* ``event_id`` is ``{camera}-{start epoch ms}-{tracker_id}``: the same on every event of one track, unique
  while tracker ids are unique per camera and start; ``message_id`` is unique per message (a repeat after a
  lost acknowledgement has the same one, as results do).
* ``class`` is the vote over the track (the class with the highest sum of scores), ``score`` this frame's
  confidence, ``top_score`` the highest so far; ``box`` the API's centre form (``x, y, width, height``).
* ``current_zones`` / ``entered_zones`` (ever, in order) / ``dwell_s`` (seconds inside, per zone ever entered)
  from :class:`agent.zones.Areas`; times are capture times (the frame's ``track_time``, never the wall clock:
  for a file read with ``realtime: false``, its own timeline from when its first frame was read, so dwell
  times are the video's seconds; the frame's published result keeps the wall time it was grabbed).

Counts (:meth:`CameraEvents.counts`), as topic suffixes under ``{base}/{camera}/``:
``{zone}/{class}`` and ``{zone}/all`` (live tracks in the zone now), ``all/{class}`` and ``all/all`` (live
tracks in the camera: from their ``new`` to their ``end``), ``{line}/in/{class}``, ``{line}/out/{class}`` and
``.../all`` (crossings, kept across restarts in ``{state_dir}/line_counts.json``: see
:mod:`agent.line_counts`). :class:`CountBoard` publishes those that changed, retained.

:class:`EventStage` is what ``pipeline.Sink`` calls: events go into the outbox (kept until acknowledged,
replayed in order with ``"replayed": true`` like results), counts to :class:`CountBoard`.

No I/O of its own and no locks: one camera's frames come from its one worker, in order, and each camera has
its own state.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.config import Settings
from agent.line_counts import LineCountStore
from agent.results import encode, iso_utc
from agent.tracking import Tracked, predictions_xyxy
from agent.zones import Areas, Crossing, LineDef, ZoneDef, bottom_centres

__all__ = ["ALL", "CameraEvents", "CountBoard", "EventStage", "topic_segment"]

ALL = "all"
_SCORE_DECIMALS = 4
_XY_DECIMALS = 1
_TIME_DECIMALS = 3


@functools.lru_cache(maxsize=1024)
def topic_segment(name: str) -> str:
    """A class name as one MQTT topic level: ``/``, ``+``, ``#`` and NUL become ``_`` (never empty)."""
    out = "".join("_" if ch in "/+#\0" else ch for ch in name)
    return out or "_"


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
    box_xyxy: Sequence[float]  # x0, y0, x1, y1
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


def _box_json(b: Sequence[float]) -> dict[str, float]:
    x0, y0, x1, y1 = b
    return {
        "x": round((x0 + x1) / 2, _XY_DECIMALS),
        "y": round((y0 + y1) / 2, _XY_DECIMALS),
        "width": round(x1 - x0, _XY_DECIMALS),
        "height": round(y1 - y0, _XY_DECIMALS),
    }


class CameraEvents:
    """One camera's live tracks as events, their zones and lines, and the counts they make."""

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
        self._areas = Areas(zones, lines)
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
        born: Mapping[int, tuple[float, float, float, float]] | None = None,
    ) -> list[dict[str, Any]]:
        """One frame: the events it makes, ``new`` and ``update`` in the order of the detections, then ``end``
        for the ``ended`` tracker ids. ``born``: the first box of each track new in this frame
        (:attr:`agent.tracking.Tracker.born`), where its lines start from."""
        ids = np.asarray(tracker_ids, dtype=np.int64).reshape(-1)
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        conf = np.asarray(scores, dtype=np.float64).reshape(-1)
        if not len(ids) == len(boxes) == len(conf) == len(classes):
            raise ValueError("tracker_ids, boxes_xyxy, classes and scores must have the same length")
        origins = {tid: ((b[0] + b[2]) * 0.5, b[3]) for tid, b in born.items()} if born else None
        places, crossings = self._areas.update(ids, bottom_centres(boxes), frame_wh, origins)
        events: list[dict[str, Any]] = []
        empty: frozenset[str] = frozenset()
        get, place, interval = self._tracks.get, places.get, self._interval
        # plain Python values, read once: NumPy scalars are slow one by one. A track seen again is updated
        # here, not in a call (what _see did): most of a frame's time is this loop
        for tid, box, label, score in zip(ids.tolist(), boxes.tolist(), classes, conf.tolist(), strict=True):
            if tid < 0:
                continue
            track = get(tid)
            if track is None:
                track = self._start(tid, t, label, score, box)
                self._move(track, place(tid, empty), t)
                events.append(self._event("new", track, t, frame_id))
                continue
            track.last_t = t
            track.score = score
            if score > track.top_score:
                track.top_score = score
            track.box_xyxy = box
            votes = track.votes
            votes[label] = vote = votes.get(label, 0.0) + score
            if label != track.label and vote > votes[track.label]:  # only this class's sum grew
                self._relabel(track, label)  # ties keep the class it had
            zones = place(tid, empty)
            if zones is not track.zones and zones != track.zones:  # Areas hands back the same frozenset
                self._move(track, zones, t)
            if track.changed and t - track.last_emit_t >= interval:
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

    def _start(self, tid: int, t: float, label: str, score: float, box: Sequence[float]) -> _Track:
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

    def _relabel(self, track: _Track, label: str) -> None:
        track.label = label
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


class CountBoard:
    """Publishes one camera's counts, retained, when they change; everything again after a reconnect.

    ``publish(topic, payload)`` is :meth:`agent.publisher.Publisher.publish_retained` (a latest value, dropped
    while disconnected); ``connection()`` says which connection is up (``None`` while none is): when it
    differs from the one the counts were last published on, every count is published again, so a broker
    that lost them, or a reconnect that dropped one, is put right by the next frame."""

    def __init__(
        self,
        base: str,
        camera: str,
        publish: Callable[[str, bytes], None],
        connection: Callable[[], object],
    ) -> None:
        self._prefix = f"{base}/{camera}/"
        self._publish = publish
        self._connection = connection
        self._sent: dict[str, int] = {}
        self._sent_on: object = None
        self._given: Mapping[str, int] = {}  # the counts of the last update that was looked at

    def update(self, counts: Mapping[str, int]) -> int:
        """Publishes the counts that differ from what was sent (all of them on a new connection); returns how
        many went out. Keys that disappeared are published as 0 (the object left)."""
        conn = self._connection()
        if conn is None:
            return 0  # nothing would arrive; the next connected frame sends all
        fresh = conn != self._sent_on
        if not fresh and (counts == self._given or counts == self._sent):
            return 0  # most frames: nothing changed (the same counts as last time: what was sent is still true)
        current = dict(counts)
        for key in self._sent:
            current.setdefault(key, 0)
        sent = 0
        for key, value in current.items():
            if fresh or self._sent.get(key) != value:
                self._publish(self._prefix + key, str(value).encode())
                sent += 1
        self._sent = current  # zeros kept: a new connection sends them again (bounded by zones x classes)
        self._sent_on = conn
        self._given = dict(counts)
        return sent


class EventStage:
    """Every camera's :class:`CameraEvents` and :class:`CountBoard`, fed by ``pipeline.Sink`` after the
    tracker. ``put(topic, payload, created)`` is the outbox's; events go on ``topic``."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str,
        put: Callable[[str, bytes, float], object],
        publish_retained: Callable[[str, bytes], None] | None = None,
        connection: Callable[[], object] = lambda: None,
        counts_file: Path | None = None,
    ) -> None:
        """``counts_file``: where line counts are kept across restarts (:mod:`agent.line_counts`; none: they
        start at 0)."""
        interval = settings.events.update_interval_s
        self._topic = topic
        self._put = put
        self._store: LineCountStore | None = None
        kept: dict[str, dict[str, int]] = {}
        if counts_file is not None:
            self._store = LineCountStore(counts_file, {c.name: {ln.name for ln in c.lines} for c in settings.cameras})
            kept = self._store.load()
        self._cameras = {
            c.name: CameraEvents(
                c.name,
                device_id=settings.device_id,
                zones=c.zones,
                lines=c.lines,
                update_interval_s=interval,
                crossed=kept.get(c.name),
            )
            for c in settings.cameras
        }
        self._boards: dict[str, CountBoard] = {}
        self._last: dict[str, tuple[float, int]] = {}  # each camera's last frame: capture time, frame_id
        if settings.events.counts and publish_retained is not None:
            for name in self._cameras:
                self._boards[name] = CountBoard(settings.topic_base, name, publish_retained, connection)

    def deliver(self, camera: str, t: float, frame_id: int, tracked: Tracked) -> int:
        """One frame after the tracker; returns how many events went into the outbox."""
        self._last[camera] = (t, frame_id)
        api = tracked.api
        image = api.get("image") or {}
        frame_wh = (int(image.get("width", 0)), int(image.get("height", 0)))
        if tracked.boxes_xyxy is not None and tracked.classes is not None and tracked.scores is not None:
            boxes, classes, scores = tracked.boxes_xyxy, tracked.classes, tracked.scores  # read by the tracker
        else:
            predictions = list(api.get("predictions") or [])
            boxes = predictions_xyxy(predictions)
            classes = [str(p.get("class", "")) for p in predictions]
            scores = np.array([float(p.get("confidence", 0.0)) for p in predictions], dtype=np.float64)
        ended = [e.tracker_id for e in tracked.ended]
        events = self._cameras[camera].observe(
            t, frame_id, frame_wh, tracked.ids, boxes, classes, scores, ended, tracked.born
        )
        for event in events:
            self._put(self._topic, encode(event), t)
        if self._store is not None:
            self._store.update(camera, self._cameras[camera].crossed())
        board = self._boards.get(camera)
        if board is not None:
            board.update(self._cameras[camera].counts())
        return len(events)

    def finish(self, camera: str, ended: Iterable[int]) -> int:
        """The camera stopped and the tracker ended ``ended``: an ``end`` for each (and any other live track),
        dated with the camera's last frame; the counts follow (nobody is left in its zones)."""
        if camera not in self._last:
            return 0
        t, frame_id = self._last[camera]
        cam = self._cameras[camera]
        events = cam.end(ended, t, frame_id) + cam.end_all(t, frame_id)
        for event in events:
            self._put(self._topic, encode(event), t)
        if self._store is not None:
            self._store.update(camera, cam.crossed())
            self._store.flush()  # the counts of the last seconds, not yet written
        board = self._boards.get(camera)
        if board is not None:
            board.update(cam.counts())
        return len(events)
