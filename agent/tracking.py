"""Tracking: one :class:`Tracker` per camera gives each detection a ``tracker_id`` that stays with the object.

Interface (lane C2's zones and events build on it)::

    tracker = Tracker(TrackingSettings(enabled=True))
    ids = tracker.update(t, boxes_xyxy, classes, scores)   # np.ndarray (n,) int64
    for track in tracker.ended:                           # the tracks that ended in that update
        track.tracker_id, track.class_name, track.first_t, track.last_t, track.hits
    tracker.born                                          # {id: (4,) xyxy first box} of tracks new in it
    tracker.finish()                                      # the camera stopped: every live track ends

- ``t``: the frame's capture time in seconds (``Frame.track_time``: for a file read with ``realtime: false``
  its own timeline); only differences matter, so a track's
  motion is in pixels per second whatever the sampling rate, and frames from the hosted API and the local
  model feed one tracker alike (a track goes on unchanged across a serverless ↔ local switch).
- ``boxes_xyxy``: (n, 4) float pixels of the frame; ``classes``: n class names (strings; class ids differ
  between the hosted and the local model, names don't); ``scores``: (n,) confidences in 0-1.
- ``ids[i]`` is the tracker id of detection ``i`` (>= 1, unique per tracker), or ``-1`` while its track is
  not yet confirmed (``min_frames`` detections). A ``-1`` is not an id: callers attach no ``tracker_id`` to
  such a detection (never a shared placeholder id, the trap of supervision issue #2578).
- :attr:`Tracker.ended` is replaced at every :meth:`Tracker.update` with the confirmed tracks that ended in
  it (unseen for longer than ``lost_s`` or ``max_missed`` updates). Unconfirmed tracks end silently.
- :attr:`Tracker.born` is replaced at every update with the tracks confirmed in it under a new id, each
  with the box of its first (unpublished, tentative) detection: where the object was first seen, so a line
  it crossed while its track was tentative is still counted (:class:`agent.zones.Areas`' ``origins``). A
  fragment that takes over a lost track's id is not in it: that id's places go on from before.

Association is ByteTrack's, greedy by cost in six stages: (1) detections at or above ``high_score`` to the
confirmed tracks, live or lost, by IoU with each track's predicted box (constant velocity with fixed gains,
coasting from its last match for 1 s at most); (2) the lower-scored ones to the confirmed tracks left (an
occluded object scores lower, not nothing); (3) high ones left to lost tracks by centre distance in track
sizes, the reach growing with the time lost (by 2 sizes a second, for 1 s at most: a box that changed too much
behind an occluder for IoU), then low ones left to lost tracks the same way within half the distance (a partly
hidden object scores lower and often flips class: without this stage it started a new track), but not a
detection a live confirmed track still unmatched covers at IoU >= 0.6 whatever the classes (that track's object
with its class flipped: given to a lost track, it swapped ids); (4, 5) what is left to the tentative tracks. High
detections still unmatched start tentative tracks; a tentative track unmatched once is dropped. Fragments are
healed: a tentative track reaching ``min_frames`` within 3 track sizes of a lost confirmed track (its
predicted box, the reach growing with the time lost, whatever the classes unless ``class_cost`` >= 1; not one
seen since the tentative track began, away from it: that is another object) takes
over that track's id instead of a new one; no published id ever changes, since the tentative track had none. A
track's class is the score-weighted vote of its detections; ``class_cost`` (0.5) is added to the cost across
classes, so a flipped class continues a track only when the box agrees well (IoU >= 0.85, or within 1 track
size when lost); >= 1 keeps classes apart. Appearance (:mod:`agent.appearance`): given the frame's pixels, each
detection's mean colour inside its mask; a track's is blended over its matches, and stages 1, 3, 3b and healing
refuse a pair further apart than ``appearance_gate`` (same-class objects that cross no longer swap ids).
Colours are measured on demand (``colour_needed_m``): not for a detection that is the one candidate of a
steady confirmed track of known colour, whose colour is refreshed every ``COLOUR_EVERY`` matches only.
Greedy, not optimal assignment: ``scipy``'s
``linear_sum_assignment`` gave the same figures on the evaluation clips (measured before the re-finding and
healing stages) and the same pairs at 50 objects (``benchmarks/tracking.py``), and is a large dependency for a Pi.
The pure parts are NumPy functions named by their array layouts, tested by tables.

Importing this module has no side effects; a tracker is not thread-safe (one camera's worker feeds it, in
frame order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.appearance import COLOUR_EVERY, ColoursOf, blend_colour_n3, colour_far_nm, colours_of_image, lazy_colours_m3
from agent.assignment import assign_greedy, covered_m, greedy_pairs
from agent.track_boxes import (
    cxcywh_to_xyxy,
    iou_nm_xyxy,
    predictions_xyxy,
    read_predictions,
    refind_cost_nm,
    refind_near_nm,
    tag_predictions,
    xyxy_to_cxcywh,
)

__all__ = [
    "CameraTracks",
    "EndedTrack",
    "Tracked",
    "Tracker",
    "TrackingSettings",
    "assign_greedy",
    "cxcywh_to_xyxy",
    "iou_nm_xyxy",
    "predictions_xyxy",
    "refind_cost_nm",
    "xyxy_to_cxcywh",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
Colours = F64 | ColoursOf | None  # each detection's colour, a function giving some of them (on demand), or none

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class TrackingSettings:
    """The ``tracking:`` section. Off by default: results are as before, with no ``tracker_id``."""

    enabled: bool = False
    min_frames: int = 3  # detections before a track is confirmed and its detections carry an id
    lost_s: float = 3.0  # a track unseen for longer ends (objects leave the frame or hide for 2-3 s)
    max_missed: int = 60  # ... or one unseen in this many updates in a row (whichever comes first)
    high_score: float = 0.6  # detections at or above: first-stage matching and new tracks
    low_score: float = 0.1  # detections below are ignored; between low and high: second stage only
    match_iou: float = 0.35  # least IoU of a high detection with a track's predicted box
    low_match_iou: float = 0.5  # least IoU for a low detection (stricter: it may be clutter)
    class_cost: float = 0.5  # added to the cost of a detection and a track of another class (>= 1: never);
    # below 1 a partly hidden object whose detection flips class keeps its track when the box agrees well
    appearance_gate: float = 60.0  # a match is refused when the mean colours (BGR) differ more; 0: off

    def __post_init__(self) -> None:
        checks = [
            (self.min_frames >= 1, "min_frames must be >= 1"),
            (self.lost_s > 0, "lost_s must be > 0"),
            (self.max_missed >= 1, "max_missed must be >= 1"),
            (0.0 <= self.low_score <= self.high_score <= 1.0, "need 0 <= low_score <= high_score <= 1"),
            (0.0 < self.match_iou <= 1.0, "match_iou must be in (0, 1]"),
            (0.0 < self.low_match_iou <= 1.0, "low_match_iou must be in (0, 1]"),
            (self.class_cost >= 0.0, "class_cost must be >= 0"),
            (self.appearance_gate >= 0.0, "appearance_gate must be >= 0"),
        ]
        for ok, reason in checks:
            if not ok:
                raise ValueError(reason)


@dataclass(frozen=True, slots=True)
class EndedTrack:
    """A confirmed track that ended: its id, class, first and last detection times and detection count."""

    tracker_id: int
    class_name: str
    first_t: float
    last_t: float
    hits: int


# ---- pure NumPy parts -----------------------------------------------------------------------------------


# ---- the tracker ----------------------------------------------------------------------------------------

# Fixed gains of the constant-velocity model (a steady-state Kalman filter on the centre; the size follows
# the detections without a velocity of its own: it changes with occlusion more than with motion).
_ALPHA = 0.7  # how far a matched centre moves from the prediction towards the detection
_BETA = 0.3  # how far the velocity moves towards the one the detection implies
_ALPHA_SIZE = 0.25  # sizes follow slowly: a box shrinking behind an occluder is not the object shrinking
_MAX_COAST_S = 1.0  # a lost track's predicted box moves on for this long at most
_REFIND_GROWTH = 2.0  # ... plus this many track sizes per second lost (up to _MAX_COAST_S)
_REFIND_DISTANCE = 1.5  # stage 3's bound: centre distance in units of the track's size (see refind_cost_nm)
_HEAL_DISTANCE = 3.0  # a track confirmed this near a lost one (in its sizes, see refind_cost_nm) continues it
_HEAL_APART = 1.5  # ... unless that one was seen after it began and this far from where it began
_CLAIM_IOU = 0.6  # a detection a live unmatched track covers this well is not given to a lost one by distance
_REFIND_LOW = 0.75  # ... for low-scored detections (stage 3b): nearer, they may be clutter


class Tracker:
    """One camera's tracks. Feed every processed frame in capture order, empty ones included."""

    def __init__(self, settings: TrackingSettings) -> None:
        self.settings = settings
        self.ended: list[EndedTrack] = []
        self.born: dict[int, tuple[float, float, float, float]] = {}
        self._next_id = 1
        self._classes: dict[str, int] = {}
        self._class_names: list[str] = []
        # One row per track: (cx, cy, w, h, vx, vy) at its last match, pixels and pixels/second.
        self._state = np.zeros((0, 6))
        self._last_t = np.zeros(0)  # when last matched
        self._first_t = np.zeros(0)
        self._first_box = np.zeros((0, 4))  # (cx, cy, w, h) of each track's first detection
        self._hits = np.zeros(0, dtype=np.int64)
        self._missed = np.zeros(0, dtype=np.int64)  # updates in a row without a match
        self._ids = np.zeros(0, dtype=np.int64)  # -1 until confirmed
        self._cls = np.zeros(0, dtype=np.int64)  # the class with the most votes
        self._votes = np.zeros((0, 0))  # (tracks, classes seen): the scores of each track's detections
        self._colour = np.zeros((0, 3))  # mean BGR inside the masks, blended over matches; NaN: unknown
        self._colour_age = np.zeros(0, dtype=np.int64)  # matches since the colour was last sampled
        self._t: float | None = None

    def update(self, t: float, boxes_xyxy: F64, classes: Sequence[str], scores: F64, colours_n3: Colours = None) -> I64:
        """The tracker id of each detection (-1: not yet confirmed) after the frame captured at ``t``;
        ``colours_n3``: each detection's mean BGR (:func:`agent.appearance.mean_bgr_n3`; NaN or None: unknown),
        or a function giving those of the detections at some indices, asked only where the gate may matter."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        score = np.asarray(scores, dtype=np.float64).reshape(-1)
        colour = np.asarray(np.nan if colours_n3 is None or callable(colours_n3) else colours_n3, np.float64)
        colour = np.full((len(boxes), 3), np.nan) if colour.ndim == 0 else colour
        if len(classes) != len(boxes) or len(score) != len(boxes) or colour.shape != (len(boxes), 3):
            raise ValueError("boxes_xyxy, classes, scores and colours_n3 must have the same length")
        known = self._classes.get
        index = [known(c) for c in classes]
        if None in index:  # a class name not seen before (rare): give it a column of votes
            index = [self._class_index(c) for c in classes]
        cls = np.array(index, dtype=np.int64)
        if self._t is not None and t < self._t:
            raise ValueError(f"frames must come in capture order: {t} after {self._t}")
        self._t = t
        s = self.settings
        predicted = self._predict(t)
        penalty = np.inf if s.class_cost >= 1.0 else s.class_cost  # 1 or more: never, in every stage
        other_class = np.where(self._cls[:, None] != cls[None, :], penalty, 0.0)
        by_iou = 1.0 - iou_nm_xyxy(predicted, boxes) + other_class
        gated = colours_n3 is not None and s.appearance_gate > 0.0  # without colours: no cost for the gate
        if gated and callable(colours_n3):
            colour = self._lazy_colours(colours_n3, by_iou, score)
        far = colour_far_nm(self._colour, colour, s.appearance_gate) if gated else None  # refused matches
        det_track = self._associate(predicted, boxes, score, other_class, by_iou, far)
        matched = det_track >= 0
        if gated:
            rows = det_track[matched]
            self._colour[rows] = blend_colour_n3(self._colour[rows], colour[matched])
            self._colour_age[rows] = np.where(np.isnan(colour[matched, 0]), self._colour_age[rows] + 1, 0)
        self._correct(t, predicted, boxes, det_track, cls[matched], score[matched])
        out = np.full(len(boxes), -1, dtype=np.int64)
        has = det_track >= 0
        out[has] = self._ids[det_track[has]]
        # Tentative tracks must be seen in a row; confirmed ones unseen too long end.
        gone = ((self._ids < 0) & (self._missed > 0)) | ((t - self._last_t) > s.lost_s) | (self._missed >= s.max_missed)
        self.ended = self._drop(~gone)
        new = ~has & (score >= s.high_score)
        out[new] = self._add(t, boxes[new], cls[new], score[new], colour[new])
        return out

    def finish(self) -> list[EndedTrack]:
        """End every track (the camera stopped); returns the confirmed ones, as :attr:`ended` does."""
        keep = np.zeros(len(self._ids), dtype=bool)
        self.ended = self._drop(keep)
        return self.ended

    @property
    def live_count(self) -> int:
        """Confirmed tracks not yet ended (seen now or lately)."""
        return int(np.count_nonzero(self._ids >= 0))

    # ---- steps --------------------------------------------------------------------------------------

    def _class_index(self, name: str) -> int:
        index = self._classes.get(name)
        if index is None:
            index = self._classes[name] = len(self._class_names)
            self._class_names.append(name)
            self._votes = np.concatenate([self._votes, np.zeros((len(self._votes), 1))], axis=1)
        return index

    def _predict(self, t: float) -> F64:
        """Every track's box at ``t``, as (n, 4) corners: moved on from its last match at its velocity, for
        :data:`_MAX_COAST_S` at most (an object hidden for longer may have stopped or turned)."""
        coast = np.minimum(t - self._last_t, _MAX_COAST_S)[:, None]
        cxcywh = self._state[:, :4].copy()
        cxcywh[:, :2] += self._state[:, 4:] * coast
        return cxcywh_to_xyxy(cxcywh)

    def _lazy_colours(self, colours_of: ColoursOf, by_iou: F64, score: F64) -> F64:
        """The colours the gate may need (:func:`agent.appearance.colour_needed_m` of stages 1-2's pairs)."""
        s = self.settings
        bounds = np.where(score >= s.high_score, 1.0 - s.match_iou, 1.0 - s.low_match_iou)
        candidate = (by_iou <= bounds[None, :]) & (self._ids >= 0)[:, None]  # confirmed tracks: stages 1-2
        fresh = (self._missed == 0) & (self._colour_age < COLOUR_EVERY - 1) & ~np.isnan(self._colour[:, 0])
        return lazy_colours_m3(colours_of, candidate, fresh, score >= s.low_score)

    def _associate(
        self, predicted: F64, boxes: F64, score: F64, other_class: F64, by_iou: F64, far: npt.NDArray[np.bool_] | None
    ) -> I64:
        """For each detection the row of its track, or -1 (ByteTrack's stages, plus two that find lost
        tracks again by distance when the box has changed too much for IoU). ``far``: (tracks, detections)
        pairs whose colours differ beyond the gate (None: none), refused in stages 1, 3 and 3b (not 2, 4 and 5:
        a partly hidden object's colour mixes in its occluder's, and a tentative track has one colour sample)."""
        s = self.settings
        det_track = np.full(len(boxes), -1, dtype=np.int64)
        if not len(boxes) or not len(self._ids):
            return det_track
        high = score >= s.high_score
        low = (score >= s.low_score) & ~high
        confirmed = self._ids >= 0
        lost = confirmed & (self._missed > 0)
        # stage 3's cost (None below), only for the pairs it looks at; the longer a track has been lost, the
        # farther from its predicted box it may be found
        reach = 1.0 + _REFIND_GROWTH * np.minimum(np.maximum((self._t or 0.0) - self._last_t, 0.0), _MAX_COAST_S)
        gated_iou = by_iou if far is None else np.where(far, np.inf, by_iou)
        free_tracks = np.ones(len(self._ids), dtype=bool)
        stages = [
            (confirmed, high, gated_iou, 1.0 - s.match_iou),  # 1: high detections, live and lost tracks
            (confirmed, low, by_iou, 1.0 - s.low_match_iou),  # 2: low detections, what is left of those
            (lost, high, None, _REFIND_DISTANCE),  # 3: lost tracks by distance
            (lost, low, None, _REFIND_LOW),  # 3b: ... also by low detections (a partly hidden object), nearer
            (~confirmed, high, by_iou, 1.0 - s.match_iou),  # 4: tentative tracks
            (~confirmed, low, by_iou, 1.0 - s.low_match_iou),  # 5: ... kept by low detections too
        ]
        open_det = np.ones(len(boxes), dtype=bool)
        for k, (track_ok, det_ok, cost, bound) in enumerate(stages):
            if k == 2:  # not re-found by distance: a detection a live track left free covers (its class flipped)
                open_det &= ~covered_m(by_iou - other_class, confirmed & ~lost & free_tracks, 1.0 - _CLAIM_IOU)
            rows = np.nonzero(track_ok & free_tracks)[0]
            cols = np.nonzero(det_ok & open_det)[0]
            if not len(rows) or not len(cols):
                continue
            pairs = (rows[:, None], cols[None, :])  # np.ix_'s indices, without its checks
            if cost is None:  # stage 3: centre distances, for these pairs only
                cost_rc = refind_near_nm(predicted[rows], boxes[cols], reach[rows], other_class[pairs])
                if far is not None:
                    cost_rc[far[pairs]] = np.inf
            else:
                cost_rc = cost[pairs]
            r, c = greedy_pairs(cost_rc, bound)
            det_track[cols[c]] = rows[r]
            free_tracks[rows[r]] = False
            open_det[cols[c]] = False
        return det_track

    def _correct(self, t: float, predicted: F64, boxes: F64, det_track: I64, cls: I64, score: F64) -> None:
        """Move matched tracks towards their detections (``cls``, ``score``: theirs, a vote for the track's
        class), count misses, confirm those seen ``min_frames`` times."""
        matched = det_track >= 0
        rows = det_track[matched]
        z = xyxy_to_cxcywh(boxes[matched])
        pred = xyxy_to_cxcywh(predicted[rows])
        residual = z[:, :2] - pred[:, :2]
        since = np.maximum(t - self._last_t[rows], _EPS)[:, None]
        state = self._state[rows]
        first_motion = (self._hits[rows] == 1)[:, None]  # a second detection: the velocity the two imply
        implied = (z[:, :2] - state[:, :2]) / since
        state[:, 4:] = np.where(first_motion, implied, state[:, 4:] + _BETA * residual / since)
        state[:, :2] = pred[:, :2] + _ALPHA * residual
        state[:, 2:4] = pred[:, 2:4] + _ALPHA_SIZE * (z[:, 2:] - pred[:, 2:])
        self._state[rows] = state
        self._last_t[rows] = t
        self._hits[rows] += 1
        if len(rows):
            self._votes[rows, cls] += score  # a track matches one detection at most: rows are distinct
            self._cls[rows] = np.argmax(self._votes[rows], axis=1)
        self._missed += 1
        self._missed[rows] = 0
        promote = np.nonzero((self._ids < 0) & (self._hits >= self.settings.min_frames))[0]
        promote = self._heal(t, predicted, promote)
        self._ids[promote] = np.arange(self._next_id, self._next_id + len(promote), dtype=np.int64)
        self._next_id += len(promote)
        self.born = {}
        if len(promote):
            first = cxcywh_to_xyxy(self._first_box[promote]).tolist()
            self.born = {
                int(i): (b[0], b[1], b[2], b[3]) for i, b in zip(self._ids[promote].tolist(), first, strict=True)
            }

    def _heal(self, t: float, predicted: F64, promote: I64) -> I64:
        """Tentative tracks about to be confirmed that continue a lost confirmed track (near its predicted
        box, whatever the class unless ``class_cost`` >= 1: the detector flips class on partly hidden objects)
        take over its id, hits, first time and class votes; the lost row loses its id and is dropped silently.
        Returns the rows left to get new ids. No id is ever changed once published: the tentative rows had
        none."""
        lost = np.nonzero((self._ids >= 0) & (self._missed > 0))[0]
        if not len(promote) or not len(lost):
            return promote
        unseen = np.clip(t - self._last_t[lost], 0.0, _MAX_COAST_S)
        reach = 1.0 + _REFIND_GROWTH * unseen
        cost = refind_cost_nm(xyxy_to_cxcywh(predicted[lost]), self._state[promote, :4]) / reach[:, None]
        # a fragment continues a track lost before it began, or one last seen near where the fragment began;
        # one seen since, elsewhere, is another object beside it (one appearing as a track missed a frame)
        seen_since = self._last_t[lost][:, None] >= self._first_t[promote][None, :]
        apart = refind_cost_nm(self._state[lost, :4], self._first_box[promote]) > _HEAL_APART
        cost[seen_since & apart] = np.inf
        cost[colour_far_nm(self._colour[lost], self._colour[promote], self.settings.appearance_gate)] = np.inf
        if self.settings.class_cost >= 1.0:  # classes kept apart: here too
            cost[self._cls[lost][:, None] != self._cls[promote][None, :]] = np.inf
        pairs, _, _ = assign_greedy(cost, _HEAL_DISTANCE)
        old, new = lost[pairs[:, 0]], promote[pairs[:, 1]]
        self._ids[new] = self._ids[old]
        self._hits[new] += self._hits[old]
        self._first_t[new] = self._first_t[old]
        self._votes[new] += self._votes[old]
        self._cls[new] = np.argmax(self._votes[new], axis=1)
        self._ids[old] = -1  # ends silently: its id lives on in the new row
        return np.setdiff1d(promote, new)

    def _add(self, t: float, boxes: F64, cls: I64, score: F64, colour: F64) -> I64:
        """Start a track per detection; their ids (-1: tentative)."""
        n = len(boxes)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        state = np.zeros((n, 6))
        state[:, :4] = xyxy_to_cxcywh(boxes)
        self._state = np.concatenate([self._state, state])
        self._last_t = np.concatenate([self._last_t, np.full(n, t)])
        self._first_t = np.concatenate([self._first_t, np.full(n, t)])
        self._first_box = np.concatenate([self._first_box, state[:, :4]])
        self._hits = np.concatenate([self._hits, np.ones(n, dtype=np.int64)])
        self._missed = np.concatenate([self._missed, np.zeros(n, dtype=np.int64)])
        ids = np.full(n, -1, dtype=np.int64)
        if self.settings.min_frames <= 1:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            self._next_id += n
        self._ids = np.concatenate([self._ids, ids])
        self._cls = np.concatenate([self._cls, cls])
        votes = np.zeros((n, self._votes.shape[1]))
        votes[np.arange(n), cls] = score
        self._votes = np.concatenate([self._votes, votes])
        self._colour = np.concatenate([self._colour, colour])
        self._colour_age = np.concatenate([self._colour_age, np.zeros(n, dtype=np.int64)])
        return ids

    def _drop(self, keep: npt.NDArray[np.bool_]) -> list[EndedTrack]:
        """Keep the rows where ``keep``; the confirmed tracks dropped, as :class:`EndedTrack`."""
        if keep.all():
            return []  # most frames: nothing ends, nothing to copy
        ended = [
            EndedTrack(
                int(self._ids[r]),
                self._class_names[int(self._cls[r])],
                float(self._first_t[r]),
                float(self._last_t[r]),
                int(self._hits[r]),
            )
            for r in np.nonzero(~keep & (self._ids >= 0))[0]
        ]
        self._state = self._state[keep]
        self._last_t = self._last_t[keep]
        self._first_t = self._first_t[keep]
        self._first_box = self._first_box[keep]
        self._hits = self._hits[keep]
        self._missed = self._missed[keep]
        self._ids = self._ids[keep]
        self._cls = self._cls[keep]
        self._votes = self._votes[keep]
        self._colour = self._colour[keep]
        self._colour_age = self._colour_age[keep]
        return ended


# ---- the pipeline's stage -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tracked:
    """One frame after tracking: the API object with ``tracker_id`` on its confirmed predictions, each
    prediction's id (-1: unconfirmed) and the tracks that ended with this frame. ``boxes_xyxy``,
    ``classes`` and ``scores`` are the predictions as the tracker read them (``None``: read them from
    ``api``), so the events stage does not parse the predictions a second time."""

    api: dict[str, Any]
    ids: I64
    ended: list[EndedTrack]
    boxes_xyxy: F64 | None = None
    classes: list[str] | None = None
    scores: F64 | None = None
    born: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)  # Tracker.born


