"""Commands: the pure validation as a table; then the agent as a real process against a real Mosquitto, a
stale retained OFF on the broker, OFF/ON with the results watched, bad payloads, and a restart that keeps
the runtime changes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.commands import Command, Rejected, load_json, parse_command, save_json_atomic
from agent.config import CameraSettings, InferenceSettings, MqttSettings, Settings
from agent.pipeline import frames_under_way
from tests.fake_roboflow import FakeRoboflow
from tests.mosquitto import MOSQUITTO, Mosquitto, Subscriber
from tests.streams import write_video
from tests.test_daemon import BASE, AgentProcess, NotifySocket, write_config
from tests.test_online_offline import KEY, MODEL_ID, online_config, write_scene_video

CAMS = ["cam0", "yard.1"]
MODES = ["local"]

VALID = [
    ("cam0/detect/set", b"ON", Command("detect", "cam0", True)),
    ("cam0/detect/set", b"off", Command("detect", "cam0", False)),
    ("yard.1/detect/set", b" OFF\n", Command("detect", "yard.1", False)),
    ("cam0/fps/set", b"2.5", Command("fps", "cam0", 2.5)),
    ("cam0/fps/set", b"0", Command("fps", "cam0", 0.0)),
    ("cam0/fps/set", b"240", Command("fps", "cam0", 240.0)),
    ("mode/set", b"LOCAL", Command("mode", None, "local")),
]
INVALID = [
    ("cam0/detect/set", b"", "expected ON or OFF"),
    ("cam0/detect/set", b"1", "expected ON or OFF"),
    ("cam0/detect/set", b"ON" * 40, "bytes"),
    ("cam0/detect/set", b"\xff\xfe", "UTF-8"),
    ("cam9/detect/set", b"ON", "no camera named 'cam9'"),
    ("cam0/fps/set", b"fast", "expected a number"),
    ("cam0/fps/set", b"-1", "expected 0 to 240"),
    ("cam0/fps/set", b"240.5", "expected 0 to 240"),
    ("cam0/fps/set", b"nan", "expected 0 to 240"),
    ("cam0/fps/set", b"inf", "expected 0 to 240"),
    ("mode/set", b"turbo", "expected auto, serverless or local"),
    ("mode/set", b"serverless", "needs parts this agent did not load"),
    ("cam0/mode/set", b"local", "not a command topic"),
    ("cam0/detect/state", b"ON", "not a command topic"),
    ("cam0/detect/set/x", b"ON", "not a command topic"),
]


@pytest.mark.parametrize(("sub", "payload", "expected"), VALID)
def test_valid_commands_parse(sub: str, payload: bytes, expected: Command) -> None:
    assert parse_command(BASE, f"{BASE}/{sub}", payload, cameras=CAMS, modes=MODES) == expected


@pytest.mark.parametrize(("sub", "payload", "reason"), INVALID)
def test_invalid_commands_are_rejected_with_the_reason(sub: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected, match=reason.replace(".", r"\.").replace("(", r"\(")):
        parse_command(BASE, f"{BASE}/{sub}", payload, cameras=CAMS, modes=MODES)


def test_another_devices_topic_is_rejected() -> None:
    with pytest.raises(Rejected):
        parse_command(BASE, "seg-agent/dev2/cam0/detect/set", b"ON", cameras=CAMS, modes=MODES)


@pytest.mark.parametrize(
    ("mode", "batch", "expected"),
    [("auto", False, 2 + 1), ("auto", True, 2), ("serverless", False, 2), ("local", False, 1), ("local", True, 1)],
)
def test_frames_under_way_per_mode(tmp_path: Path, mode: str, batch: bool, expected: int) -> None:
    """What a mode command sets each worker's bound to: a local run never waits behind a hosted-sized one."""
    video = write_video(tmp_path / "v.avi", frames=2)
    cam = CameraSettings("cam0", str(video), realtime=not batch)
    s = Settings("d", (cam,), InferenceSettings(), MqttSettings(), tmp_path)
    assert frames_under_way(s, cam, mode) == expected
    if mode == "auto" and not batch:
        assert frames_under_way(s, CameraSettings("usb", 0), mode) == expected  # a live source alike


def test_runtime_file_is_written_whole_and_a_broken_one_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    assert load_json(path) == {}
    save_json_atomic(path, {"cameras": {"cam0": {"detect": False}}})
    assert load_json(path) == {"cameras": {"cam0": {"detect": False}}}
    assert not path.with_name("runtime.json.tmp").exists()
    path.write_text('{"cameras": ')  # a torn write from something else
    assert load_json(path) == {}
    path.write_text("[1, 2]")
    assert load_json(path) == {}


