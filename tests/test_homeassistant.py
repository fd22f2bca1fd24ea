"""Home Assistant discovery: the payload checked against the documented device-discovery schema (required
keys, platforms, unique ids), then published through the real publisher to a real Mosquitto: retained,
sent again on Home Assistant's birth message, and a camera taken out of the config deleted."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import CameraSettings, HomeAssistantSettings, InferenceSettings, MqttSettings, Settings
from agent.homeassistant import Discovery, device_config, discovery_topic, node_id, withdraw_when_connected
from agent.inbox import Inbox
from agent.outbox import Outbox, OutboxSettings
from agent.publisher import Publisher
from tests.mosquitto import MOSQUITTO, Mosquitto, Subscriber

ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
PLATFORMS = {"binary_sensor", "sensor", "image", "switch", "number", "select"}
COMMANDED = {"switch", "number", "select"}


def _settings(
    state_dir: Path, cameras: tuple[str, ...] = ("cam0", "yard.1"), port: int = 1883, device_id: str = "dev.1"
) -> Settings:
    return Settings(
        device_id=device_id,
        cameras=tuple(CameraSettings(name, i) for i, name in enumerate(cameras)),
        inference=InferenceSettings(mode="local"),
        mqtt=MqttSettings(port=port, reconnect_min_s=0.1, reconnect_max_s=0.5),
        state_dir=state_dir,
        home_assistant=HomeAssistantSettings(discovery=True),
    )


def _check_schema(doc: dict[str, Any], settings: Settings) -> None:
    """What Home Assistant's device discovery requires: ``dev`` with identifiers, ``o`` with a name, ``cmps``
    a mapping whose entries name their platform ``p`` and, for entities, a ``unique_id`` of [a-zA-Z0-9_-]."""
    assert doc["dev"]["ids"] and all(ID_RE.match(i) for i in doc["dev"]["ids"])
    assert doc["o"]["name"] == "seg-agent"
    assert doc["avty_t"] == f"{settings.topic_base}/status"
    assert (doc["pl_avail"], doc["pl_not_avail"]) == ("online", "offline")
    uids = []
    for cid, comp in doc["cmps"].items():
        assert ID_RE.match(cid), cid
        assert comp["p"] in PLATFORMS, comp
        if len(comp) == 1:  # a deletion
            continue
        assert ID_RE.match(comp["unique_id"]), comp
        uids.append(comp["unique_id"])
        for key, topic in comp.items():
            if key.endswith("_t") or key.endswith("_topic"):
                assert topic.startswith(settings.topic_base + "/"), (key, topic)
                assert not set(topic) & set("+#"), topic
    assert len(uids) == len(set(uids)), "unique ids repeat"


CASES = [
    # classes, commands, snapshots, expected platforms per camera
    ([], False, False, {"binary_sensor": 1, "sensor": 1}),
    (["person", "car"], False, False, {"binary_sensor": 1, "sensor": 3}),
    (["person"], True, False, {"binary_sensor": 1, "sensor": 2, "switch": 1, "number": 1}),
    (["person"], True, True, {"binary_sensor": 1, "sensor": 2, "switch": 1, "number": 1, "image": 1}),
    (["a b", "a_b", "a/b", "#", ""], False, False, {"binary_sensor": 1, "sensor": 3}),  # 2 unsafe, 1 empty
]


@pytest.mark.parametrize(("classes", "commands", "snapshots", "per_camera"), CASES)
def test_device_config_follows_the_schema(
    tmp_path: Path, classes: list[str], commands: bool, snapshots: bool, per_camera: dict[str, int]
) -> None:
    s = _settings(tmp_path)
    doc = device_config(s, classes=classes, modes=["auto", "local"], commands=commands, snapshots=snapshots)
    _check_schema(doc, s)
    for cam, cid in (("cam0", "cam0"), ("yard.1", "yard_1")):
        mine = [c for k, c in doc["cmps"].items() if k.startswith(cid + "_")]
        counted: dict[str, int] = {}
        for c in mine:
            counted[c["p"]] = counted.get(c["p"], 0) + 1
        assert counted == per_camera, cam
        occupancy = doc["cmps"][f"{cid}_occupancy"]
        assert occupancy["stat_t"] == f"seg-agent/dev.1/{cam}/all/all"
        assert f"value_json.cameras['{cam}']" in doc["cmps"][f"{cid}_fps"]["val_tpl"]
    agent_wide = {k: c["p"] for k, c in doc["cmps"].items() if not k.startswith(("cam0_", "yard_1_"))}
    assert agent_wide == {"inference": "sensor", "latency": "sensor", "outbox_depth": "sensor"} | (
        {"mode": "select"} if commands else {}
    )
    if commands:
        assert doc["cmps"]["mode"]["ops"] == ["auto", "local"]
        assert doc["cmps"]["cam0_detect"]["cmd_t"] == "seg-agent/dev.1/cam0/detect/set"
        assert doc["cmps"]["cam0_detect"]["stat_t"] == "seg-agent/dev.1/cam0/detect/state"
    if snapshots:
        assert doc["cmps"]["yard_1_snapshot"]["image_topic"] == "seg-agent/dev.1/yard.1/snapshot"


def test_count_sensors_read_the_count_topics_and_keep_distinct_ids(tmp_path: Path) -> None:
    s = _settings(tmp_path, cameras=("cam0",))
    doc = device_config(s, classes=["a b", "a_b"], modes=["local"], commands=False, snapshots=False)
    counts = {k: c for k, c in doc["cmps"].items() if "_count_" in k}
    assert sorted(c["stat_t"] for c in counts.values()) == [
        "seg-agent/dev.1/cam0/all/a b",
        "seg-agent/dev.1/cam0/all/a_b",
    ]
    assert len({c["unique_id"] for c in counts.values()}) == 2


def test_gone_components_are_sent_as_platform_only(tmp_path: Path) -> None:
    s = _settings(tmp_path, cameras=("cam0",))
    gone = {"old_cam_occupancy": "binary_sensor", "cam0_occupancy": "binary_sensor"}  # the second is back
    doc = device_config(s, classes=[], modes=["local"], commands=False, snapshots=False, gone=gone)
    assert doc["cmps"]["old_cam_occupancy"] == {"p": "binary_sensor"}
    assert len(doc["cmps"]["cam0_occupancy"]) > 1
    _check_schema(doc, s)


@pytest.mark.parametrize(("device_id", "node"), [("dev1", "dev1"), ("pi-5.garage", "pi-5_garage"), ("a.b.c", "a_b_c")])
def test_node_id_keeps_only_the_allowed_characters(device_id: str, node: str) -> None:
    assert node_id(device_id) == node


# ---------------------------------------------------------------------------- through a real broker


def _send(port: int, topic: str, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(10.0)
    finally:
        c.disconnect()
        c.loop_stop()


def _discovery(settings: Settings, inbox: Inbox, publisher: Publisher) -> Discovery:
    return Discovery(
        settings, publisher=publisher, inbox=inbox, classes=["person"], modes=["local"], commands=True, snapshots=False
    )


class _Running:
    """A publisher and the discovery of ``settings``, started as the daemon starts them."""

    def __init__(self, settings: Settings) -> None:
        self.outbox = Outbox(settings.state_dir / "outbox.sqlite3", OutboxSettings())
        self.publisher = Publisher(settings.mqtt, self.outbox, status_topic=f"{settings.topic_base}/status")
        self.inbox = Inbox()
        self.discovery = _discovery(settings, self.inbox, self.publisher)
        if settings.home_assistant.discovery:
            self.discovery.start()
        else:
            self.withdrawing = withdraw_when_connected(settings, self.publisher, self.inbox)
        self.inbox.start()
        self.outbox.start()
        self.publisher.start()

    def close(self) -> None:
        self.inbox.stop()
        self.publisher.stop(timeout=2.0)
        self.outbox.stop()


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_discovery_is_retained_resent_on_birth_and_drops_a_removed_camera(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with Mosquitto(tmp_path / "broker") as broker:
        s = _settings(state, port=broker.port)
        topic = discovery_topic(s)
        assert topic == "homeassistant/device/dev_1/config"
        agent = _Running(s)
        try:
            with Subscriber(broker.port, "homeassistant/device/#") as live:
                assert live.wait_until(lambda: agent.discovery.sent >= 1, 10.0)
            with Subscriber(broker.port, "homeassistant/device/#") as late:  # subscribes after: gets it retained
                assert late.wait_for_count(1, topic, 10.0)
                first = late.received(topic)[0]
                assert first.retain
                doc = json.loads(first.payload)
                _check_schema(doc, s)
                assert "yard_1_detect" in doc["cmps"]
                sent = agent.discovery.sent
                _send(broker.port, "homeassistant/status", b"online")  # Home Assistant's birth message
                _send(broker.port, "homeassistant/status", b"offline")  # and its last will: no discovery
                assert late.wait_for_count(2, topic, 10.0)
                assert not late.received(topic)[1].retain  # a fresh one, to a subscriber already there
                assert json.loads(late.received(topic)[1].payload) == doc
                assert late.wait_until(lambda: agent.discovery.sent == sent + 1, 5.0)
        finally:
            agent.close()

        # the same agent restarted with yard.1 taken out of its config
        fewer = _settings(state, cameras=("cam0",), port=broker.port)
        again = _Running(fewer)
        try:
            with Subscriber(broker.port, "homeassistant/device/#") as late:

                def deleted() -> list[dict[str, Any]]:
                    docs = [json.loads(m.payload) for m in late.received(topic)]
                    return [d for d in docs if d["cmps"].get("yard_1_detect") == {"p": "switch"}]

                assert late.wait_until(lambda: bool(deleted()), 10.0)
                doc = deleted()[0]
        finally:
            again.close()
        _check_schema(doc, fewer)
        yard = {k: c for k, c in doc["cmps"].items() if k.startswith("yard_1_")}
        assert set(yard) == {"yard_1_occupancy", "yard_1_count_person", "yard_1_fps", "yard_1_detect", "yard_1_fps_set"}
        assert all(c == {"p": c["p"]} for c in yard.values())
        assert len(doc["cmps"]["cam0_detect"]) > 1
        kept = json.loads((state / "homeassistant.json").read_text())["components"]
        assert kept["yard_1_detect"] == "switch"  # kept, so the deletion is sent again after a restart

        # discovery turned off: the retained message is cleared once, and the device goes from Home Assistant
        off = replace(fewer, home_assistant=HomeAssistantSettings(discovery=False))
        with Subscriber(broker.port, "homeassistant/device/#") as live:
            assert live.wait_for_count(1, topic, 10.0)  # the retained one, still there
            last = _Running(off)
            try:
                assert last.withdrawing
                assert live.wait_for_payload(topic, b"", 10.0)
                assert live.wait_until(lambda: not (state / "homeassistant.json").exists(), 5.0)
            finally:
                last.close()
        assert not withdraw_when_connected(off, last.publisher, last.inbox)  # nothing left: the next start is quiet
