"""systemd/mosquitto.acl, the fleet ACL template, against a real Mosquitto with per-device users.

What is denied can't be waited for, so every check publishes the denied message first and an allowed
marker after it on the same connection: Mosquitto forwards one client's messages in order, so once the
marker has arrived the denied message would have arrived before it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Mosquitto, Subscriber
from tests.onnx_models import build_yolov8_seg
from tests.streams import write_video
from tests.test_daemon import AgentProcess, write_config

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "systemd" / "mosquitto.acl"
USERS = {"dev-a": "pw-a", "dev-b": "pw-b", "seg-consumer": "pw-c", "homeassistant": "pw-h"}

pytestmark = pytest.mark.skipif(MOSQUITTO is None or MOSQUITTO_PASSWD is None, reason="mosquitto is not installed")


class _Client:
    """A publishing client that waits for each QoS 1 PUBACK."""

    def __init__(self, port: int, user: str) -> None:
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{user}", protocol=MQTTProtocolVersion.MQTTv311
        )
        self._c.username_pw_set(user, USERS[user])
        self._c.connect("127.0.0.1", port, keepalive=10)
        self._c.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self._c.publish(topic, payload, qos=1).wait_for_publish(10.0)

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Mosquitto:
    acl = tmp_path / "acl"  # a copy the broker's user can read, as the docs' deployment would have it
    shutil.copy(ACL, acl)
    with Mosquitto(tmp_path / "broker", users=USERS, acl_file=acl) as b:
        yield b


def test_a_device_publishes_only_under_its_own_id(broker: Mosquitto) -> None:
    with Subscriber(broker.port, "#", username="seg-consumer", password=USERS["seg-consumer"]) as consumer:
        dev = _Client(broker.port, "dev-a")
        try:
            for denied in ("seg-agent/dev-b/detections", "seg-agent/dev-b/status", "other/topic", "seg-agent/x"):
                dev.publish(denied, b"forged")
            dev.publish("seg-agent/dev-a/detections", b"mine")
            assert consumer.wait_for_payload("seg-agent/dev-a/detections", b"mine", 10.0)
        finally:
            dev.close()
        assert [m.topic for m in consumer.received()] == ["seg-agent/dev-a/detections"]


def test_a_device_reads_only_its_own_command_topics(broker: Mosquitto) -> None:
    own = ["seg-agent/dev-a/mode/set", "seg-agent/dev-a/cam0/detect/set", "seg-agent/dev-a/cam0/fps/set"]
    with Subscriber(broker.port, "#", username="dev-a", password=USERS["dev-a"]) as device:
        ops = _Client(broker.port, "seg-consumer")
        other = _Client(broker.port, "dev-b")
        try:
            other.publish("seg-agent/dev-b/detections", b"not for dev-a")
            ops.publish("seg-agent/dev-b/mode/set", b"local")
            for topic in own:
                ops.publish(topic, b"cmd")
            assert device.wait_for_count(len(own), timeout=10.0)
        finally:
            ops.close()
            other.close()
        assert sorted(m.topic for m in device.received()) == sorted(own)


def test_a_consumer_reads_every_device_but_cannot_forge_results(broker: Mosquitto) -> None:
    with Subscriber(broker.port, "seg-agent/#", username="seg-consumer", password=USERS["seg-consumer"]) as seen:
        ops = _Client(broker.port, "seg-consumer")
        a, b = _Client(broker.port, "dev-a"), _Client(broker.port, "dev-b")
        try:
            ops.publish("seg-agent/dev-a/detections", b"forged")
            a.publish("seg-agent/dev-a/health", b"a")
            b.publish("seg-agent/dev-b/health", b"b")
            assert seen.wait_for_count(2, timeout=10.0)
        finally:
            for c in (ops, a, b):
                c.close()
        assert sorted(m.payload for m in seen.received()) == [b"a", b"b"]


def test_the_agent_runs_under_the_template(broker: Mosquitto, tmp_path: Path) -> None:
    """Everything a real agent publishes (status and its will, health, detections) is within its rights."""
    model = build_yolov8_seg(tmp_path / "m.onnx", imgsz=(256, 256), class_names=["circle", "square"])
    video = write_video(tmp_path / "v.avi", frames=5, fps=30.0)
    config = write_config(
        tmp_path, model, broker.port, {"source": str(video), "realtime": False, "fps": 0}, device_id="dev-a"
    )
    doc = yaml.safe_load(config.read_text())
    doc["mqtt"].update(username="dev-a", password="${DEV_A_PASSWORD}")
    config.write_text(json.dumps(doc))
    with Subscriber(broker.port, "seg-agent/#", username="seg-consumer", password=USERS["seg-consumer"]) as consumer:
        agent = AgentProcess(config, env={"DEV_A_PASSWORD": USERS["dev-a"]})
        try:
            assert agent.wait(120) == 0, agent.log
        finally:
            agent.close()
        topics = {m.topic for m in consumer.received()}
        detections = consumer.payloads("seg-agent/dev-a/detections")
    assert {"seg-agent/dev-a/status", "seg-agent/dev-a/health", "seg-agent/dev-a/detections"} <= topics
    assert [json.loads(p)["frame_id"] for p in detections] == [1, 2, 3, 4, 5]


def test_home_assistant_discovers_and_commands_an_agent_under_the_template(broker: Mosquitto, tmp_path: Path) -> None:
    """The agent's subscriptions, state echoes and discovery config, and Home Assistant's side, within their rights."""
    model = build_yolov8_seg(tmp_path / "m.onnx", imgsz=(256, 256), class_names=["circle", "square"])
    video = write_video(tmp_path / "v.avi", frames=10, fps=10.0)
    config = write_config(
        tmp_path,
        model,
        broker.port,
        {"source": str(video), "loop": True, "fps": 5},
        device_id="dev-a",
        commands={"enabled": True},
        home_assistant={"discovery": True},
    )
    doc = yaml.safe_load(config.read_text())
    doc["mqtt"].update(username="dev-a", password="${DEV_A_PASSWORD}")
    config.write_text(json.dumps(doc))
    topics = ["homeassistant/device/+/config", "seg-agent/+/+/detect/state"]
    with Subscriber(broker.port, topics, username="homeassistant", password=USERS["homeassistant"]) as ha:
        agent = AgentProcess(config, env={"DEV_A_PASSWORD": USERS["dev-a"]})
        ops = _Client(broker.port, "homeassistant")
        try:
            assert ha.wait_for_count(1, "homeassistant/device/dev-a/config", 60.0), agent.log
            assert ha.wait_for_payload("seg-agent/dev-a/cam0/detect/state", b"ON", 10.0), agent.log
            ops.publish("seg-agent/dev-a/cam0/detect/set", b"OFF")
            assert ha.wait_for_payload("seg-agent/dev-a/cam0/detect/state", b"OFF", 10.0), agent.log
            sent = len(ha.received("homeassistant/device/dev-a/config"))
            ops.publish("homeassistant/status", b"online")
            assert ha.wait_for_count(sent + 1, "homeassistant/device/dev-a/config", 10.0), agent.log
            agent.signal(15)
            assert agent.wait(30) == 0, agent.log
        finally:
            ops.close()
            agent.close()
    cmps = json.loads(ha.received("homeassistant/device/dev-a/config")[0].payload)["cmps"]
    assert {"cam0_count_circle", "cam0_count_square", "cam0_detect", "mode"} <= set(cmps)