class CameraTracks:
    """One :class:`Tracker` per camera, fed the API objects of both the hosted and the local path alike (so a
    track goes on across a switch). Each camera's results come from one worker thread, in capture order."""

    def __init__(self, settings: TrackingSettings, cameras: Iterable[str]) -> None:
        self._trackers = {name: Tracker(settings) for name in cameras}

    def apply(self, camera: str, t: float, api: dict[str, Any], image: U8 | None = None) -> Tracked:
        """Track one frame's predictions; a new API object (``api`` itself is not changed). ``image``: the
        frame's pixels (BGR, possibly decoded smaller than ``api["image"]``) where at hand, for the colours
        of the appearance gate; None: boxes and classes alone."""
        predictions: list[dict[str, Any]] = list(api.get("predictions") or [])
        tracker = self._trackers[camera]
        boxes, classes, scores = read_predictions(predictions)
        colours = None
        if image is not None and tracker.settings.appearance_gate > 0.0 and predictions:
            width = float((api.get("image") or {}).get("width") or image.shape[1])
            colours = colours_of_image(image, predictions, boxes, image.shape[1] / width)
        ids = tracker.update(t, boxes, classes, scores, colours)
        return Tracked(
            {**api, "predictions": tag_predictions(predictions, ids.tolist())},
            ids,
            tracker.ended,
            boxes,
            classes,
            scores,
            tracker.born,
        )

    def finish(self, camera: str) -> list[EndedTrack]:
        """The camera stopped: its live tracks end."""
        return self._trackers[camera].finish()
