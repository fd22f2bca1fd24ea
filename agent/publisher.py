"""Publishes the outbox to the MQTT broker (paho-mqtt 2.x, MQTT v3.1.1) and deletes what the broker acknowledged.

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
  same connection; both connection callbacks and every publish take one lock (``_send_lock``), so nothing
  is handed to paho for a new connection before its queue was dropped.
* An entry leaves the outbox only on a PUBACK for the mid that carried it in the current connection.
  PUBACKs can arrive before ``publish()`` has returned the mid; they are remembered (``_early``) and matched
  when the mid is registered.
* What remains is inherent to QoS 1: a message the broker received but whose PUBACK was lost with the
  connection is sent again after the reconnect (marked replayed). Consumers drop duplicates by
  ``(device_id, camera, frame_id)``.

An entry written by an earlier run, or one that waited while the broker was away (seq at or below the
outbox's last seq when the connection came up), is published with ``"replayed":true`` spliced in as the
first key of its JSON object. The retained status topic says ``online`` on every connect and ``offline``
on a clean stop or, through the broker's last will, when the agent dies.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSettings, TlsSettings
from agent.outbox import Outbox, OutboxEntry

__all__ = ["OFFLINE", "ONLINE", "Publisher", "PublisherStats", "mark_replayed"]

log = logging.getLogger("agent.publisher")
_paho_log = logging.getLogger("agent.publisher.paho")

ONLINE = b"online"
OFFLINE = b"offline"
_BATCH = 100  # entries taken from the outbox at a time
_IDLE_WAIT_S = 5.0  # the feeder's longest sleep; every event wakes it earlier
_RETRY_WAIT_S = 0.1  # paho did not take a message: try again after this
_OFFLINE_WAIT_S = 2.0  # stop(): longest wait for the broker to acknowledge "offline"
_LOOP_STOP_WAIT_S = 6.0  # stop(): longest wait for paho's thread (a connect attempt times out in 5 s)
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


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    published: int  # outbox entries handed to paho (replays included)
    acked: int  # of those, acknowledged by the broker
    reconnects: int  # successful connects after the first
    last_error: str | None
    in_flight: int
    last_connect_time: float | None  # time.time() of the last successful connect


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "connection failed"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _drop_paho_queue(client: mqtt.Client) -> int:
    """Forgets every QoS>0 message paho still holds (public API since paho-mqtt 2.2)."""
    drop = getattr(client, "drop_out_messages", None)
    if drop is not None:
        return len(drop())
    with client._out_message_mutex:  # paho < 2.2: what drop_out_messages does
        count = len(client._out_messages)
        client._out_messages.clear()
        return count


class Publisher:
    """Sends outbox entries to the broker; see the module docstring for the delivery guarantees."""

    def __init__(
        self, settings: MqttSettings, outbox: Outbox, *, status_topic: str, client_id: str | None = None
    ) -> None:
        self._settings = settings
        self._outbox = outbox
        self._status_topic = status_topic
        self._client_id = settings.client_id if client_id is None else client_id
        self._where = f"{settings.host}:{settings.port}"
        self._client: mqtt.Client | None = None
        self._feeder: threading.Thread | None = None
        # _send_lock: held across every client.publish() and its mid registration, and by the connection
        # callbacks that open or close the gate; taken before _lock. _lock: a leaf, never held while
        # calling paho or the outbox's disk paths.
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._started = False
        self._stopped = False
        self._closing = False
        self._connected = False  # the gate: on_connect done, no disconnect or reconnect attempt since
        self._gen = 0  # connection generation
        self._cursor = 0  # highest seq handed to paho in this connection
        self._backlog_until = 0  # entries up to this seq waited for the connection: replayed
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._other: set[int] = set()  # mids of status/retained/QoS 0 publishes (acks ignored)
        self._early: set[int] = set()  # mids acknowledged before they were registered
        self._published = 0
        self._acked = 0
        self._connects = 0
        self._last_error: str | None = None
        self._last_connect_time: float | None = None
        self._logged_failure: str | None = None

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Starts connecting in the background; never raises for a broker that is down or refuses us."""
        with self._lock:
            if self._started:
                return
            self._started = True
        s = self._settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        client.suppress_exceptions = True  # an exception in a callback must not kill the network thread
        client.on_log = self._on_log
        if s.username:
            client.username_pw_set(s.username, s.password.reveal() or None)
        if s.tls is not None:
            try:
                self._configure_tls(client, s.tls)
            except (OSError, ValueError) as exc:
                message = f"TLS settings for broker {self._where} are unusable: {_describe(exc)}"
                with self._lock:
                    self._last_error = message
                log.error("%s; not connecting, results are kept in the outbox", message)
                return
        client.will_set(self._status_topic, OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(s.max_in_flight)
        client.max_queued_messages_set(0)
        # paho annotates these as int but computes with floats; sub-second delays need floats.
        client.reconnect_delay_set(cast(int, s.reconnect_min_s), cast(int, s.reconnect_max_s))
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client = client
        log.info(
            "connecting to broker %s as %r (%s, QoS %d)",
            self._where,
            self._client_id,
            "TLS" if s.tls is not None else "plain TCP",
            s.qos,
        )
        client.loop_start()
        self._feeder = threading.Thread(target=self._feeder_main, name="mqtt-feeder", daemon=True)
        self._feeder.start()

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """A latest-value message (health): not kept anywhere; dropped while disconnected."""
        client = self._client
        if client is None:
            return
        with self._send_lock:
            with self._lock:
                ready = self._connected and not self._closing
            if not ready:
                log.debug("not connected: retained message for %s dropped", topic)
                return
            self._send_untracked(client, topic, payload, qos, retain=True)

    def drain(self, timeout: float) -> bool:
        """Waits until the outbox is empty (everything acknowledged); False on timeout."""
        return self._drain(time.monotonic() + max(0.0, timeout), while_connected=False)

    def stop(self, timeout: float = 5.0) -> None:
        """Drains (up to ``timeout``, while connected), says ``offline``, disconnects cleanly."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        client = self._client
        if client is not None:
            self._drain(deadline, while_connected=True)
        with self._send_lock, self._lock:
            self._closing = True
            connected = self._connected
            self._cond.notify_all()
        self._outbox.wake()
        if self._feeder is not None:
            self._feeder.join(timeout=max(1.0, deadline - time.monotonic()))
        if client is None:
            if started:
                log.info("publisher stopped (it never connected)")
            return
        if connected:
            try:
                info = client.publish(self._status_topic, OFFLINE, qos=1, retain=True)
                info.wait_for_publish(timeout=min(_OFFLINE_WAIT_S, max(0.2, deadline - time.monotonic())))
            except (RuntimeError, ValueError) as exc:
                log.debug("offline status not sent: %s", exc)
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        stopper.join(_LOOP_STOP_WAIT_S)
        if stopper.is_alive():
            log.warning("paho's network thread did not stop in %gs; leaving it behind", _LOOP_STOP_WAIT_S)
        with self._lock:
            self._connected = False
        depth = self._outbox.stats().depth
        log.info(
            "disconnected from broker %s%s",
            self._where,
            f"; {depth} results stay in the outbox for the next run" if depth else "",
        )

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(
                connected=self._connected,
                published=self._published,
                acked=self._acked,
                reconnects=max(0, self._connects - 1),
                last_error=self._last_error,
                in_flight=len(self._inflight),
                last_connect_time=self._last_connect_time,
            )

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # A connection attempt starts: close the gate, waiting for a publish in progress to finish, so that
        # nothing reaches the new connection before on_connect has dropped paho's stale queue.
        with self._send_lock, self._lock:
            self._connected = False

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self._connection_failed(f"broker {self._where} refused the connection: {reason_code}", True)
                return
            with self._send_lock:
                stale = _drop_paho_queue(client)
                backlog = self._outbox.last_seq()
                with self._lock:
                    self._gen += 1
                    self._cursor = 0
                    self._backlog_until = backlog
                    self._inflight.clear()
                    self._other.clear()
                    self._early.clear()
                    self._connects += 1
                    first = self._connects == 1
                    self._last_connect_time = time.time()
                    self._last_error = None
                    self._logged_failure = None
                    closing = self._closing
                if not closing:
                    self._send_untracked(client, self._status_topic, ONLINE, 1, retain=True)
                    with self._lock:
                        self._connected = True
                        self._cond.notify_all()
            self._outbox.wake()
            depth = self._outbox.stats().depth
            log.info(
                "%s broker %s%s",
                "connected to" if first else "reconnected to",
                self._where,
                f"; sending {depth} held results first" if depth else "",
            )
            if stale:
                log.debug("dropped %d messages from paho's queue; they are resent from the outbox", stale)
        except Exception:
            log.exception("on_connect failed")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError` block: the exception is still being handled.
        self._connection_failed(f"broker {self._where} unreachable: {_describe(sys.exception())}", False)

    def _connection_failed(self, message: str, refused: bool) -> None:
        with self._lock:
            self._last_error = message
            first = self._logged_failure != message
            self._logged_failure = message
        if not first:
            log.debug("%s (still)", message)
        elif refused:
            log.error(
                "%s; check mqtt.username/password and the broker's ACL; retrying with backoff, "
                "results are kept in the outbox",
                message,
            )
        else:
            log.warning("%s; retrying, results are kept in the outbox", message)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Only the leaf lock here: paho may call this while holding its own message lock.
        with self._lock:
            was_connected = self._connected
            self._connected = False
            closing = self._closing
            if was_connected and not closing:
                generic = reason_code.value in (0, 0x80)  # v3.1.1 says no more than "Unspecified error"
                why = "" if generic else f" ({reason_code})"
                self._last_error = f"connection to broker {self._where} lost{why}"
            message = self._last_error
            self._cond.notify_all()
        self._outbox.wake()
        if was_connected and not closing:
            log.warning("%s; reconnecting, results are kept in the outbox", message)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is not None:
                self._acked += 1
            elif mid in self._other:
                self._other.discard(mid)
            else:
                self._early.add(mid)  # publish() has not returned this mid yet
            self._cond.notify_all()
        if seq is not None:
            if reason_code.is_failure:
                log.warning("broker rejected result seq %d (%s); dropping it", seq, reason_code)
            self._outbox.ack(seq)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        # paho reports routine reconnect noise at ERROR ("Client is not connected"); we log connection
        # events ourselves, so only an exception inside a callback (a bug) stays an error.
        if level == mqtt.MQTT_LOG_ERR and buf.startswith("Caught exception"):
            log.error("paho: %s", buf)
        else:
            _paho_log.debug("%s", buf)

    # ------------------------------------------------------------------ feeder thread

    def _feeder_main(self) -> None:
        while True:
            try:
                if not self._feed_once():
                    return
            except Exception:
                log.exception("publisher feeder failed; carrying on")
                with self._cond:
                    if self._closing:
                        return
                    self._cond.wait(1.0)

    def _feed_once(self) -> bool:
        """One step; False when stopping."""
        max_in_flight = self._settings.max_in_flight
        with self._cond:
            if self._closing:
                return False
            if not self._connected or len(self._inflight) >= max_in_flight:
                self._cond.wait(_IDLE_WAIT_S)  # woken by connect, PUBACK and stop
                return True
            gen = self._gen
            cursor = self._cursor
            backlog = self._backlog_until
            room = max_in_flight - len(self._inflight)
        entries = self._outbox.pending(cursor, min(room, _BATCH))
        if not entries:
            self._outbox.wait(cursor, _IDLE_WAIT_S)  # woken by put, connection changes and stop
            return True
        if not self._send_entries(entries, gen, backlog):
            with self._cond:
                self._cond.wait(_RETRY_WAIT_S)
        return True

    def _send_entries(self, entries: list[OutboxEntry], gen: int, backlog_until: int) -> bool:
        """Hands entries to paho in order; False if paho refused one (try again later)."""
        client = self._client
        assert client is not None
        qos = self._settings.qos
        for entry in entries:
            late = entry.replayed or entry.seq <= backlog_until
            payload = mark_replayed(entry.payload) if late else entry.payload
            acked = False
            with self._send_lock:
                with self._lock:
                    if not self._connected or self._closing or self._gen != gen:
                        return True  # the connection changed: start over from the outbox
                try:
                    info = client.publish(entry.topic, payload, qos=qos)
                except ValueError as exc:  # an invalid topic or an oversized payload: never publishable
                    log.error("result seq %d can never be published (%s); dropping it", entry.seq, exc)
                    with self._lock:
                        self._cursor = entry.seq
                    acked = True
                else:
                    taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                        qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN  # queued; dropped on reconnect
                    )
                    if not taken:
                        log.debug("paho did not take seq %d: %s", entry.seq, mqtt.error_string(info.rc))
                        return False
                    with self._lock:
                        self._cursor = entry.seq
                        self._published += 1
                    if qos == 0:
                        self._register(info.mid, None)
                        acked = True
                    else:
                        acked = self._register(info.mid, entry.seq)
            if acked:
                self._outbox.ack(entry.seq)
        return True

    # ------------------------------------------------------------------ helpers

    def _register(self, mid: int, seq: int | None) -> bool:
        """Remembers what a mid carries (call with _send_lock held); True if it was acknowledged already."""
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
                if seq is not None:
                    self._acked += 1
                return True
            if seq is None:
                self._other.add(mid)
            else:
                self._inflight[mid] = seq
            return False

    def _send_untracked(self, client: mqtt.Client, topic: str, payload: bytes, qos: int, *, retain: bool) -> None:
        """A publish that the outbox knows nothing about (call with _send_lock held)."""
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:
            log.warning("cannot publish to %r: %s", topic, exc)
            return
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._register(info.mid, None)

    def _drain(self, deadline: float, *, while_connected: bool) -> bool:
        while True:
            if self._outbox.stats().depth == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                if while_connected and not self._connected:
                    return False
                self._cond.wait(min(remaining, 0.05))

    @staticmethod
    def _configure_tls(client: mqtt.Client, tls: TlsSettings) -> None:
        client.tls_set(
            ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
            certfile=str(tls.certfile) if tls.certfile else None,
            keyfile=str(tls.keyfile) if tls.keyfile else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if tls.insecure:
            client.tls_insecure_set(True)  # the chain is still verified; only the host name is not
