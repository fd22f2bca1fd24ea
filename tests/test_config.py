from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import ConfigError, Secret, load_settings, parse_settings, settings_summary

ROOT = Path(__file__).resolve().parents[1]


def _base(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "model.onnx").write_bytes(b"not really a model, but a readable file")
    (tmp_path / "clip.avi").write_bytes(b"")
    return {
        "device_id": "dev-1",
        "cameras": [{"name": "cam0", "source": "clip.avi", "fps": 5, "loop": True}],
        "inference": {"mode": "local", "local": {"model": "model.onnx"}},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "state_dir": "state",
    }


def _parse(tmp_path: Path, doc: dict[str, Any], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_settings(doc, base_dir=tmp_path, env=env or {})


def test_minimal_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    s = _parse(tmp_path, _base(tmp_path))
    assert s.device_id == "dev-1"
    assert s.cameras[0].source == str(tmp_path / "clip.avi")
    assert s.inference.local.model == tmp_path / "model.onnx"
    assert s.state_dir == tmp_path / "state"
    assert s.inference.confidence == 40 and s.inference.overlap == 30
    assert s.mqtt.qos == 1 and s.mqtt.client_id == "seg-agent-dev-1"
    assert s.topic_base == "seg-agent/dev-1"
    assert s.outbox.drop_policy == "drop_oldest"


def test_the_shipped_config_yaml_is_valid() -> None:
    s = load_settings(ROOT / "config.yaml", env={})
    assert s.inference.mode == "local"
    assert s.inference.local.model is not None and s.inference.local.model.is_file()
    assert Path(str(s.cameras[0].source)).is_file()


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = doc
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("dotted", "value", "path", "reason"),
    [
        ("device_id", _DELETE, "device_id", "required key is missing"),
        ("device_id", "has space", "device_id", "letters, digits"),
        ("cameras", [], "cameras", "at least 1"),
        ("cameras", "cam", "cameras", "expected a list"),
        ("cameras.0.fps", "fast", "cameras[0].fps", "expected a number"),
        ("cameras.0.fps", -1, "cameras[0].fps", "out of range"),
        ("cameras.0.loop", "yes", "cameras[0].loop", "true or false"),
        ("cameras.0.source", "missing.avi", "cameras[0].source", "file not found"),
        ("cameras.0.source", "ftp://x/y", "cameras[0].source", "URL scheme"),
        ("cameras.0.source", -3, "cameras[0].source", ">= 0"),
        ("cameras.0.colour", "red", "cameras[0].colour", "unknown key"),
        ("inference.mode", "cloud", "inference.mode", "not one of"),
        ("inference.confidence", 140, "inference.confidence", "out of range"),
        ("inference.local.model", "nope.onnx", "inference.local.model", "not found"),
        ("inference.local.providers", ["gpu9000"], "inference.local.providers[0]", "unknown provider"),
        ("inference.local.sessions", 0, "inference.local.sessions", "out of range"),
        ("inference.local.sessions", 17, "inference.local.sessions", "out of range"),
        ("inference.local.sessions", "two", "inference.local.sessions", "expected auto or an integer"),
        ("inference.local.sessions", "Auto", "inference.local.sessions", "expected auto or an integer"),
        ("inference.local.sessions", 1.5, "inference.local.sessions", "expected an integer"),
        ("inference.serverless.model_id", "no-version", "inference.serverless.model_id", "project/version"),
        ("mqtt.port", 70000, "mqtt.port", "out of range"),
        ("mqtt.port", "eighty", "mqtt.port", "expected an integer"),
        ("mqtt.qos", 3, "mqtt.qos", "out of range"),
        ("mqtt.topic_prefix", "a/#", "mqtt.topic_prefix", "'#'"),
        ("mqtt.tls", {"ca_certs": "nope.pem"}, "mqtt.tls.ca_certs", "not found"),
        ("mqtt", "localhost", "mqtt", "expected a mapping"),
        ("outbox.drop_policy", "drop_random", "outbox.drop_policy", "not one of"),
        ("state_dir", _DELETE, "state_dir", "required key is missing"),
        ("extra_top", 1, "extra_top", "unknown key"),
    ],
)
def test_bad_values_name_the_key_and_the_reason(
    tmp_path: Path, dotted: str, value: Any, path: str, reason: str
) -> None:
    doc = _base(tmp_path)
    _set(doc, dotted, value)
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, doc)
    assert info.value.path == path
    assert reason in info.value.reason


