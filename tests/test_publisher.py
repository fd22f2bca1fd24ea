"""The publisher against a real Mosquitto and a real subscriber: order, status, outages, auth, TLS."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttSettings, OutboxSettings, Secret, TlsSettings
from agent.outbox import Outbox
from agent.publisher import Publisher, mark_replayed
from tests.mosquitto import Mosquitto, Subscriber, TcpProxy, TlsFiles

REPO = Path(__file__).resolve().parent.parent
STATUS = "seg-agent/test/status"
TOPIC = "seg-agent/test/detections"

MakeBroker = Callable[..., Mosquitto]
MakeSubscriber = Callable[..., Subscriber]


def mqtt_settings(port: int, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": "seg-agent-test",
        "keepalive_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.3,
        "max_in_flight": 10,
    }
    return MqttSettings(**{**base, **kw})


def message(i: int) -> bytes:
    return b'{"frame_id":%d,"predictions":[]}' % i


def frame_ids(payloads: list[bytes]) -> list[int]:
    return [json.loads(p)["frame_id"] for p in payloads]


def replayed(payload: bytes) -> bool:
    return bool(json.loads(payload).get("replayed"))


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox(None, OutboxSettings())
    box.start()
    yield box
    box.close()


@pytest.fixture
def make_publisher(outbox: Outbox) -> Iterator[Callable[..., Publisher]]:
    publishers: list[Publisher] = []

    def make(settings: MqttSettings, box: Outbox | None = None) -> Publisher:
        pub = Publisher(settings, box or outbox, status_topic=STATUS)
        publishers.append(pub)
        pub.start()
        return pub

    yield make
    for pub in publishers:
        pub.stop(timeout=0.5)


@pytest.fixture
def proxy(broker: Mosquitto) -> Iterator[TcpProxy]:
    relay = TcpProxy(broker.port)
    yield relay
    relay.close()


def connected(pub: Publisher, connects: int = 1) -> Callable[[], bool]:
    return lambda: pub.stats().connected and pub.stats().reconnects >= connects - 1


# --------------------------------------------------------------------------- the payload mark


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a":1}', b'{"replayed":true,"a":1}'),
        (b'  {\n "a": [1, {"b": 2}]}', b'  {"replayed":true,\n "a": [1, {"b": 2}]}'),
        (b"{}", b'{"replayed":true}'),
        (b"{ }", b'{"replayed":true}'),
        (b"[1,2]", b"[1,2]"),
        (b"", b""),
    ],
)
def test_mark_replayed_splices_without_reserialising(payload: bytes, expected: bytes) -> None:
    assert mark_replayed(payload) == expected
    if expected.strip().startswith(b"{"):
        assert json.loads(expected)["replayed"] is True


# --------------------------------------------------------------------------- a healthy broker


def test_messages_arrive_in_order_once_each(
    broker: Mosquitto, make_subscriber: MakeSubscriber, make_publisher: Callable[..., Publisher], outbox: Outbox
) -> None:
    sub = make_subscriber(broker.port, TOPIC)
    pub = make_publisher(mqtt_settings(broker.port, max_in_flight=5))
    assert wait_for(connected(pub))
    for i in range(300):
        outbox.put(TOPIC, message(i))
    assert pub.drain(10.0)
    assert sub.wait_for_count(300, TOPIC)
    time.sleep(0.1)  # nothing more trickles in
    payloads = sub.payloads(TOPIC)
    assert frame_ids(payloads) == list(range(300))
    assert payloads == [message(i) for i in range(300)]  # live: no "replayed" key, bytes untouched
    st = pub.stats()
    assert (st.published, st.acked, st.in_flight, st.reconnects) == (300, 300, 0, 0)
    assert outbox.stats().depth == 0


def test_a_healthy_broker_means_no_disk_writes(
    broker: Mosquitto, make_subscriber: MakeSubscriber, make_publisher: Callable[..., Publisher], tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite3", OutboxSettings(commit_interval_s=1.0))
    box.start()
    try:
        sub = make_subscriber(broker.port, TOPIC)
        pub = make_publisher(mqtt_settings(broker.port), box)
        assert wait_for(connected(pub))
        for i in range(50):
            box.put(TOPIC, message(i))
            time.sleep(0.01)
        assert pub.drain(5.0) and sub.wait_for_count(50, TOPIC)
        time.sleep(1.2)  # past the commit interval
        st = box.stats()
        assert (st.written_to_disk, st.committed, st.depth) == (0, 0, 0)
    finally:
        pub.stop(timeout=1.0)
        box.close()


def test_qos0_removes_entries_once_handed_over(
    broker: Mosquitto, make_subscriber: MakeSubscriber, make_publisher: Callable[..., Publisher], outbox: Outbox
) -> None:
    sub = make_subscriber(broker.port, TOPIC, qos=0)
    pub = make_publisher(mqtt_settings(broker.port, qos=0))
    assert wait_for(connected(pub))
    for i in range(50):
        outbox.put(TOPIC, message(i))
    assert pub.drain(5.0) and sub.wait_for_count(50, TOPIC)
    assert frame_ids(sub.payloads(TOPIC)) == list(range(50))
    assert pub.stats().in_flight == 0


def test_publish_retained_is_latest_value_and_dropped_while_disconnected(
    broker: Mosquitto, make_subscriber: MakeSubscriber, outbox: Outbox
) -> None:
    pub = Publisher(mqtt_settings(broker.port), outbox, status_topic=STATUS)
    pub.publish_retained("seg-agent/test/health", b'{"n":0}')  # not started: dropped, no error
    pub.start()
    try:
        assert wait_for(connected(pub))
        pub.publish_retained("seg-agent/test/health", b'{"n":1}')
        pub.publish_retained("seg-agent/test/health", b'{"n":2}')
        late = make_subscriber(broker.port, "seg-agent/test/health")
        # The subscription may reach the broker between the two publishes: then n=1 comes retained and n=2
        # live. Either way the first is a retained value and the latest is n=2; n=0 (before start) never.
        assert late.wait_for_payload("seg-agent/test/health", b'{"n":2}')
        assert late.received()[0].retain
        assert b'{"n":0}' not in late.payloads()
        assert outbox.stats().depth == 0  # not through the outbox
    finally:
        pub.stop(timeout=1.0)
    pub.publish_retained("seg-agent/test/health", b'{"n":3}')  # stopped: dropped, no error


def test_status_online_retained_then_offline_on_clean_stop(
    broker: Mosquitto, make_subscriber: MakeSubscriber, outbox: Outbox
) -> None:
    pub = Publisher(mqtt_settings(broker.port), outbox, status_topic=STATUS)
    pub.start()
    try:
        assert wait_for(connected(pub))
        late = make_subscriber(broker.port, STATUS)  # subscribes after the fact: gets the retained one
        assert late.wait_for_payload(STATUS, b"online")
        assert late.received(STATUS)[0].retain
        pub.stop(timeout=2.0)
        assert late.wait_for_payload(STATUS, b"offline")
        assert not pub.stats().connected
        fresh = make_subscriber(broker.port, STATUS)
        assert fresh.wait_for_count(1, STATUS)
        assert fresh.received(STATUS)[0].payload == b"offline" and fresh.received(STATUS)[0].retain
    finally:
        pub.stop(timeout=0.5)


def test_last_will_says_offline_when_the_agent_is_killed(broker: Mosquitto, make_subscriber: MakeSubscriber) -> None:
    sub = make_subscriber(broker.port, STATUS)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(broker.port), STATUS],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "connected"
        assert sub.wait_for_payload(STATUS, b"online")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    assert sub.wait_until(lambda: sub.payloads(STATUS)[-1:] == [b"offline"], 5.0)
    fresh = make_subscriber(broker.port, STATUS)
    assert fresh.wait_for_count(1, STATUS)
    assert fresh.received(STATUS)[0].payload == b"offline" and fresh.received(STATUS)[0].retain


_CHILD = r"""
import sys, time
from agent.config import MqttSettings, OutboxSettings
from agent.outbox import Outbox
from agent.publisher import Publisher
settings = MqttSettings(port=int(sys.argv[1]), client_id="seg-agent-child", keepalive_s=5, reconnect_min_s=0.05)
outbox = Outbox(None, OutboxSettings())
outbox.start()
pub = Publisher(settings, outbox, status_topic=sys.argv[2])
pub.start()
deadline = time.monotonic() + 10
while not pub.stats().connected and time.monotonic() < deadline:
    time.sleep(0.01)
