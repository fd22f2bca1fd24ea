"""Publishes the outbox to the MQTT broker (paho-mqtt 2.x, MQTT v3.1.1) and deletes what the broker acknowledged.

This module is the feeder (outbox -> paho) and the lifecycle; the paho client, its callbacks and the
per-connection state are :mod:`agent.mqtt_session`'s.

Threads: paho's network thread (connects, reconnects with backoff, runs the callbacks) and a feeder thread
that takes entries from the outbox in seq order and hands them to paho, with at most ``max_in_flight``
unacknowledged. A PUBACK (``on_publish``) removes the entry from the outbox; QoS 0 entries are removed once
handed over.

No duplicates on a clean run, no loss on a dirty one:

* The outbox, not paho's in-memory queue, is the only source of truth. Within one connection every entry
  is published at most once (a cursor that only moves forward).
* On every (re)connect, in ``on_connect``, which paho calls *before* it resends its own queue, that queue
  is dropped (``Client.drop_out_messages``) and the cursor goes back to the oldest unacknowledged entry:
  what was in flight when the link died is published once more, from the outbox, marked replayed. paho's
  own resend would otherwise repeat those messages next to ours, and it would lose them anyway on a
  restart.
* The feeder publishes only between ``on_connect`` and the next ``on_pre_connect``/``on_disconnect`` of the
  same connection; both connection callbacks and every publish take one lock (the session's ``_send_lock``),
  so nothing is handed to paho for a new connection before its queue was dropped.
* An entry leaves the outbox only on a PUBACK for the mid that carried it in the current connection.
  PUBACKs can arrive before ``publish()`` has returned the mid; they are remembered (``_Mids``) and matched
  when the mid is registered.
* What remains is inherent to QoS 1: a message the broker received but whose PUBACK was lost with the
  connection is sent again after the reconnect (marked replayed). And the broker redelivers to a
  persistent-session subscriber what it had not seen that subscriber acknowledge when it stopped
  (Mosquitto after a SIGTERM restart: byte-identical, DUP flag set, not marked; see
  ``benchmarks/broker_restart_dups.py``). Consumers drop duplicates by ``message_id`` (or
  ``(device_id, camera, frame_id)``).

An entry written by an earlier run, or one that waited while the broker was away (seq at or below the
outbox's last seq when the connection came up), is published with ``"replayed":true`` spliced in as the
first key of its JSON object. The retained status topic says ``online`` on every connect and ``offline``
on a clean stop or, through the broker's last will, when the agent dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from agent.config import MqttSettings
from agent.mqtt_client import OFFLINE, ONLINE
from agent.mqtt_session import Handler, MqttSession, PublisherStats, Sent, Window
from agent.outbox import Outbox, OutboxEntry

__all__ = ["OFFLINE", "ONLINE", "Publisher", "PublisherStats", "mark_replayed"]

log = logging.getLogger("agent.publisher")

_BATCH = 100  # entries taken from the outbox at a time
_IDLE_WAIT_S = 5.0  # the feeder's longest sleep; every event wakes it earlier
_RETRY_WAIT_S = 0.1  # paho did not take a message: try again after this
_WS = b" \t\r\n"
_REPLAYED = b'"replayed":true'


def mark_replayed(payload: bytes) -> bytes:
    """``{"a":1}`` -> ``{"replayed":true,"a":1}``, without re-serialising; anything but an object is kept."""
    i = 0
    n = len(payload)
    while i < n and payload[i] in _WS:
        i += 1
    if i >= n or payload[i] != ord("{"):
        return payload
    j = i + 1
    while j < n and payload[j] in _WS:
        j += 1
    if j < n and payload[j] == ord("}"):
        return payload[: i + 1] + _REPLAYED + payload[j:]
    return payload[: i + 1] + _REPLAYED + b"," + payload[i + 1 :]


class _Phase(StrEnum):
    NEW = "new"
    RUNNING = "running"  # start() was called
    STOPPED = "stopped"  # stop() was called


class Publisher:
    """Sends outbox entries to the broker; see the module docstring for the delivery guarantees."""

    def __init__(
        self, settings: MqttSettings, outbox: Outbox, *, status_topic: str, client_id: str | None = None
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._session = MqttSession(
            settings,
            outbox,
            status_topic=status_topic,
            client_id=settings.client_id if client_id is None else client_id,
        )
        self._lock = threading.Lock()
        self._phase = _Phase.NEW
        self._connecting = False  # the client exists: start() found the TLS settings usable
        self._feeder: threading.Thread | None = None

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Starts connecting in the background; never raises for a broker that is down or refuses us."""
        with self._lock:
            if self._phase is not _Phase.NEW:
                return
            self._phase = _Phase.RUNNING
        if not self._session.connect():
            return
        self._connecting = True
        self._feeder = threading.Thread(target=self._feeder_main, name="mqtt-feeder", daemon=True)
        self._feeder.start()

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """A latest-value message (health): not kept anywhere; dropped while disconnected."""
        self._session.publish_retained(topic, payload, qos)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Receive ``topic_filter`` on every connection; ``handler(topic, payload, retained)`` runs on paho's
        thread and must only hand the message on."""
        self._session.subscribe(topic_filter, handler)

    def on_connected(self, hook: Callable[[], object]) -> None:
        """``hook()`` after every (re)connect, on paho's thread: it must only hand work on."""
        self._session.on_connected(hook)

    def drain(self, timeout: float) -> bool:
        """Waits until the outbox is empty (everything acknowledged); False on timeout."""
        return self._wait_until_empty(time.monotonic() + max(0.0, timeout), self._session.wait)

    def stop(self, timeout: float = 5.0) -> None:
        """Drains (up to ``timeout``, while connected), says ``offline``, disconnects cleanly."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._phase is _Phase.STOPPED:
                return
            started = self._phase is _Phase.RUNNING
            self._phase = _Phase.STOPPED
        session = self._session
        if self._connecting:
            self._wait_until_empty(deadline, session.wait_connected)
        connected = session.shut()
        self._outbox.wake()
        if self._feeder is not None:
            self._feeder.join(timeout=max(1.0, deadline - time.monotonic()))
        if not self._connecting:
            if started:
                log.info("publisher stopped (it never connected)")
            return
        if connected:
            session.say_offline(deadline)
        session.disconnect()
        depth = self._outbox.stats().depth
        log.info(
            "disconnected from broker %s%s",
            session.where,
            f"; {depth} results stay in the outbox for the next run" if depth else "",
        )

    def stats(self) -> PublisherStats:
        return self._session.stats()

    # ------------------------------------------------------------------ feeder thread

    def _feeder_main(self) -> None:
        while True:
            try:
                if not self._feed_once():
                    return
            except Exception:
                log.exception("publisher feeder failed; carrying on")
                if self._session.closing:
                    return
                self._session.wait(1.0)

    def _feed_once(self) -> bool:
        """One step; False when stopping."""
        window = self._session.await_window(self._settings.max_in_flight, _IDLE_WAIT_S)
        if window is None:
            return not self._session.closing
        entries = self._outbox.pending(window.cursor, min(window.room, _BATCH))
        if not entries:
            self._outbox.wait(window.cursor, _IDLE_WAIT_S)  # woken by put, connection changes and stop
            return True
        if not self._send_entries(entries, window):
            self._session.wait(_RETRY_WAIT_S)
        return True

    def _send_entries(self, entries: list[OutboxEntry], window: Window) -> bool:
        """Hands entries to paho in order; False if paho refused one (try again later)."""
        for entry in entries:
            late = entry.replayed or entry.seq <= window.backlog_until
            payload = mark_replayed(entry.payload) if late else entry.payload
            sent = self._session.send(entry.seq, entry.topic, payload, window.gen)
            if sent is Sent.STALE:
                return True  # the connection changed: start over from the outbox
            if sent is Sent.REFUSED:
                return False
            if sent is Sent.DONE:
                self._outbox.ack(entry.seq)
        return True

    def _wait_until_empty(self, deadline: float, pause: Callable[[float], bool]) -> bool:
        """True once the outbox is empty; False at ``deadline`` or when ``pause`` says to give up."""
        while True:
            if self._outbox.stats().depth == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not pause(min(remaining, 0.05)):
                return False