def test_duplicate_camera_names(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    doc["cameras"].append(dict(doc["cameras"][0]))
    with pytest.raises(ConfigError, match=r"cameras\[1\]\.name: duplicate"):
        _parse(tmp_path, doc)


def test_env_substitution_and_secret_masking(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    doc["inference"]["mode"] = "auto"
    doc["inference"]["serverless"] = {"model_id": "proj/3", "api_key": "${RF_KEY}"}
    doc["mqtt"]["password"] = "${MQTT_PW}"
    doc["mqtt"]["host"] = "${BROKER:-broker.local}"
    s = _parse(tmp_path, doc, env={"RF_KEY": "sekret-key-123", "MQTT_PW": "pw-456"})
    assert s.inference.serverless.api_key.reveal() == "sekret-key-123"
    assert s.mqtt.host == "broker.local"
    shown = json.dumps(settings_summary(s)) + repr(s) + str(s)
    assert "sekret-key-123" not in shown and "pw-456" not in shown
    assert settings_summary(s)["inference"]["serverless"]["api_key"] == "***"


def test_auto_mode_without_key_names_the_variable(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    doc["inference"]["mode"] = "auto"
    doc["inference"]["serverless"] = {"model_id": "proj/3", "api_key": "${ROBOFLOW_API_KEY}"}
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, doc)
    assert info.value.path == "inference.serverless.api_key"
    assert "ROBOFLOW_API_KEY is not set" in info.value.reason


def test_local_mode_requires_a_model(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    del doc["inference"]["local"]
    with pytest.raises(ConfigError, match=r"inference\.local\.model: required"):
        _parse(tmp_path, doc)


def test_secret_never_prints() -> None:
    s = Secret("abc")
    assert "abc" not in repr(s) + str(s) + f"{s}" + repr([s])
    assert s.reveal() == "abc" and bool(s) and not Secret("")


def test_load_settings_reports_yaml_errors_with_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: x\ncameras: [\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "where", "lines"),
    [
        ("device_id: a\ndevice_id: b\n", "device_id", "lines 1 and 2"),
        ("mqtt:\n  host: a\n  port: 1\n  host: b\n", "mqtt.host", "lines 2 and 4"),
        ("cameras:\n  - name: c\n    fps: 1\n    fps: 2\n", "cameras[0].fps", "lines 3 and 4"),
    ],
)
def test_duplicate_yaml_keys_are_rejected_with_their_path(tmp_path: Path, text: str, where: str, lines: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.path == where and lines in str(info.value)


def test_the_same_key_in_two_mappings_is_no_duplicate(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    doc["cameras"].append({**doc["cameras"][0], "name": "cam1"})  # name, source, fps twice, in two mappings
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert [c.name for c in load_settings(path).cameras] == ["cam0", "cam1"]


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = _parse(tmp_path, _base(tmp_path))
    with pytest.raises(AttributeError):
        s.device_id = "other"  # type: ignore[misc]


def test_yaml_round_trip_of_the_summary_is_loadable(tmp_path: Path) -> None:
    """check-config prints what a user could paste back (minus the masked secrets)."""
    s = _parse(tmp_path, _base(tmp_path))
    text = yaml.safe_dump(settings_summary(s))
    assert "device_id: dev-1" in text


def test_local_sessions_default_to_auto_and_parse(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    local = _parse(tmp_path, doc).inference.local
    assert local.sessions == "auto" and local.local_runs == 1  # auto counts as 1 until the pipeline resolves it
    for value, expected in ((2, 2), ("3", 3), ("auto", "auto"), (" auto ", "auto")):
        doc["inference"]["local"]["sessions"] = value
        assert _parse(tmp_path, doc).inference.local.sessions == expected


@pytest.mark.parametrize(
    ("given", "percent"),
    [(40, 40.0), (0.4, 40.0), (0.05, 5.0), (1, 1.0), (0, 0.0), (100, 100.0), (0.999, 99.9)],
)
def test_thresholds_below_one_are_fractions_as_on_roboflows_server(
    tmp_path: Path, given: float, percent: float
) -> None:
    doc = _base(tmp_path)
    _set(doc, "inference.confidence", given)
    _set(doc, "inference.overlap", given)
    s = _parse(tmp_path, doc)
    assert s.inference.confidence == pytest.approx(percent) and s.inference.overlap == pytest.approx(percent)


def test_local_results_name_the_local_model(tmp_path: Path) -> None:
    doc = _base(tmp_path)
    s = _parse(tmp_path, doc)
    assert s.local_model_id == Path(doc["inference"]["local"]["model"]).stem
    _set(doc, "inference.local.model_id", "shapes-v2")
    assert _parse(tmp_path, doc).local_model_id == "shapes-v2"


@pytest.mark.parametrize(
    ("section", "value", "path", "reason"),
    [
        ("home_assistant", {"discovery": "yes"}, "home_assistant.discovery", "true or false"),
        ("home_assistant", {"prefix": "ha/#"}, "home_assistant.prefix", "an MQTT topic"),
        ("home_assistant", {"prefix": ""}, "home_assistant.prefix", "an MQTT topic"),
        ("home_assistant", {"classes": ["person", "a/b"]}, "home_assistant.classes[1]", "without '/'"),
        ("home_assistant", {"clases": []}, "home_assistant.clases", "unknown key"),
        ("commands", {"enabled": 1}, "commands.enabled", "true or false"),
        ("commands", {"enable": True}, "commands.enable", "unknown key"),
    ],
)
def test_home_assistant_and_commands_sections(tmp_path: Path, section: str, value: Any, path: str, reason: str) -> None:
    doc = _base(tmp_path)
    assert _parse(tmp_path, doc).home_assistant.discovery is False  # off by default
    assert _parse(tmp_path, doc).commands.enabled is False
    doc[section] = value
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, doc)
    assert info.value.path == path
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("polygons", "expected", "error"),
    [
        (None, (False, 0.0), None),  # left out: points only, exact contours, as before
        ({}, (False, 0.0), None),
        ({"rings": True}, (True, 0.0), None),
        ({"tolerance_px": 1.5}, (False, 1.5), None),
        ({"rings": True, "tolerance_px": 0}, (True, 0.0), None),
        ({"rings": "yes"}, None, ("inference.local.polygons.rings", "true or false")),
        ({"tolerance_px": -1}, None, ("inference.local.polygons.tolerance_px", "out of range")),
        ({"tolerance_px": "fine"}, None, ("inference.local.polygons.tolerance_px", "expected a number")),
        ({"holes": True}, None, ("inference.local.polygons.holes", "unknown key")),
        ("all", None, ("inference.local.polygons", "expected a mapping")),
    ],
)
def test_local_polygons_section(
    tmp_path: Path, polygons: Any, expected: tuple[bool, float] | None, error: tuple[str, str] | None
) -> None:
    doc = _base(tmp_path)
    if polygons is not None:
        doc["inference"]["local"]["polygons"] = polygons
    if error is not None:
        with pytest.raises(ConfigError) as info:
            _parse(tmp_path, doc)
        assert info.value.path == error[0] and error[1] in info.value.reason
        return
    local = _parse(tmp_path, doc).inference.local
    assert (local.polygons.rings, local.polygons.tolerance_px) == expected


@pytest.mark.parametrize(
    ("local", "runs"),
    [
        ({}, 1),  # as before: one frame at a time per session
        ({"sessions": 2}, 2),
        ({"frames_in_flight": 3}, 3),  # an accelerator: frames' CPU work beside the session's run
        ({"sessions": 3, "frames_in_flight": 2}, 3),  # never fewer than the sessions
        ({"frames_in_flight": 0, "sessions": 2}, 2),
    ],
)
def test_local_frames_in_flight(tmp_path: Path, local: dict[str, Any], runs: int) -> None:
    doc = _base(tmp_path)
    doc["inference"]["local"].update(local)
    assert _parse(tmp_path, doc).inference.local.local_runs == runs


@pytest.mark.parametrize(("value", "reason"), [(-1, "out of range"), (65, "out of range"), ("many", "an integer")])
def test_local_frames_in_flight_bad_values(tmp_path: Path, value: object, reason: str) -> None:
    doc = _base(tmp_path)
    doc["inference"]["local"]["frames_in_flight"] = value
    with pytest.raises(ConfigError) as info:
        _parse(tmp_path, doc)
    assert info.value.path == "inference.local.frames_in_flight" and reason in info.value.reason


def _check_local_key(tmp_path: Path, key: str, value: object, expected: object, reason: str | None) -> None:
    """``inference.local.{key}`` set to ``value`` (left out for ``_DELETE``): parsed as ``expected``, or, with a
    ``reason``, refused at that key with that reason."""
    doc = _base(tmp_path)
    if value is not _DELETE:
        doc["inference"]["local"][key] = value
    if reason is not None:
        with pytest.raises(ConfigError) as info:
            _parse(tmp_path, doc)
        assert info.value.path == f"inference.local.{key}" and reason in info.value.reason
        return
    assert getattr(_parse(tmp_path, doc).inference.local, key) == expected


@pytest.mark.parametrize(
    ("value", "expected", "error"),
    [
        (_DELETE, "auto", None),  # left out: auto (agent.runtime.spins decides)
        (None, "auto", None),  # `spin:` with nothing after it
        ("auto", "auto", None),
        ("on", "on", None),
        ("off", "off", None),
        (True, "on", None),  # YAML 1.1 reads a bare `spin: on` as true
        (False, "off", None),  # ... and `spin: off` as false
        ("OFF", None, "is not one of"),
        ("sometimes", None, "is not one of"),
        ("", None, "is not one of"),
        (1, None, "is not one of"),  # an integer is read as its text "1"
        ([True], None, "expected a string"),
    ],
)
def test_local_spin(tmp_path: Path, value: object, expected: str | None, error: str | None) -> None:
    _check_local_key(tmp_path, "spin", value, expected, error)


@pytest.mark.parametrize(
    ("value", "expected", "reason"),
    [
        (_DELETE, 0, None),  # left out: ONNX Runtime's default duration
        (0, 0, None),
        (50, 50, None),
        (1_000_000, 1_000_000, None),
        (-1, None, "out of range"),
        (1_000_001, None, "out of range"),
        ("short", None, "an integer"),
    ],
)
def test_local_spin_us(tmp_path: Path, value: object, expected: int | None, reason: str | None) -> None:
    _check_local_key(tmp_path, "spin_us", value, expected, reason)


def test_local_spin_bare_yaml_words(tmp_path: Path) -> None:
    """The file as a user writes it: unquoted on/off reach the parser as booleans and still mean on/off."""
    for word, expected in (("on", "on"), ("off", "off"), ("'off'", "off"), ("auto", "auto")):
        doc = _base(tmp_path)
        doc["inference"]["local"].update(yaml.safe_load(f"spin: {word}"))
        assert _parse(tmp_path, doc).inference.local.spin == expected


@pytest.mark.parametrize(("written", "read"), [("off", "off"), ("normal", "normal"), ("full", "full")])
def test_a_bare_yaml_off_is_the_word_off(tmp_path: Path, written: str, read: str) -> None:
    """YAML 1.1 reads an unquoted ``off`` as false; where "off" is one of the choices, it means that."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base(tmp_path)) + f"outbox:\n  synchronous: {written}\n")
    assert load_settings(path).outbox.synchronous == read