print("connected" if pub.stats().connected else "not connected", flush=True)
time.sleep(60)
"""


# --------------------------------------------------------------------------- outages


def test_broker_restart_loses_nothing_and_sends_nothing_twice(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker(persistence=True)  # keeps the subscriber's session across the restart
    sub = make_subscriber(broker.port, TOPIC, client_id="recorder", clean_session=False)
    pub = make_publisher(mqtt_settings(broker.port))
    assert wait_for(connected(pub))
    for i in range(20):  # before: live
        outbox.put(TOPIC, message(i))
        time.sleep(0.005)
    assert pub.drain(5.0) and sub.wait_for_count(20, TOPIC)
    time.sleep(0.2)  # the subscriber's own PUBACKs reach the broker before it goes down
    with caplog.at_level(logging.INFO, logger="agent.publisher"):
        broker.stop()
        for i in range(20, 50):  # during the outage: publishing goes on
            outbox.put(TOPIC, message(i))
            time.sleep(0.03)
        assert wait_for(lambda: not pub.stats().connected) and outbox.stats().depth == 30
        broker.start()
        assert wait_for(connected(pub, 2))
    for i in range(50, 60):  # after: live again
        outbox.put(TOPIC, message(i))
    assert sub.wait_for_count(60, TOPIC, timeout=10.0)
    assert pub.drain(5.0)
    time.sleep(0.2)
    payloads = sub.payloads(TOPIC)
    assert frame_ids(payloads) == list(range(60))  # all of them, in order, none twice
    assert [replayed(p) for p in payloads] == [False] * 20 + [True] * 30 + [False] * 10
    text = caplog.text
    assert "lost" in text and "results are kept in the outbox" in text and "reconnected" in text


def test_unreachable_broker_at_start_then_started(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker(persistence=True)
    sub = make_subscriber(broker.port, TOPIC, client_id="recorder", clean_session=False)
    broker.stop()
    with caplog.at_level(logging.DEBUG, logger="agent.publisher"):
        pub = make_publisher(mqtt_settings(broker.port))  # must not raise
        for i in range(10):
            outbox.put(TOPIC, message(i))
        # several attempts with backoff: the first warns, each later one logs "(still)" at DEBUG
        assert wait_for(lambda: sum("unreachable" in r.getMessage() for r in caplog.records) >= 4, 10.0)
        st = pub.stats()
        assert not st.connected and st.last_error and "unreachable" in st.last_error
        broker.start()
        assert wait_for(connected(pub))
    assert sub.wait_for_count(10, TOPIC, timeout=10.0)
    payloads = sub.payloads(TOPIC)
    assert frame_ids(payloads) == list(range(10))
    assert all(replayed(p) for p in payloads)  # they waited for the broker
    line = f"broker 127.0.0.1:{broker.port} unreachable: Connection refused; retrying, results are kept in the outbox"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "unreachable" in r.getMessage()]
    assert [r.getMessage() for r in warnings] == [line]  # one clear line, not one per retry
    assert pub.stats().last_error is None


def test_lost_publishes_are_resent_once_from_the_outbox(
    broker: Mosquitto,
    proxy: TcpProxy,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
) -> None:
    """The link dies with messages in flight: paho's queue is dropped, the outbox resends each once."""
    sub = make_subscriber(broker.port, [TOPIC, STATUS])
    pub = make_publisher(mqtt_settings(proxy.port))
    assert wait_for(connected(pub))
    for i in range(5):
        outbox.put(TOPIC, message(i))
    assert pub.drain(5.0)
    proxy.drop_upstream = True  # a dead link that nobody noticed yet
    for i in range(5, 13):
        outbox.put(TOPIC, message(i))
    assert wait_for(lambda: pub.stats().in_flight == 8)  # handed to paho, never acknowledged
    proxy.drop_upstream = False
    proxy.cut()
    assert wait_for(connected(pub, 2))
    for i in range(13, 18):
        outbox.put(TOPIC, message(i))
    assert pub.drain(5.0)
    assert sub.wait_for_count(18, TOPIC)
    time.sleep(0.2)
    payloads = sub.payloads(TOPIC)
    assert frame_ids(payloads) == list(range(18))
    assert [replayed(p) for p in payloads] == [False] * 5 + [True] * 8 + [False] * 5
    assert sub.payloads(STATUS)[-2:] == [b"offline", b"online"]  # the will, then the new connection