# ---------------------------------------------------------------------------- with a real broker and agent

pytestmark_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def _send(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10.0)
    finally:
        c.disconnect()
        c.loop_stop()


def _health(sub: Subscriber) -> list[dict[str, Any]]:
    """Health messages of the running agent (a retained one from an earlier run left out)."""
    return [json.loads(m.payload) for m in sub.received(f"{BASE}/health") if not m.retain]


def _latest_health(sub: Subscriber, check: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """The first health message (from now on or already received) that passes ``check``."""
    found: list[dict[str, Any]] = []

    def ok() -> bool:
        found[:] = [h for h in _health(sub) if check(h)]
        return bool(found)

    assert sub.wait_until(ok, timeout), f"no health message passed the check; last: {(_health(sub) or [None])[-1]}"
    return found[0]


def _results(sub: Subscriber) -> list[int]:
    return [json.loads(p)["frame_id"] for p in sub.payloads(f"{BASE}/detections")]


@pytestmark_broker
def test_detect_off_and_on_bad_payloads_and_a_stale_retained_off(
    tmp_path: Path, model_path: Path, run_agent: Callable[..., AgentProcess]
) -> None:
    video = write_video(tmp_path / "v.avi", frames=30, fps=10.0)
    with Mosquitto(tmp_path / "broker") as broker:
        _send(broker.port, f"{BASE}/cam0/detect/set", b"OFF", retain=True)  # left by someone, long ago
        config = write_config(
            tmp_path,
            model_path,
            broker.port,
            {"source": str(video), "fps": 5, "loop": True},
            commands={"enabled": True},
        )
        topics = [f"{BASE}/detections", f"{BASE}/health", f"{BASE}/+/detect/state", f"{BASE}/+/fps/state"]
        with Subscriber(broker.port, topics) as sub:
            agent = run_agent(config)
            # the stale retained OFF is ignored: results flow, the echo says ON, health counts it
            assert sub.wait_for_count(3, f"{BASE}/detections", 60.0), agent.log
            assert sub.wait_for_payload(f"{BASE}/cam0/detect/state", b"ON", 10.0), agent.log
            _latest_health(sub, lambda h: h.get("commands", {}).get("ignored_retained") == 1, 10.0)
            _send(broker.port, f"{BASE}/cam0/detect/set", b"", retain=True)  # clear the stale one

            # OFF: once echoed, at most the frame under way still gets a result; frames keep being read
            _send(broker.port, f"{BASE}/cam0/detect/set", b"OFF")
            assert sub.wait_for_payload(f"{BASE}/cam0/detect/state", b"OFF", 10.0), agent.log
            at_echo = len(_results(sub))
            first = _latest_health(sub, lambda h: not h["cameras"]["cam0"]["detect"], 10.0)
            cam = first["cameras"]["cam0"]
            later = _latest_health(
                sub, lambda h: h["cameras"]["cam0"]["frames_paused"] >= cam["frames_paused"] + 3, 20.0
            )
            assert later["cameras"]["cam0"]["frames_processed"] == cam["frames_processed"]
            assert len(_results(sub)) <= at_echo + 1

            # ON: results resume
            stopped_at = len(_results(sub))
            _send(broker.port, f"{BASE}/cam0/detect/set", b"ON")
            assert sub.wait_for_count(stopped_at + 2, f"{BASE}/detections", 30.0), agent.log

            # bad payloads: rejected, counted, nothing changes
            for topic, payload in [
                ("cam0/detect/set", b"MAYBE"),
                ("cam0/fps/set", b"9000"),
                ("mode/set", b"serverless"),  # no hosted client in this config
                ("cam7/detect/set", b"OFF"),
            ]:
                _send(broker.port, f"{BASE}/{topic}", payload)
            h = _latest_health(sub, lambda h: h.get("commands", {}).get("rejected") == 4, 10.0)
            assert h["commands"]["last_rejected"]["topic"] == f"{BASE}/cam7/detect/set"
            assert h["cameras"]["cam0"]["detect"] is True

            # a change that survives a restart
            _send(broker.port, f"{BASE}/cam0/fps/set", b"2")
            assert sub.wait_for_payload(f"{BASE}/cam0/fps/state", b"2", 10.0), agent.log
            _send(broker.port, f"{BASE}/cam0/detect/set", b"OFF")
            state = f"{BASE}/cam0/detect/state"
            assert sub.wait_until(lambda: sub.payloads(state).count(b"OFF") == 2, 10.0), agent.log
            agent.signal(15)
            assert agent.wait(30) == 0, agent.log
        assert load_json(tmp_path / "state" / "runtime.json") == {"cameras": {"cam0": {"detect": False, "fps": 2.0}}}

        with Subscriber(broker.port, [f"{BASE}/health"]) as sub:
            again = run_agent(config)
            h = _latest_health(sub, lambda h: h["state"] != "starting", 60.0)
            assert h["commands"]["runtime"] == {"cameras": {"cam0": {"detect": False, "fps": 2.0}}}
            assert h["cameras"]["cam0"]["detect"] is False
            assert "applied again: camera cam0 detection off, camera cam0 at 2 fps" in again.log


@pytestmark_broker
def test_the_watchdog_stays_fed_while_detection_is_off(
    tmp_path: Path, model_path: Path, run_agent: Callable[..., AgentProcess]
) -> None:
    """Off is a choice, not a wedge: frames are still read, so systemd must not restart the agent."""
    video = write_video(tmp_path / "v.avi", frames=30, fps=10.0)
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        with Mosquitto(tmp_path / "broker") as broker:
            config = write_config(
                tmp_path,
                model_path,
                broker.port,
                {"source": str(video), "fps": 5, "loop": True},
                commands={"enabled": True},
            )
            with Subscriber(broker.port, [f"{BASE}/+/detect/state"]) as sub:
                agent = run_agent(config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
                notify.collect(60.0, until=lambda: bool(notify.times("READY=1")))
                assert sub.wait_for_payload(f"{BASE}/cam0/detect/state", b"ON", 30.0), agent.log
                _send(broker.port, f"{BASE}/cam0/detect/set", b"OFF")
                assert sub.wait_for_payload(f"{BASE}/cam0/detect/state", b"OFF", 10.0), agent.log
                off_at = time.monotonic()
                notify.collect(5.0)
                # a ping every 0.5 s; without results the window (1 s) would have stopped them after 1 s
                late = [t for t in notify.times("WATCHDOG=1") if t > off_at + 2.0]
                assert len(late) >= 2, notify.messages
                agent.signal(15)
                assert agent.wait(30) == 0, agent.log
    finally:
        notify.close()


@pytestmark_broker
def test_mode_commands_switch_between_the_hosted_api_and_the_local_model(
    tmp_path: Path, model_path: Path, run_agent: Callable[..., AgentProcess]
) -> None:
    video = write_scene_video(tmp_path / "scene.avi", frames=30, fps=10.0)
    fake = FakeRoboflow(api_key=KEY, model_id=MODEL_ID)
    try:
        with Mosquitto(tmp_path / "broker") as broker:
            config = online_config(
                tmp_path, model_path, broker.port, fake.url, {"source": str(video), "fps": 5, "loop": True}
            )
            doc = yaml.safe_load(config.read_text())
            config.write_text(yaml.safe_dump({**doc, "commands": {"enabled": True}}))
            with Subscriber(broker.port, [f"{BASE}/detections", f"{BASE}/mode/state"]) as sub:
                agent = run_agent(config, env={"ROBOFLOW_API_KEY": KEY})

                def sources() -> list[str]:
                    return [json.loads(p)["source"] for p in sub.payloads(f"{BASE}/detections")]

                def settled_on(source: str, since: int) -> bool:  # 3 in a row, past what was under way
                    tail = sources()[since + 3 :]
                    return len(tail) >= 3 and tail[-3:] == [source] * 3

                assert sub.wait_until(lambda: sources()[-2:] == ["serverless"] * 2, 60.0), agent.log
                assert sub.wait_for_payload(f"{BASE}/mode/state", b"auto", 10.0), agent.log
                for mode, source in (("local", "local"), ("serverless", "serverless"), ("auto", "serverless")):
                    word = mode.encode()
                    echoed = sub.payloads(f"{BASE}/mode/state").count(word)
                    _send(broker.port, f"{BASE}/mode/set", word)
                    assert sub.wait_until(
                        lambda m=word, n=echoed: sub.payloads(f"{BASE}/mode/state").count(m) > n, 10.0
                    ), agent.log
                    at = len(sources())
                    assert sub.wait_until(lambda s=source, a=at: settled_on(s, a), 30.0), (mode, sources(), agent.log)
                    if mode == "local":
                        calls = fake.calls()
                        assert sub.wait_until(lambda a=at: len(sources()) >= a + 8, 30.0)
                        assert fake.calls() == calls  # no hosted call while local
                agent.signal(15)
                assert agent.wait(30) == 0, agent.log
    finally:
        fake.close()
