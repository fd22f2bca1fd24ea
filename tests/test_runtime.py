"""agent.runtime: the session options (threads, spinning) as ONNX Runtime reads them back, and ``spins``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from agent.config import parse_settings
from agent.model import OnnxModel
from agent.pipeline import load_local_model
from agent.runtime import session_options, spins
from agent.session_pool import SessionPool

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx"
_ALLOW = "session.intra_op.allow_spinning"
_STOP = "session.force_spinning_stop"


def _entry(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return str(options.get_session_config_entry(key))
    except RuntimeError:  # ONNX Runtime's answer for a key never set: its default applies
        return None


@pytest.mark.parametrize(
    ("spin", "sessions", "in_flight", "expected"),
    [
        ("on", 1, 1, True),
        ("on", 2, 4, True),  # on means on, whatever else is configured
        ("off", 1, 1, False),
        ("off", 2, 2, False),
        ("auto", 1, 1, True),  # one frame at a time on one session: today's behaviour
        ("auto", 1, 0, True),  # frames_in_flight 0 = sessions
        ("auto", 1, 2, False),  # a frame's CPU work beside the next one's run
        ("auto", 1, 3, False),
        ("auto", 2, 2, False),  # two sessions' runs beside each other
        ("auto", 4, 1, False),
    ],
)
def test_spins(spin: str, sessions: int, in_flight: int, expected: bool) -> None:
    assert spins(spin, sessions=sessions, frames_in_flight=in_flight) is expected


@pytest.mark.parametrize("spin", ["", "ON", "maybe"])
def test_spins_refuses_other_words(spin: str) -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        spins(spin, sessions=1, frames_in_flight=1)


@pytest.mark.parametrize(
    ("threads", "spin", "allow", "stop", "intra"),
    [
        (2, True, None, "1", 2),  # spinning during runs only (ONNX Runtime's default spin, stopped after a run)
        (2, False, "0", None, 2),
        (1, False, "0", None, 1),
        (0, True, None, "1", 0),  # 0: ONNX Runtime's own thread count
        (0, False, "0", None, 0),
    ],
)
def test_session_options_carry_the_spinning(
    threads: int, spin: bool, allow: str | None, stop: str | None, intra: int
) -> None:
    options = session_options(threads, spin=spin)
    assert _entry(options, _ALLOW) == allow
    assert _entry(options, "session.inter_op.allow_spinning") == allow
    assert _entry(options, _STOP) == stop
    assert options.intra_op_num_threads == intra


def test_session_options_refuse_negative_threads() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        session_options(-1)


def test_an_opened_session_keeps_the_spinning() -> None:
    """What the session was created with, read back from the session itself."""
    for spin, allow in ((False, "0"), (True, None)):
        model = OnnxModel(DEMO_MODEL, threads=2, spin=spin)
        assert _entry(model._session.get_session_options(), _ALLOW) == allow


def _settings(tmp_path: Path, local: dict[str, Any]) -> Any:
    (tmp_path / "clip.avi").write_bytes(b"")
    doc = {
        "device_id": "dev-1",
        "cameras": [{"name": "cam0", "source": "clip.avi", "fps": 5}],
        "inference": {"mode": "local", "local": {"model": str(DEMO_MODEL), "threads": 1, **local}},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "state_dir": "state",
    }
    return parse_settings(doc, base_dir=tmp_path, env={})


@pytest.mark.parametrize(
    ("local", "allow", "pooled", "own_threads"),
    [
        ({}, None, False, False),  # as before: one session, spinning during runs, no pool
        ({"spin": "off"}, "0", False, False),
        ({"frames_in_flight": 3}, "0", True, True),  # auto: off beside the agent's own work; session thread
        ({"frames_in_flight": 3, "spin": "on"}, None, True, True),
        ({"sessions": 2}, "0", True, False),  # frames wait for no session: they run on their own threads
    ],
)
def test_load_local_model_wires_the_spin_and_the_session_threads(
    tmp_path: Path, local: dict[str, Any], allow: str | None, pooled: bool, own_threads: bool
) -> None:
    model = load_local_model(_settings(tmp_path, local))
    try:
        models = model.models if isinstance(model, SessionPool) else [model]
        assert isinstance(model, SessionPool) is pooled
        assert [_entry(m._session.get_session_options(), _ALLOW) for m in models] == [allow] * len(models)
        if isinstance(model, SessionPool):
            assert model.own_threads is own_threads
    finally:
        if isinstance(model, SessionPool):
            model.close()


_SPIN_US = "session.intra_op.spin_duration_us"


@pytest.mark.parametrize(
    ("spin", "spin_us", "expected"),
    [
        (True, 0, None),  # 0: ONNX Runtime's own spin duration, as before
        (True, 50, "50"),
        (True, 1_000_000, "1000000"),
        (False, 50, None),  # nothing spins: no duration to set
    ],
)
def test_session_options_carry_the_spin_duration(spin: bool, spin_us: int, expected: str | None) -> None:
    options = session_options(2, spin=spin, spin_us=spin_us)
    assert _entry(options, _SPIN_US) == expected
    assert _entry(options, _STOP) == ("1" if spin else None)  # still stopped after each run


def test_session_options_refuse_a_negative_spin_duration() -> None:
    with pytest.raises(ValueError, match="spin_us"):
        session_options(2, spin_us=-1)


@pytest.mark.parametrize(("local", "expected"), [({}, None), ({"spin_us": 50}, "50"), ({"spin_us": 0}, None)])
def test_load_local_model_wires_the_spin_duration(tmp_path: Path, local: dict[str, Any], expected: str | None) -> None:
    model = load_local_model(_settings(tmp_path, {"threads": 2, **local}))
    assert isinstance(model, OnnxModel)
    assert _entry(model._session.get_session_options(), _SPIN_US) == expected
