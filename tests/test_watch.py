"""``seg-agent watch``: one readable line per message, against a real Mosquitto."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import Settings, parse_settings
from agent.watch import describe, watch
from tests.mosquitto import Mosquitto, Subscriber, free_port

BASE = "seg-agent/dev-1"


def _result(**extra: object) -> bytes:
    preds = [{"class": "circle"}, {"class": "triangle"}, {"class": "circle"}]
    msg = {"camera": "cam0", "frame_id": 42, "source": "local", "latency_ms": 41.3, "predictions": preds}
    msg["timestamp"] = "2026-11-27T13:44:49.123Z"
    return json.dumps({**msg, **extra}).encode()


def _settings(tmp_path: Path, port: int) -> Settings:
    (tmp_path / "m.onnx").write_bytes(b"x")
    doc = {
        "device_id": "dev-1",
        "cameras": [{"name": "cam0", "source": "m.onnx"}],
        "inference": {"mode": "local", "local": {"model": "m.onnx"}},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": "state",
    }
    return parse_settings(doc, base_dir=tmp_path, env={})


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (f"{BASE}/detections", _result(), "cam0 frame 42 local 41.3 ms: 2 circle, 1 triangle"),
        (f"{BASE}/detections", _result(predictions=[]), "cam0 frame 42 local 41.3 ms: nothing"),
        (f"{BASE}/detections", _result(fallback_reason="connect"), "(fallback connect)"),
        (f"{BASE}/detections", _result(replayed=True, fallback_reason="timeout"), "(fallback timeout, replayed)"),
        (f"{BASE}/detections", b"{not json", "detections: not JSON (9 bytes)"),
        (f"{BASE}/status", b"online", "status: online"),
        (f"{BASE}/errors", json.dumps({"camera": "c1", "frame_id": 3, "reason": "timeout"}).encode(), "c1 frame 3"),
        (
            f"{BASE}/health",
            json.dumps({"state": "degraded", "mode": "local", "problems": ["broker disconnected"]}).encode(),
            "problems: broker disconnected",
        ),
        (f"{BASE}/cam0/snapshot", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "cam0/snapshot: 11 bytes"),
        (f"{BASE}/cam0/all/person", b"3", "cam0/all/person: 3"),
        (f"{BASE}/detections", b"[]", "detections: []"),
        ("elsewhere/x", b"y" * 500, "elsewhere/x: " + "y" * 160 + " ..."),
    ],
)
def test_each_message_is_one_readable_line(topic: str, payload: bytes, expected: str) -> None:
    line = describe(topic, payload, BASE)
    assert expected in line and "\n" not in line


def test_watch_prints_what_the_broker_carries_and_publishes_nothing(
    broker: Mosquitto, make_subscriber: Callable[..., Subscriber], tmp_path: Path
) -> None:
    everything = make_subscriber(broker.port, "#")
    settings = _settings(tmp_path, broker.port)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    pub.publish(f"{BASE}/status", b"online", qos=1, retain=True).wait_for_publish(5)
    lines: list[str] = []
    subscribed, got_result, stop = threading.Event(), threading.Event(), threading.Event()

    def out(line: str) -> None:
        lines.append(line)
        if line == "status: online":  # the retained status arrives once the watcher has subscribed
            subscribed.set()
        if "frame 42" in line:
            got_result.set()

    watcher = threading.Thread(target=watch, args=(settings,), kwargs={"out": out, "stop": stop}, daemon=True)
    watcher.start()
    try:
        assert subscribed.wait(10), lines
        pub.publish(f"{BASE}/detections", _result(), qos=1).wait_for_publish(5)
        assert got_result.wait(10), lines
    finally:
        stop.set()
        watcher.join(10)
        pub.loop_stop()
    assert not watcher.is_alive()
    assert lines[0] == "status: online" and "2 circle, 1 triangle" in lines[-1]
    pub.publish("marker", b"end", qos=1)  # after it, everything the broker carried has reached `everything`
    assert everything.wait_for_payload("marker", b"end", timeout=10)
    assert [r.topic for r in everything.received()] == [f"{BASE}/status", f"{BASE}/detections", "marker"]


def test_watch_says_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(tmp_path, port)
    with pytest.raises(OSError, match=f"cannot reach the broker at 127.0.0.1:{port}"):
        watch(settings, stop=threading.Event())