def test_lost_acknowledgements_give_marked_duplicates_not_losses(
    broker: Mosquitto,
    proxy: TcpProxy,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
) -> None:
    """What QoS 1 can't avoid: the broker got them, the PUBACKs were lost. Sent again, marked replayed."""
    sub = make_subscriber(broker.port, TOPIC)
    pub = make_publisher(mqtt_settings(proxy.port))
    assert wait_for(connected(pub))
    proxy.drop_downstream = True
    for i in range(4):
        outbox.put(TOPIC, message(i))
    assert sub.wait_for_count(4, TOPIC)
    assert wait_for(lambda: pub.stats().in_flight == 4)
    proxy.drop_downstream = False
    proxy.cut()
    assert sub.wait_for_count(8, TOPIC)
    assert pub.drain(5.0)
    payloads = sub.payloads(TOPIC)
    assert payloads[:4] == [message(i) for i in range(4)]
    assert payloads[4:] == [mark_replayed(message(i)) for i in range(4)]


def _broker_log_count(broker: Mosquitto, pattern: str) -> int:
    return broker.log_path.read_text(errors="replace").count(pattern)


def test_a_broker_restart_redelivers_to_a_persistent_session_with_the_dup_flag(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
) -> None:
    """The unmarked duplicates right after a broker restart (chaos soak) are the broker's, not ours.

    Mosquitto sent results to a persistent session and saved that session at SIGTERM before the
    subscriber's PUBACKs reached it (here: dropped on the way, so it happens every time): after the
    restart it sends them to the subscriber again with the MQTT DUP flag, as QoS 1 allows. The agent
    published each result once; consumers drop the copies by ``(device_id, camera, frame_id)``.
    """
    broker = make_broker(persistence=True)
    relay = TcpProxy(broker.port)  # between the broker and the subscriber only
    try:
        sub = make_subscriber(relay.port, TOPIC, client_id="recorder", clean_session=False)
        pub = make_publisher(mqtt_settings(broker.port))
        assert wait_for(connected(pub))
        for i in range(3):
            outbox.put(TOPIC, message(i))
        assert pub.drain(5.0) and sub.wait_for_count(3, TOPIC)
        assert wait_for(lambda: _broker_log_count(broker, "Received PUBACK from recorder") == 3)
        relay.drop_upstream = True  # the subscriber's PUBACKs for what follows never reach the broker
        for i in range(3, 6):
            outbox.put(TOPIC, message(i))
        assert pub.drain(5.0) and sub.wait_for_count(6, TOPIC)  # the broker acknowledged all six to the agent
        broker.stop()  # SIGTERM: the session is saved with 3, 4 and 5 unacknowledged
        relay.drop_upstream = False
        broker.start()
        assert wait_for(connected(pub, 2), timeout=10.0)
        for i in range(6, 8):
            outbox.put(TOPIC, message(i))
        assert pub.drain(5.0) and sub.wait_for_count(11, TOPIC, timeout=10.0)
        time.sleep(0.2)  # nothing more comes
    finally:
        relay.close()
    got = sub.received(TOPIC)
    first = [m for m in got if not m.dup]
    again = [m for m in got if m.dup]
    assert sorted(frame_ids([m.payload for m in first])) == list(range(8))
    assert sorted(frame_ids([m.payload for m in again])) == [3, 4, 5]  # the broker's redelivery: DUP flag set
    assert [m.payload for m in got if replayed(m.payload)] == []  # not a resend by the agent
    assert pub.stats().published == 8  # the agent handed each result to paho once
    assert _broker_log_count(broker, "Received PUBLISH from seg-agent-test (d0, q1, r0, ") == 8
    assert _broker_log_count(broker, "Sending PUBLISH to recorder (d1, q1") == 3


