"""agent.line_counts: line counts kept in state_dir across restarts, written atomically and throttled."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from agent.config import parse_settings
from agent.events import EventStage
from agent.line_counts import FILE_NAME, LineCountStore
from agent.tracking import Tracked


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _store(path: Path, clock: Clock) -> LineCountStore:
    return LineCountStore(path, {"cam0": {"gate", "door"}, "cam1": set()}, interval_s=2.0, clock=clock)


def test_written_when_changed_at_most_every_interval_and_at_flush(tmp_path: Path) -> None:
    path, clock = tmp_path / FILE_NAME, Clock()
    store = _store(path, clock)
    assert store.load() == {} and not path.exists()  # no file yet: nothing kept
    assert store.update("cam0", {}) is False  # nothing changed: nothing written
    assert store.update("cam0", {"gate/in/all": 1}) is True  # the first change goes out at once
    clock.now = 1.0
    assert store.update("cam0", {"gate/in/all": 2}) is False  # within 2 s of the last write: held
    assert json.loads(path.read_text()) == {"cameras": {"cam0": {"gate/in/all": 1}}}
    clock.now = 2.5
    assert store.update("cam0", {"gate/in/all": 2}) is True  # the held change, on the next frame
    assert store.update("cam0", {"gate/in/all": 2}) is False
    clock.now = 3.0
    store.update("cam0", {"gate/in/all": 3})
    assert store.flush() is True and store.flush() is False  # at stop, whatever the interval; once
    assert json.loads(path.read_text()) == {"cameras": {"cam0": {"gate/in/all": 3}}}
    assert not path.with_name(FILE_NAME + ".tmp").exists()


@pytest.mark.parametrize(
    ("kept", "loaded"),
    [
        ({"cameras": {"cam0": {"gate/in/all": 4, "gate/out/a_b": 1}}}, {"cam0": {"gate/in/all": 4, "gate/out/a_b": 1}}),
        ({"cameras": {"cam0": {"old/in/all": 4, "gate/in/all": 2}}}, {"cam0": {"gate/in/all": 2}}),  # line gone
        ({"cameras": {"cam9": {"gate/in/all": 4}}}, {}),  # camera gone
        ({"cameras": {"cam1": {"gate/in/all": 4}}}, {}),  # camera has no lines now
        ({"cameras": {"cam0": {"gate/up/all": 1, "gate/in": 1, "gate/in/": 1}}}, {}),  # not a line count
        ({"cameras": {"cam0": {"gate/in/all": -1, "door/in/all": True, "door/out/all": 1.5}}}, {}),  # bad values
        ({"cameras": ["cam0"]}, {}),
        ({}, {}),
    ],
)
def test_load_keeps_only_counts_of_configured_lines(tmp_path: Path, kept: object, loaded: object) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps(kept))
    assert _store(path, Clock()).load() == loaded


def test_dropped_counts_leave_the_file_at_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps({"cameras": {"cam0": {"old/in/all": 4, "gate/in/all": 2}}}))
    store = _store(path, Clock())
    store.load()
    assert store.flush() is True
    assert json.loads(path.read_text()) == {"cameras": {"cam0": {"gate/in/all": 2}}}


def test_an_unreadable_file_or_an_unwritable_dir_is_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert _store(path, Clock()).load() == {}
    assert "can't be read" in caplog.text
    clock = Clock()
    store = _store(tmp_path / "missing" / FILE_NAME, clock)  # the directory isn't there: writes fail
    with caplog.at_level(logging.WARNING):
        assert store.update("cam0", {"gate/in/all": 1}) is False
        clock.now = 5.0
        assert store.update("cam0", {"gate/in/all": 2}) is False
    assert caplog.text.count("can't be kept") == 1  # warned once, not at every try


def test_event_stage_goes_on_from_kept_counts_and_keeps_them_at_finish(tmp_path: Path) -> None:
    """EventStage with a counts file: the kept count of the gate is where the camera's counts start, a new
    crossing adds to it, and finish writes it (the last seconds are not left unwritten)."""
    doc = {
        "device_id": "dev",
        "cameras": [
            {"name": "cam0", "source": "x.avi", "lines": [{"name": "gate", "start": [0, 100], "end": [200, 100]}]}
        ],
        "inference": {"mode": "local", "local": {"model": "m.onnx"}},
        "mqtt": {"host": "127.0.0.1"},
        "state_dir": "state",
        "tracking": {"enabled": True},
        "events": {"enabled": True},
    }
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "x.avi").write_bytes(b"")
    settings = parse_settings(doc, base_dir=tmp_path, env={})
    path = tmp_path / FILE_NAME
    path.write_text(json.dumps({"cameras": {"cam0": {"gate/in/all": 5, "gate/in/a": 5}}}))
    published: dict[str, bytes] = {}
    stage = EventStage(
        settings,
        topic="t/events",
        put=lambda topic, payload, created: None,
        publish_retained=lambda topic, payload: published.__setitem__(topic, payload),
        connection=lambda: 1,
        counts_file=path,
    )
    for i, y in enumerate([60, 80, 120, 140]):  # down across the gate: one "in"
        box = {"x": 100.0, "y": y - 10.0, "width": 20.0, "height": 20.0, "class": "a", "confidence": 0.9}
        api = {"image": {"width": 200, "height": 200}, "predictions": [box]}
        stage.deliver("cam0", 100.0 + i, i, Tracked(api, np.array([3]), []))
    assert published[f"{settings.topic_base}/cam0/gate/in/all"] == b"6"
    stage.finish("cam0", [3])
    assert json.loads(path.read_text())["cameras"]["cam0"] == {"gate/in/all": 6, "gate/in/a": 6}
