"""The ``tracking:`` and ``events:`` sections and each camera's ``zones:`` and ``lines:``, for :mod:`agent.config`.

Kept apart from :mod:`agent.config` so that its size stays in bounds; the same :class:`Reader` rules apply
(every error names the key path, a key left out takes the dataclass field's default). A polygon that can't
be a zone (:func:`agent.zones.polygon_problem`) fails at start.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from agent.config_reader import ConfigError, Reader
from agent.tracking import TrackingSettings
from agent.zones import LineDef, Units, ZoneDef, polygon_problem

__all__ = ["EventSettings", "read_areas", "read_events", "read_tracking"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_UNITS: tuple[Units, ...] = ("pixels", "fraction")
# "all": the count topics' "every zone" level; the others are the camera's own topics (commands.py's
# {camera}/detect/set and fps/set, snapshots.py's {camera}/snapshot), which a count topic must never be
_RESERVED = ("all", "detect", "fps", "snapshot")


@dataclass(frozen=True, slots=True)
class EventSettings:
    enabled: bool = False  # new/update/end events on {base}/events and the count topics
    update_interval_s: float = 5.0  # at most one update event per track this often
    counts: bool = True  # the retained count topics {base}/{camera}/{zone|line|all}/...


def read_events(r: Reader) -> EventSettings:
    settings = EventSettings(
        enabled=r.flag("enabled"),
        update_interval_s=r.number_in("update_interval_s", 0.0, 86400.0),
        counts=r.flag("counts"),
    )
    r.finish()
    return settings


def _pair(value: Any, path: str) -> tuple[float, float]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(path, f"expected [x, y], got {value!r}")
    x, y = float(value[0]), float(value[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ConfigError(path, "coordinates must be finite numbers")
    return x, y


def _check_point(point: tuple[float, float], units: Units, path: str) -> None:
    x, y = point
    if units == "fraction" and not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ConfigError(path, f"fractions of the frame go from 0 to 1, got [{x:g}, {y:g}]")
    if units == "pixels" and (x < 0 or y < 0):
        raise ConfigError(path, f"pixel coordinates are >= 0, got [{x:g}, {y:g}]")


def _name(r: Reader, taken: set[str]) -> str:
    name = r.text("name", required=True)
    if not _NAME_RE.match(name):
        raise ConfigError(r.key("name"), "use letters, digits, '.', '_' or '-' only (it is part of MQTT topics)")
    if name in _RESERVED:
        raise ConfigError(r.key("name"), f"{name!r} is reserved (a topic of the camera's: {', '.join(_RESERVED)})")
    if name in taken:
        raise ConfigError(r.key("name"), f"duplicate name {name!r} (zones and lines of a camera share the names)")
    taken.add(name)
    return name


def _zones(camera: Reader, taken: set[str]) -> tuple[ZoneDef, ...]:
    """``cameras[i].zones``: each ``name``, ``points`` (a polygon), ``units``, ``inertia``."""
    zones = []
    for z in camera.list_of_mappings("zones", ZoneDef):
        name = _name(z, taken)
        raw = z.value("points", required=True)
        if not isinstance(raw, list):
            raise ConfigError(z.key("points"), "expected a list of [x, y] points")
        points = [_pair(p, f"{z.key('points')}[{i}]") for i, p in enumerate(raw)]
        problem = polygon_problem(points)
        if problem is not None:
            raise ConfigError(z.key("points"), problem)
        units: Units = z.choice("units", _UNITS)  # type: ignore[assignment]
        for i, point in enumerate(points):
            _check_point(point, units, f"{z.key('points')}[{i}]")
        zones.append(ZoneDef(name, tuple(points), units, z.int_in("inertia", 1, 1000)))
        z.finish()
    return tuple(zones)


def _lines(camera: Reader, taken: set[str]) -> tuple[LineDef, ...]:
    """``cameras[i].lines``: each ``name``, ``start``, ``end``, ``units``, ``inertia``, ``band``."""
    lines = []
    for ln in camera.list_of_mappings("lines", LineDef):
        name = _name(ln, taken)
        start = _pair(ln.value("start", required=True), ln.key("start"))
        end = _pair(ln.value("end", required=True), ln.key("end"))
        if start == end:
            raise ConfigError(ln.key("end"), "a line needs two different points")
        units: Units = ln.choice("units", _UNITS)  # type: ignore[assignment]
        _check_point(start, units, ln.key("start"))
        _check_point(end, units, ln.key("end"))
        lines.append(LineDef(name, start, end, units, ln.int_in("inertia", 1, 1000), _band(ln, units)))
        ln.finish()
    return tuple(lines)


def _band(ln: Reader, units: Units) -> float | None:
    """A line's ``band`` (:mod:`agent.line_band`) in its units; None (left out): the default."""
    band = ln.number_in("band", 0.0, 0.25 if units == "fraction" else 10000.0, default=math.nan)
    return None if math.isnan(band) else band  # NaN only as the default: a given one is out of range


def read_areas(camera: Reader) -> tuple[tuple[ZoneDef, ...], tuple[LineDef, ...]]:
    """A camera's ``zones`` and ``lines`` (their names are unique within the camera)."""
    taken: set[str] = set()
    return _zones(camera, taken), _lines(camera, taken)


def read_tracking(t: Reader) -> TrackingSettings:
    high = t.number_in("high_score", 0.0, 1.0)
    low = t.number_in("low_score", 0.0, 1.0)
    if low > high:
        raise ConfigError(t.key("low_score"), f"{low:g} is above high_score ({high:g})")
    settings = TrackingSettings(
        enabled=t.flag("enabled"),
        min_frames=t.int_in("min_frames", 1, 1000),
        lost_s=t.number_in("lost_s", 0.001, 86400.0),
        max_missed=t.int_in("max_missed", 1, 10**6),
        high_score=high,
        low_score=low,
        match_iou=t.number_in("match_iou", 0.001, 1.0),
        low_match_iou=t.number_in("low_match_iou", 0.001, 1.0),
        class_cost=t.number_in("class_cost", 0.0, 10.0),
        appearance_gate=t.number_in("appearance_gate", 0.0, 442.0),
    )
    t.finish()
    return settings