def test_a_killed_broker_loses_what_it_acknowledged_since_its_last_save(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
) -> None:
    """The limit of the promise: a broker SIGKILLed (or losing power) forgets results it had acknowledged,
    and the agent, which deleted them on the PUBACK, can't resend them. Mosquitto saves sessions and queued
    messages only at a clean stop and every ``autosave_interval`` (default 30 minutes)."""
    broker = make_broker(persistence=True)
    sub = make_subscriber(broker.port, TOPIC, client_id="recorder", clean_session=False)
    sub.close()  # the session stays; the broker queues for it
    pub = make_publisher(mqtt_settings(broker.port))
    assert wait_for(connected(pub))
    for i in range(3):
        outbox.put(TOPIC, message(i))
    assert pub.drain(5.0)  # acknowledged by the broker: gone from the outbox
    broker.kill()
    broker.start()
    assert wait_for(connected(pub, 2), timeout=10.0)
    sub = make_subscriber(broker.port, TOPIC, client_id="recorder", clean_session=False)
    outbox.put(TOPIC, message(3))
    assert pub.drain(5.0) and sub.wait_for_count(1, TOPIC)
    time.sleep(0.2)  # nothing more comes
    assert frame_ids(sub.payloads(TOPIC)) == [3]


def test_results_from_an_earlier_run_go_first_marked_replayed(
    broker: Mosquitto, make_subscriber: MakeSubscriber, make_publisher: Callable[..., Publisher], tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path, OutboxSettings()) as earlier:
        for i in range(3):
            earlier.put(TOPIC, message(i))
    box = Outbox(path, OutboxSettings())
    box.start()
    try:
        sub = make_subscriber(broker.port, TOPIC)
        pub = make_publisher(mqtt_settings(broker.port), box)
        assert sub.wait_for_count(3, TOPIC)
        assert wait_for(connected(pub))
        box.put(TOPIC, message(3))
        assert sub.wait_for_count(4, TOPIC) and pub.drain(5.0)
        payloads = sub.payloads(TOPIC)
        assert payloads == [mark_replayed(message(i)) for i in range(3)] + [message(3)]
    finally:
        pub.stop(timeout=1.0)
        box.close()


