"""The ``events:`` section and the cameras' ``zones:``/``lines:``: defaults, and every refusal naming its key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse_settings, settings_summary
from agent.zones import LineDef, ZoneDef


def _doc(tmp_path: Path, camera: dict[str, Any] | None = None, events: dict[str, Any] | None = None) -> dict[str, Any]:
    (tmp_path / "model.onnx").write_bytes(b"a readable file")
    (tmp_path / "clip.avi").write_bytes(b"")
    doc: dict[str, Any] = {
        "device_id": "dev-1",
        "cameras": [{"name": "cam0", "source": "clip.avi", **(camera or {})}],
        "inference": {"mode": "local", "local": {"model": "model.onnx"}},
        "mqtt": {"host": "127.0.0.1"},
        "state_dir": "state",
        "tracking": {"enabled": True},
    }
    if events is not None:
        doc["events"] = events
    return doc


ON = {"enabled": True}
SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]


def test_off_by_default(tmp_path: Path) -> None:
    s = parse_settings(_doc(tmp_path), base_dir=tmp_path, env={})
    assert not s.events.enabled and s.events.counts and s.events.update_interval_s == 5.0
    assert s.cameras[0].zones == () and s.cameras[0].lines == ()
    assert settings_summary(s)["events"] == {"enabled": False, "update_interval_s": 5.0, "counts": True}


def test_zones_and_lines_are_read_with_defaults(tmp_path: Path) -> None:
    camera = {
        "zones": [
            {"name": "drive", "points": SQUARE},
            {"name": "lawn", "points": [[0, 0.5], [1, 0.5], [1, 1]], "units": "fraction", "inertia": 1},
        ],
        "lines": [{"name": "gate", "start": [0, 300], "end": [640, 300]}],
    }
    s = parse_settings(_doc(tmp_path, camera, {"enabled": True, "update_interval_s": 2}), base_dir=tmp_path, env={})
    cam = s.cameras[0]
    assert cam.zones == (
        ZoneDef("drive", ((0.0, 0.0), (100.0, 0.0), (100.0, 100.0), (0.0, 100.0)), "pixels", 3),
        ZoneDef("lawn", ((0.0, 0.5), (1.0, 0.5), (1.0, 1.0)), "fraction", 1),
    )
    assert cam.lines == (LineDef("gate", (0.0, 300.0), (640.0, 300.0), "pixels", 1),)
    assert s.events.update_interval_s == 2.0
    assert cam.lines[0].band is None  # left out: agent.line_band's default
    assert settings_summary(s)["cameras"][0]["zones"][0]["name"] == "drive"


@pytest.mark.parametrize(
    ("camera", "events", "key", "reason"),
    [
        ({"zones": [{"name": "z", "points": SQUARE}]}, None, "cameras[0].zones", "needs events.enabled"),
        ({"lines": [{"name": "l", "start": [0, 0], "end": [1, 1]}]}, None, "cameras[0].lines", "needs events"),
        ({"zones": [{"name": "z", "points": [[0, 0], [1, 1]]}]}, ON, "cameras[0].zones[0].points", "at least 3"),
        ({"zones": [{"name": "z", "points": [[0, 0], [5, 5], [9, 9]]}]}, ON, "cameras[0].zones[0].points", "no area"),
        (
            {"zones": [{"name": "z", "points": [[0, 0], [10, 10], [10, 0], [0, 20]]}]},
            ON,
            "cameras[0].zones[0].points",
            "intersects itself",
        ),
        ({"zones": [{"name": "z", "points": [[0, 0], [1], [2, 2]]}]}, ON, "cameras[0].zones[0].points[1]", "[x, y]"),
        ({"zones": [{"name": "z", "points": "square"}]}, ON, "cameras[0].zones[0].points", "list of [x, y]"),
        ({"zones": [{"name": "z"}]}, ON, "cameras[0].zones[0].points", "required"),
        ({"zones": [{"points": SQUARE}]}, ON, "cameras[0].zones[0].name", "required"),
        ({"zones": [{"name": "all", "points": SQUARE}]}, ON, "cameras[0].zones[0].name", "reserved"),
        ({"zones": [{"name": "detect", "points": SQUARE}]}, ON, "cameras[0].zones[0].name", "reserved"),
        ({"lines": [{"name": "fps", "start": [0, 0], "end": [1, 1]}]}, ON, "cameras[0].lines[0].name", "reserved"),
        ({"zones": [{"name": "a/b", "points": SQUARE}]}, ON, "cameras[0].zones[0].name", "letters, digits"),
        (
            {"zones": [{"name": "z", "points": SQUARE, "units": "fraction"}]},
            ON,
            "cameras[0].zones[0].points[1]",
            "from 0 to 1",
        ),
        ({"zones": [{"name": "z", "points": SQUARE, "units": "inch"}]}, ON, "cameras[0].zones[0].units", "not one of"),
        ({"zones": [{"name": "z", "points": SQUARE, "inertia": 0}]}, ON, "cameras[0].zones[0].inertia", "range"),
        ({"zones": [{"name": "z", "points": SQUARE, "colour": 1}]}, ON, "cameras[0].zones[0].colour", "unknown key"),
        (
            {"zones": [{"name": "z", "points": SQUARE}], "lines": [{"name": "z", "start": [0, 0], "end": [1, 1]}]},
            ON,
            "cameras[0].lines[0].name",
            "duplicate",
        ),
        ({"lines": [{"name": "l", "start": [3, 3], "end": [3, 3]}]}, ON, "cameras[0].lines[0].end", "two different"),
        (
            {"lines": [{"name": "l", "start": [0.5, 0.5], "end": [0.5, 0.5], "units": "fraction", "band": 0.01}]},
            ON,
            "cameras[0].lines[0].end",
            "two different",
        ),
        (
            {"lines": [{"name": "l", "start": [0, 0], "end": [1, 1], "band": -1}]},
            ON,
            "cameras[0].lines[0].band",
            "range",
        ),
        (
            {"lines": [{"name": "l", "start": [0, 0], "end": [1, 1], "band": "wide"}]},
            ON,
            "cameras[0].lines[0].band",
            "a number",
        ),
        (
            {"lines": [{"name": "l", "start": [0, 0], "end": [1, 1], "band": math.nan}]},
            ON,
            "cameras[0].lines[0].band",
            "range",
        ),
        (
            {"lines": [{"name": "l", "start": [0, 0], "end": [1, 1], "units": "fraction", "band": 0.5}]},
            ON,
            "cameras[0].lines[0].band",
            "[0, 0.25]",
        ),
        ({"lines": [{"name": "l", "start": [0, 0]}]}, ON, "cameras[0].lines[0].end", "required"),
        ({"lines": [{"name": "l", "start": [-1, 0], "end": [1, 1]}]}, ON, "cameras[0].lines[0].start", ">= 0"),
        ({"lines": [{"name": "l", "start": [0, 0], "end": [True, 1]}]}, ON, "cameras[0].lines[0].end", "[x, y]"),
        ({"zones": {"name": "z"}}, ON, "cameras[0].zones", "expected a list"),
        (None, {"enabled": "yes"}, "events.enabled", "true or false"),
        (None, {"enabled": True, "update_interval_s": -1}, "events.update_interval_s", "range"),
        (None, {"enabled": True, "every": 1}, "events.every", "unknown key"),
    ],
)
def test_bad_zones_lines_and_events_fail_with_their_key(
    tmp_path: Path, camera: dict[str, Any] | None, events: dict[str, Any] | None, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_doc(tmp_path, camera, events), base_dir=tmp_path, env={})
    assert info.value.path == key and reason in info.value.reason, str(info.value)


def test_events_need_tracking(tmp_path: Path) -> None:
    doc = _doc(tmp_path, None, ON)
    doc["tracking"] = {"enabled": False}
    with pytest.raises(ConfigError) as info:
        parse_settings(doc, base_dir=tmp_path, env={})
    assert info.value.path == "events.enabled" and "tracking.enabled" in info.value.reason


@pytest.mark.parametrize(
    ("line", "band"),
    [
        ({"band": 4}, 4.0),
        ({"band": 0}, 0.0),  # no band: the exact rule
        ({"band": None}, None),  # as left out
        ({"band": 0.01, "units": "fraction", "start": [0, 0.5], "end": [1, 0.5]}, 0.01),
    ],
)
def test_a_lines_band_is_read_in_its_units(tmp_path: Path, line: dict[str, Any], band: float | None) -> None:
    camera = {"lines": [{"name": "gate", "start": [0, 300], "end": [640, 300], **line}]}
    s = parse_settings(_doc(tmp_path, camera, ON), base_dir=tmp_path, env={})
    assert s.cameras[0].lines[0].band == band
