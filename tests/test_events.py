"""Events and counts from tracked detections: new/update/end, the update rule, class votes, dwell, counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.events import CameraEvents, CountBoard, EventStage, topic_segment
from agent.zones import LineDef, ZoneDef

WH = (200, 200)
LEFT = ZoneDef("left", ((0.0, 0.0), (100.0, 0.0), (100.0, 200.0), (0.0, 200.0)), inertia=1)
GATE = LineDef("gate", (0.0, 100.0), (200.0, 100.0))  # downward = in
T0 = 1_700_000_000.0


def _box(cx: float, bottom: float, size: float = 10.0) -> list[float]:
    return [cx - size / 2, bottom - size, cx + size / 2, bottom]


def _frame(
    ev: CameraEvents,
    i: int,
    dets: list[tuple[int, float, float, str, float]],
    ended: tuple[int, ...] = (),
    dt: float = 1.0,
) -> list[dict[str, Any]]:
    """``dets``: (tracker id, centre x, bottom y, class, score); frame ``i`` is captured at T0 + i * dt."""
    ids = np.array([d[0] for d in dets], dtype=np.int64)
    boxes = np.array([_box(d[1], d[2]) for d in dets], dtype=float).reshape(-1, 4)
    return ev.observe(T0 + i * dt, i, WH, ids, boxes, [d[3] for d in dets], np.array([d[4] for d in dets]), ended)


def _events(**kw: Any) -> CameraEvents:
    return CameraEvents("cam0", device_id="dev", zones=[LEFT], lines=[GATE], **kw)


def test_empty_frames_and_unconfirmed_detections_make_nothing() -> None:
    ev = _events()
    assert _frame(ev, 0, []) == []
    assert _frame(ev, 1, [(-1, 50, 50, "a", 0.9), (-1, 60, 50, "a", 0.9)]) == []
    assert ev.live == 0
    assert ev.counts() == {"all/all": 0, "left/all": 0, "gate/in/all": 0, "gate/out/all": 0}


def test_a_track_life_new_update_end_with_one_stable_event_id() -> None:
    ev = _events(update_interval_s=0.0)
    out = _frame(ev, 0, [(4, 150, 50, "car", 0.8)])
    assert [e["type"] for e in out] == ["new"]
    new = out[0]
    assert new["event_id"] == f"cam0-{round(T0 * 1000)}-4" and new["tracker_id"] == 4
    assert new["class"] == "car" and new["score"] == 0.8 and new["top_score"] == 0.8
    assert new["box"] == {"x": 150.0, "y": 45.0, "width": 10.0, "height": 10.0}
    assert new["current_zones"] == [] and new["entered_zones"] == [] and new["dwell_s"] == {}
    assert new["end_time"] is None and new["frame_id"] == 0 and new["start_time"] == new["timestamp"]
    assert _frame(ev, 1, [(4, 150, 60, "car", 0.9)]) == []  # nothing a consumer cares about changed
    out = _frame(ev, 2, [(4, 50, 60, "car", 0.7)])  # into the left zone
    assert [e["type"] for e in out] == ["update"]
    assert out[0]["current_zones"] == ["left"] and out[0]["entered_zones"] == ["left"]
    assert out[0]["top_score"] == 0.9 and out[0]["score"] == 0.7 and out[0]["dwell_s"] == {"left": 0.0}
    _frame(ev, 3, [(4, 50, 60, "car", 0.7)])
    out = _frame(ev, 4, [(4, 150, 60, "car", 0.7)])  # out again, after 2 s inside
    out_4_time = out[0]["timestamp"]
    assert out[0]["current_zones"] == [] and out[0]["dwell_s"] == {"left": 2.0}
    out = _frame(ev, 6, [], ended=(4,))
    assert [e["type"] for e in out] == ["end"]
    end = out[0]
    assert end["event_id"] == new["event_id"] and end["frame_id"] == 6
    assert end["end_time"] == out_4_time != new["start_time"]  # the last sighting, frame 4
    assert end["timestamp"] > end["end_time"]  # the frame that ended it
    assert end["entered_zones"] == ["left"] and end["dwell_s"] == {"left": 2.0}
    assert ev.live == 0 and _frame(ev, 7, [], ended=(4, 99)) == []


def test_updates_wait_for_the_interval_and_carry_the_latest_state() -> None:
    ev = _events(update_interval_s=5.0)
    _frame(ev, 0, [(1, 150, 50, "a", 0.9)])
    assert _frame(ev, 1, [(1, 50, 50, "a", 0.9)]) == []  # entered at 1 s: too soon after the new
    assert _frame(ev, 2, [(1, 50, 50, "a", 0.9)]) == []
    out = _frame(ev, 5, [(1, 50, 50, "a", 0.9)])
    assert [e["type"] for e in out] == ["update"] and out[0]["dwell_s"] == {"left": 4.0}
    assert _frame(ev, 20, [(1, 50, 50, "a", 0.9)]) == []  # no change: no update, however long


def test_class_vote_is_the_highest_score_sum_and_a_change_is_an_update() -> None:
    ev = _events(update_interval_s=0.0)
    _frame(ev, 0, [(2, 150, 50, "cat", 0.6)])
    assert _frame(ev, 1, [(2, 150, 50, "dog", 0.6)]) == []  # a tie keeps "cat"
    out = _frame(ev, 2, [(2, 150, 50, "dog", 0.3)])
    assert out[0]["type"] == "update" and out[0]["class"] == "dog"
    assert ev.counts()["all/dog"] == 1 and ev.counts().get("all/cat") is None


def test_counts_by_zone_and_class_and_line_crossings() -> None:
    ev = _events()
    _frame(ev, 0, [(1, 50, 50, "a", 0.9), (2, 150, 50, "b", 0.9), (3, 50, 80, "b", 0.9)])
    c = ev.counts()
    assert c["all/all"] == 3 and c["all/a"] == 1 and c["all/b"] == 2
    assert c["left/all"] == 2 and c["left/a"] == 1 and c["left/b"] == 1
    _frame(ev, 1, [(1, 50, 150, "a", 0.9), (2, 150, 150, "b", 0.9), (3, 50, 80, "b", 0.9)])  # 1, 2 go down
    _frame(ev, 2, [(1, 50, 50, "a", 0.9), (2, 150, 150, "b", 0.9), (3, 50, 80, "b", 0.9)])  # 1 comes back
    c = ev.counts()
    assert (c["gate/in/all"], c["gate/in/a"], c["gate/in/b"], c["gate/out/all"], c["gate/out/a"]) == (2, 1, 1, 1, 1)
    _frame(ev, 3, [], ended=(1, 3))
    c = ev.counts()
    assert c["all/all"] == 1 and c["left/all"] == 0 and "left/a" not in c
    assert c["gate/in/all"] == 2  # crossings stay counted when the track ends


def test_mismatched_arrays_are_refused() -> None:
    ev = _events()
    with pytest.raises(ValueError, match="same length"):
        ev.observe(T0, 0, WH, np.array([1, 2]), np.zeros((2, 4)), ["a"], np.array([0.5, 0.5]))


def test_end_all_ends_every_live_track() -> None:
    ev = _events()
    _frame(ev, 0, [(1, 50, 50, "a", 0.9), (2, 150, 50, "b", 0.9)])
    assert sorted(e["tracker_id"] for e in ev.end_all(T0 + 1, 1)) == [1, 2] and ev.live == 0


@pytest.mark.parametrize(("name", "segment"), [("car", "car"), ("a/b", "a_b"), ("#+", "__"), ("", "_")])
def test_topic_segment(name: str, segment: str) -> None:
    assert topic_segment(name) == segment


def test_count_board_sends_changes_and_everything_on_a_new_connection() -> None:
    sent: list[tuple[str, bytes]] = []
    conn: list[object] = [None]
    board = CountBoard("p/dev", "cam0", lambda t, p: sent.append((t, p)), lambda: conn[0])
    assert board.update({"all/all": 1}) == 0 and sent == []  # no connection: nothing, and nothing lost
    conn[0] = 1.0
    assert board.update({"all/all": 1, "all/a": 1}) == 2
    assert sorted(sent) == [("p/dev/cam0/all/a", b"1"), ("p/dev/cam0/all/all", b"1")]
    sent.clear()
    assert board.update({"all/all": 1, "all/a": 1}) == 0
    assert board.update({"all/all": 0}) == 2  # "all/a" vanished: published as 0
    assert sorted(sent) == [("p/dev/cam0/all/a", b"0"), ("p/dev/cam0/all/all", b"0")]
    sent.clear()
    conn[0] = 2.0  # reconnected: every count again, zeros included
    assert board.update({"all/all": 0}) == 2


def test_event_stage_puts_events_in_order_and_ends_live_tracks_when_the_camera_stops(tmp_path: Path) -> None:
    from agent.config import parse_settings
    from agent.tracking import Tracked

    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "c.avi").write_bytes(b"")
    settings = parse_settings(
        {
            "device_id": "dev",
            "cameras": [
                {"name": "cam0", "source": "c.avi", "lines": [{"name": "g", "start": [0, 100], "end": [200, 100]}]}
            ],
            "inference": {"mode": "local", "local": {"model": "m.onnx"}},
            "state_dir": "s",
            "tracking": {"enabled": True},
            "events": {"enabled": True},
        },
        base_dir=tmp_path,
        env={},
    )
    put: list[tuple[str, bytes, float]] = []
    retained: list[tuple[str, bytes]] = []
    stage = EventStage(
        settings,
        topic="p/events",
        put=lambda *a: put.append(a),
        publish_retained=lambda t, p: retained.append((t, p)),
        connection=lambda: 1,
    )
    assert stage.finish("cam0", []) == 0  # no frame yet: nothing to end

    def tracked(y: float, ended: list[Any]) -> Tracked:
        pred = {"x": 50.0, "y": y - 5, "width": 10.0, "height": 10.0, "class": "a", "confidence": 0.9}
        return Tracked({"image": {"width": 200, "height": 200}, "predictions": [pred]}, np.array([7]), ended)

    assert stage.deliver("cam0", T0, 3, tracked(50, [])) == 1
    assert stage.deliver("cam0", T0 + 1, 4, tracked(150, [])) == 0
    assert ("seg-agent/dev/cam0/g/in/a", b"1") in retained and ("seg-agent/dev/cam0/all/all", b"1") in retained
    assert stage.finish("cam0", [7]) == 1
    kinds = [json.loads(p)["type"] for _, p, _ in put]
    assert kinds == ["new", "end"] and all(topic == "p/events" for topic, _, _ in put)
    end = json.loads(put[-1][1])
    assert end["frame_id"] == 4 and put[-1][2] == T0 + 1
    assert ("seg-agent/dev/cam0/all/all", b"0") in retained[-4:]  # the last update: nobody is left


def _counts_from_scratch(ev: CameraEvents) -> dict[str, int]:
    """counts() built again with nothing cached: the reference for the cached one."""
    ev._counts = None
    for track in ev._tracks.values():
        track.count_keys = None
    return ev.counts()


@pytest.mark.parametrize("seed", range(4))
def test_cached_counts_equal_counts_built_from_scratch(seed: int) -> None:
    """counts() is built again only when a track begins or ends, changes class or zones, or crosses a line:
    frame by frame it equals the counts built from nothing (same keys, same order, same values)."""
    rng = np.random.default_rng(seed)
    ev = CameraEvents("cam", device_id="dev", zones=[LEFT], lines=[GATE], update_interval_s=0.5)
    pos = rng.uniform(20, 180, size=(8, 2))
    changes = 0
    for f in range(200):
        pos = np.clip(pos + rng.normal(0, 8, size=pos.shape), 5, 195)
        ids = np.arange(1, 9) + 100 * (f // 60)
        ids[rng.random(8) < 0.2] = -1
        boxes = np.concatenate([pos - 5, pos + 5], axis=1)
        classes = [["a", "b/c"][int(rng.random() < 0.3)] for _ in range(8)]
        ended = [int(i) for i in np.arange(1, 9) + 100 * (f // 60 - 1)] if f % 60 == 0 and f else []
        ev.observe(T0 + f * 0.1, f, WH, ids, boxes, classes, rng.uniform(0.3, 1, 8), ended)
        before = ev._counts is None
        cached = ev.counts()
        changes += before
        assert list(cached.items()) == list(_counts_from_scratch(ev).items())
    assert 10 < changes < 200  # the cache was both rebuilt and reused


def _without_message_id(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "message_id"} for e in events]


@pytest.mark.parametrize("seed", range(6))
def test_camera_events_match_the_per_track_reference_on_random_walks(seed: int) -> None:
    """The array-state CameraEvents against the per-track one it replaced (tests/events_reference.py): the
    same events (all but the random message_id), counts and line counts frame by frame, on walks across two
    zones and two lines with class flips, unconfirmed detections, an id twice in a frame, tracks that end and
    come back, a new class late and a frame size change."""
    from tests.events_reference import ReferenceEvents

    rng = np.random.default_rng(seed)
    zones = [LEFT, ZoneDef("top", ((0.0, 0.0), (1.0, 0.0), (1.0, 0.4), (0.0, 0.4)), units="fraction", inertia=2)]
    lines = [GATE, LineDef("door", (0.5, 0.0), (0.5, 1.0), units="fraction", inertia=int(rng.integers(1, 3)))]
    kw: dict[str, Any] = {"device_id": "dev", "zones": zones, "lines": lines, "update_interval_s": 0.5}
    fast, slow = CameraEvents("cam", **kw), ReferenceEvents("cam", **kw)
    pos = rng.uniform(20, 180, size=(10, 2))
    for f in range(250):
        pos = np.clip(pos + rng.normal(0, 9, size=pos.shape), 2, 198)
        seen = np.nonzero(rng.random(10) > 0.15)[0]
        ids = seen + 1 + 100 * (f // 80)
        ids[rng.random(len(ids)) < 0.1] = -1
        boxes = np.concatenate([pos[seen] - 4, pos[seen] + 4], axis=1)
        if f % 37 == 0 and len(ids) > 2:
            ids[2], boxes[2] = ids[0], boxes[0] + 30  # one id twice
        names = ["a", "b/c"] + (["d"] if f > 120 else [])
        classes = [names[int(rng.integers(len(names)))] if rng.random() < 0.3 else "a" for _ in seen]
        scores = rng.uniform(0.3, 1.0, len(seen))
        ended = [int(i) for i in rng.choice(np.arange(1, 11) + 100 * (f // 80), size=2)] if f % 23 == 0 else []
        wh = WH if f < 200 else (240, 200)
        got = fast.observe(T0 + f * 0.1, f, wh, ids, boxes, classes, scores, ended)
        want = slow.observe(T0 + f * 0.1, f, wh, ids, boxes, classes, scores, ended)
        assert _without_message_id(got) == _without_message_id(want), f
        assert fast.counts() == slow.counts() and fast.crossed() == slow.crossed(), f
        assert fast.live == slow.live
    assert _without_message_id(fast.end_all(T0 + 30, 250)) == _without_message_id(slow.end_all(T0 + 30, 250))


def test_count_board_publishes_as_the_plain_rule_on_random_counts() -> None:
    """The board against its plain rule (publish what differs from what was sent, vanished keys as 0,
    everything on a new connection, nothing while disconnected), on random counts that repeat, lose keys
    and come back: the shortcut for repeated counts changes nothing that goes out."""
    rng = np.random.default_rng(3)
    got: list[tuple[str, bytes]] = []
    conn: list[object] = [1]
    board = CountBoard("b", "cam", lambda topic, payload: got.append((topic, payload)), lambda: conn[0])
    want: list[tuple[str, bytes]] = []
    sent: dict[str, int] = {}
    sent_on: object = None
    counts: dict[str, int] = {"all/all": 0}
    for _ in range(400):
        if rng.random() < 0.4:  # change something; else the same counts again
            key = f"z{int(rng.integers(3))}/{'abc'[int(rng.integers(3))]}"
            if key in counts and rng.random() < 0.5:
                del counts[key]
            else:
                counts[key] = int(rng.integers(1, 4))
        if rng.random() < 0.03:
            conn[0] = None if conn[0] is not None and rng.random() < 0.5 else int(rng.integers(100))
        board.update(dict(counts))
        if conn[0] is None:
            continue
        current = {**counts, **{k: 0 for k in sent if k not in counts}}
        fresh = conn[0] != sent_on
        want += [(f"b/cam/{k}", str(v).encode()) for k, v in current.items() if fresh or sent.get(k) != v]
        sent, sent_on = current, conn[0]
    assert got == want and len(want) > 50


def test_a_line_crossed_while_the_track_was_tentative_is_counted() -> None:
    """Regression (tests/track_scenes.py EARLY): the tracker says where each new track was first seen
    (``Tracked.born``) and its lines start there, so crossings made before confirmation count."""
    from agent.tracking import CameraTracks, TrackingSettings
    from tests import track_scenes as scene

    tracks = CameraTracks(TrackingSettings(enabled=True, min_frames=3), ["cam0"])
    gate = LineDef("gate", (40.0, 240.0), (600.0, 240.0))
    ev = CameraEvents("cam0", device_id="dev", lines=[gate])
    first_published: dict[int, float] = {}
    for f in range(scene.EARLY_FRAMES):
        boxes = scene.boxes_at(f, scene.EARLY)
        predictions = [
            {"x": (b[0] + b[2]) / 2, "y": (b[1] + b[3]) / 2, "width": b[2] - b[0], "height": b[3] - b[1]}
            | {"class": w.cls, "confidence": 0.9, "class_id": 0, "points": []}
            for w, b in boxes
        ]
        tracked = tracks.apply(
            "cam0", T0 + f * 0.1, {"image": {"width": 640, "height": 480}, "predictions": predictions}
        )
        for tid, (_, b) in zip(tracked.ids.tolist(), boxes, strict=True):
            first_published.setdefault(tid, b[3])
        assert tracked.boxes_xyxy is not None and tracked.classes is not None and tracked.scores is not None
        ev.observe(
            T0 + f * 0.1,
            f,
            (640, 480),
            tracked.ids,
            tracked.boxes_xyxy,
            tracked.classes,
            tracked.scores,
            [e.tracker_id for e in tracked.ended],
            tracked.born,
        )
    first_published.pop(-1, None)
    # the scene does what it says: each track is published first on the far side of the gate
    assert sorted(first_published.values()) == [pytest.approx(250 - 2 * 12, abs=1), pytest.approx(232 + 2 * 11.75)]
    want = scene.expected_lines(scene.EARLY)
    assert {k: v for k, v in ev.counts().items() if k.startswith("gate/")} == want


def test_a_track_found_again_across_the_line_counts_from_where_it_was_lost() -> None:
    """A track lost above the gate and found again below it (first as a tentative detection, then under its
    own id: re-found or healed) counts the crossing once, from its last place before the occlusion."""
    from agent.tracking import CameraTracks, TrackingSettings

    tracks = CameraTracks(TrackingSettings(enabled=True, min_frames=3), ["cam0"])
    ev = CameraEvents("cam0", device_id="dev", lines=[GATE])  # (0, 100)-(200, 100), downward = in
    # standing at bottom 70 (above), hidden 2 frames, then at 200 (below): 3.25 box sizes off, too far to be
    # found again at once (a tentative track starts, healed when it is confirmed)
    path = [70.0] * 8 + [None, None] + [200.0, 201.0, 202.0, 203.0, 204.0]
    ids = []
    for f, bottom in enumerate(path):
        preds = [] if bottom is None else [{"x": 100.0, "y": bottom - 20.0, "width": 40.0, "height": 40.0}]
        preds = [p | {"class": "a", "confidence": 0.9, "class_id": 0, "points": []} for p in preds]
        tracked = tracks.apply("cam0", T0 + f * 0.1, {"image": {"width": 200, "height": 200}, "predictions": preds})
        assert tracked.boxes_xyxy is not None and tracked.classes is not None and tracked.scores is not None
        ev.observe(
            T0 + f * 0.1, f, WH, tracked.ids, tracked.boxes_xyxy, tracked.classes, tracked.scores, [], tracked.born
        )
        ids += tracked.ids.tolist()
    assert ids[8] == ids[9] == -1 and set(ids[10:]) == {1}  # (the hidden frames have no detections)
    assert ev.counts()["gate/in/all"] == 1 and ev.counts()["gate/out/all"] == 0