# --------------------------------------------------------------------------- auth and TLS


def test_wrong_password_is_reported_and_retried_without_crashing(
    make_broker: MakeBroker,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker(users={"agent": "right-password"})
    with caplog.at_level(logging.DEBUG, logger="agent"):
        pub = make_publisher(
            mqtt_settings(broker.port, username="agent", password=Secret("wrong-hunter2"), reconnect_max_s=0.1)
        )
        outbox.put(TOPIC, message(0))
        assert wait_for(lambda: "not authorized" in (pub.stats().last_error or "").lower())
        # it keeps trying: the first attempt is an ERROR, each later one logs "(still)" at DEBUG
        assert wait_for(lambda: sum("Not authorized" in r.getMessage() for r in caplog.records) >= 3, 10.0)
        st = pub.stats()
        assert not st.connected and st.published == 0
        pub.stop(timeout=0.5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused the connection: Not authorized" in errors[0]
    assert "wrong-hunter2" not in caplog.text and "wrong-hunter2" not in str(st)
    assert outbox.stats().depth == 1  # kept for when the password is fixed


def test_tls_with_ca_and_password(
    make_broker: MakeBroker,
    make_subscriber: MakeSubscriber,
    make_publisher: Callable[..., Publisher],
    outbox: Outbox,
    tls_files: TlsFiles,
) -> None:
    broker = make_broker(tls=tls_files, users={"agent": "s3cret", "reader": "r"})
    assert broker.tls_port is not None
    sub = make_subscriber(broker.port, [TOPIC, STATUS], username="reader", password="r")
    settings = mqtt_settings(
        broker.tls_port, username="agent", password=Secret("s3cret"), tls=TlsSettings(ca_certs=tls_files.ca)
    )
    pub = make_publisher(settings)
    assert wait_for(connected(pub))
    for i in range(5):
        outbox.put(TOPIC, message(i))
    assert sub.wait_for_count(5, TOPIC) and pub.drain(5.0)
    assert sub.payloads(TOPIC) == [message(i) for i in range(5)]
    assert sub.wait_for_payload(STATUS, b"online")


def test_tls_with_the_wrong_ca_is_a_clear_error(
    make_broker: MakeBroker, make_publisher: Callable[..., Publisher], tls_files: TlsFiles
) -> None:
    broker = make_broker(tls=tls_files)
    assert broker.tls_port is not None
    # The server's own certificate is no CA: the chain can't be verified.
    pub = make_publisher(mqtt_settings(broker.tls_port, tls=TlsSettings(ca_certs=tls_files.cert)))
    assert wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in (pub.stats().last_error or ""))
    assert not pub.stats().connected
