"""One paho-mqtt client (2.x, MQTT v3.1.1) and what the publisher knows of its connection.

:class:`MqttSession` connects a client from :func:`agent.mqtt_client.new_client`, runs paho's callbacks on
paho's network thread, and keeps the per-connection state that the delivery guarantees of :mod:`agent.publisher`
rest on:

* the gate: results are published only between ``on_connect`` and the next ``on_pre_connect`` or
  ``on_disconnect`` of the same connection, and never after :meth:`MqttSession.shut`; both connection
  callbacks and every publish take ``_send_lock``, so nothing reaches a new connection before
  ``on_connect`` has dropped paho's stale queue;
* the cursor: the highest seq handed to paho in this connection, back to 0 on every connect;
* which mid carries which outbox entry; a PUBACK (``on_publish``) for one removes it from the outbox,
  also when it arrives before ``publish()`` has returned the mid.

The retained status topic says ``online`` on every connect and ``offline`` on a clean stop or, through the
broker's last will, when the agent dies. Subscriptions (:meth:`MqttSession.subscribe`, QoS 1) are made again
on every connect; their handlers and the connect hooks run on paho's thread and must only hand work on.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttSettings
from agent.mqtt_client import OFFLINE, ONLINE, describe_error, new_client, stop_network_thread
from agent.outbox import Outbox

__all__ = ["Handler", "MqttSession", "PublisherStats", "Sent", "Window"]

Handler = Callable[[str, bytes, bool], None]
"""A subscription's handler: ``(topic, payload, retained)``, called on paho's thread: it must not block."""

log = logging.getLogger("agent.publisher")

_OFFLINE_WAIT_S = 2.0  # say_offline(): longest wait for the broker to acknowledge "offline"


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    published: int  # outbox entries handed to paho (replays included)
    acked: int  # of those, acknowledged by the broker
    reconnects: int  # successful connects after the first
    last_error: str | None
    in_flight: int
    last_connect_time: float | None  # time.time() of the last successful connect


@dataclass(frozen=True, slots=True)
class Window:
    """What the feeder may send now: entries after ``cursor``, at most ``room`` of them."""

    gen: int  # the connection they are for
    cursor: int
    backlog_until: int  # entries up to this seq waited for the connection: replayed
    room: int


class Sent(Enum):
    """What became of one entry handed to :meth:`MqttSession.send`."""

    STALE = "stale"  # the connection changed: start over from the outbox
    REFUSED = "refused"  # paho did not take it: try again later
    AWAITING = "awaiting"  # with paho; its PUBACK removes it from the outbox
    DONE = "done"  # acknowledged already, QoS 0, or never publishable: remove it from the outbox now


class _Mids:
    """Which mid carries what in the current connection. Guarded by the session's lock."""

    def __init__(self) -> None:
        self.entries: dict[int, int] = {}  # mid -> seq
        self._untracked: set[int] = set()  # mids of status/retained/QoS 0 publishes (acks ignored)
        self._early: set[int] = set()  # mids acknowledged before they were registered

    def entry(self, mid: int, seq: int) -> bool:
        """The mid carries outbox entry ``seq``; True if it was acknowledged already."""
        if mid in self._early:
            self._early.discard(mid)
            return True
        self.entries[mid] = seq
        return False

    def untracked(self, mid: int) -> None:
        if mid in self._early:
            self._early.discard(mid)
        else:
            self._untracked.add(mid)

    def acknowledged(self, mid: int) -> int | None:
        """A PUBACK: the seq of the outbox entry it acknowledges, if it is one."""
        seq = self.entries.pop(mid, None)
        if seq is None:
            if mid in self._untracked:
                self._untracked.discard(mid)
            else:
                self._early.add(mid)  # publish() has not returned this mid yet
        return seq

    def clear(self) -> None:
        self.entries.clear()
        self._untracked.clear()
        self._early.clear()


class _Inbound:
    """What the session receives: subscriptions with their handlers, and the hooks run after each connect.
    Handlers and hooks run on paho's thread; one that raises is logged, the others still run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a leaf
        self._subscriptions: list[tuple[str, Handler]] = []
        self.hooks: list[Callable[[], object]] = []

    def add(self, topic_filter: str, handler: Handler) -> None:
        with self._lock:
            self._subscriptions.append((topic_filter, handler))

    def filters(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(f, 1) for f, _ in self._subscriptions]

    def connected(self) -> None:
        for hook in self.hooks:
            try:
                hook()
            except Exception:
                log.exception("connect hook failed")

    def dispatch(self, topic: str, payload: bytes, retained: bool) -> None:
        with self._lock:
            handlers = [h for f, h in self._subscriptions if mqtt.topic_matches_sub(f, topic)]
        for handler in handlers:
            try:
                handler(topic, payload, retained)
            except Exception:
                log.exception("handler for %s failed", topic)


class _Failures:
    """The last connection failure, and its log line written once until it changes (then a debug line)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a leaf
        self.last: str | None = None
        self._logged: str | None = None

    def note(self, message: str) -> None:
        with self._lock:
            self.last = message

    def clear(self) -> None:
        with self._lock:
            self.last = self._logged = None

    def unreachable(self, message: str) -> None:
        if self._first_report_of(message):
            log.warning("%s; retrying, results are kept in the outbox", message)

    def refused(self, message: str) -> None:
        if self._first_report_of(message):
            log.error(
                "%s; check mqtt.username/password and the broker's ACL; retrying with backoff, "
                "results are kept in the outbox",
                message,
            )

    def _first_report_of(self, message: str) -> bool:
        with self._lock:
            self.last = message
            first = self._logged != message
            self._logged = message
        if not first:
            log.debug("%s (still)", message)
        return first


class MqttSession:
    """The paho client, its callbacks and the state of its connection (see the module docstring)."""

    def __init__(self, settings: MqttSettings, outbox: Outbox, *, status_topic: str, client_id: str) -> None:
        self._settings = settings
        self._outbox = outbox
        self._status_topic = status_topic
        self._client_id = client_id
        self.where = f"{settings.host}:{settings.port}"
        self._client: mqtt.Client | None = None
        # _send_lock: held across every client.publish() and its mid registration, and by the connection
        # callbacks that open or close the gate; taken before _lock. _lock: a leaf, never held while
        # calling paho or the outbox's disk paths.
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closing = False
        self._connected = False  # the gate: on_connect done, no disconnect or reconnect attempt since
        self._gen = 0  # connection generation
        self._cursor = 0  # highest seq handed to paho in this connection
        self._backlog_until = 0  # entries up to this seq waited for the connection: replayed
        self._mids = _Mids()
        self._published = 0
        self._acked = 0
        self._connects = 0
        self._failures = _Failures()
        self._last_connect_time: float | None = None
        self._inbound = _Inbound()

    @property
    def closing(self) -> bool:
        with self._lock:
            return self._closing

    def connect(self) -> bool:
        """Starts paho's network thread connecting in the background; False if the TLS settings are unusable."""
        s = self._settings
        try:
            client = new_client(s, self._client_id, self._status_topic)
        except (OSError, ValueError) as exc:
            message = f"TLS settings for broker {self.where} are unusable: {describe_error(exc)}"
            self._failures.note(message)
            log.error("%s; not connecting, results are kept in the outbox", message)
            return False
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client = client
        log.info(
            "connecting to broker %s as %r (%s, QoS %d)",
            self.where,
            self._client_id,
            "TLS" if s.tls is not None else "plain TCP",
            s.qos,
        )
        client.loop_start()
        return True

    def publish_retained(self, topic: str, payload: bytes, qos: int) -> None:
        """A latest-value message: not kept anywhere; dropped while disconnected."""
        client = self._client
        if client is None:
            return
        with self._send_lock:
            with self._lock:
                ready = self._connected and not self._closing
            if not ready:
                log.debug("not connected: retained message for %s dropped", topic)
                return
            self._send_retained(client, topic, payload, qos)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Receive ``topic_filter`` (QoS 1) from the next connect on, or at once if connected."""
        self._inbound.add(topic_filter, handler)  # before the check: a connect under way then includes it
        with self._lock:
            now = self._connected and not self._closing
        if now and self._client is not None:
            self._client.subscribe(topic_filter, qos=1)

    def on_connected(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` after every successful connect (on paho's thread: it must not block)."""
        self._inbound.hooks.append(hook)

    def await_window(self, max_in_flight: int, timeout: float) -> Window | None:
        """What may be sent now; None (after waiting up to ``timeout`` for a connect, PUBACK or shut) if nothing
        may, at once if the session is shut."""
        with self._cond:
            if self._closing:
                return None
            if not self._connected or len(self._mids.entries) >= max_in_flight:
                self._cond.wait(timeout)
                return None
            return Window(self._gen, self._cursor, self._backlog_until, max_in_flight - len(self._mids.entries))

    def send(self, seq: int, topic: str, payload: bytes, gen: int) -> Sent:
        """Hands one outbox entry to paho on connection ``gen``."""
        client = self._client
        assert client is not None
        qos = self._settings.qos
        with self._send_lock:
            with self._lock:
                if not self._connected or self._closing or self._gen != gen:
                    return Sent.STALE
            try:
                info = client.publish(topic, payload, qos=qos)
            except ValueError as exc:  # an invalid topic or an oversized payload: never publishable
                log.error("result seq %d can never be published (%s); dropping it", seq, exc)
                with self._lock:
                    self._cursor = seq
                return Sent.DONE
            taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN  # queued; dropped on reconnect
            )
            if not taken:
                log.debug("paho did not take seq %d: %s", seq, mqtt.error_string(info.rc))
                return Sent.REFUSED
            with self._lock:
                self._cursor = seq
                self._published += 1
                if qos == 0:
                    self._mids.untracked(info.mid)
                    return Sent.DONE
                if self._mids.entry(info.mid, seq):
                    self._acked += 1
                    return Sent.DONE
                return Sent.AWAITING

    def wait(self, timeout: float) -> bool:
        """Waits up to ``timeout`` for a connection change, a PUBACK or shut(); True."""
        with self._cond:
            self._cond.wait(timeout)
        return True

    def wait_connected(self, timeout: float) -> bool:
        """As :meth:`wait`, but False at once while not connected."""
        with self._cond:
            if not self._connected:
                return False
            self._cond.wait(timeout)
        return True

    def shut(self) -> bool:
        """Closes the gate for good; returns whether the connection was up."""
        with self._send_lock, self._lock:
            self._closing = True
            self._cond.notify_all()
            return self._connected

    def say_offline(self, deadline: float) -> None:
        """The retained status says ``offline``; waits for its PUBACK (until ``deadline``, at most 2 s)."""
        client = self._client
        assert client is not None
        try:
            info = client.publish(self._status_topic, OFFLINE, qos=1, retain=True)
            info.wait_for_publish(timeout=min(_OFFLINE_WAIT_S, max(0.2, deadline - time.monotonic())))
        except (RuntimeError, ValueError) as exc:
            log.debug("offline status not sent: %s", exc)

    def disconnect(self) -> None:
        """Disconnects cleanly (no last will) and stops paho's network thread."""
        client = self._client
        assert client is not None
        client.disconnect()
        stop_network_thread(client)
        with self._lock:
            self._connected = False

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(
                connected=self._connected,
                published=self._published,
                acked=self._acked,
                reconnects=max(0, self._connects - 1),
                last_error=self._failures.last,
                in_flight=len(self._mids.entries),
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
                self._failures.refused(f"broker {self.where} refused the connection: {reason_code}")
                return
            with self._send_lock:
                stale = len(client.drop_out_messages())  # every QoS>0 message paho still holds
                backlog = self._outbox.last_seq()
                with self._lock:
                    self._gen += 1
                    self._cursor = 0
                    self._backlog_until = backlog
                    self._mids.clear()
                    self._connects += 1
                    first = self._connects == 1
                    self._last_connect_time = time.time()
                    self._failures.clear()
                    closing = self._closing
                if not closing:
                    self._send_retained(client, self._status_topic, ONLINE, 1)
                    with self._lock:
                        self._connected = True
                        self._cond.notify_all()
                    filters = self._inbound.filters()
                    if filters:
                        client.subscribe(filters)
            self._outbox.wake()
            if not closing:
                self._inbound.connected()
            depth = self._outbox.stats().depth
            log.info(
                "%s broker %s%s",
                "connected to" if first else "reconnected to",
                self.where,
                f"; sending {depth} held results first" if depth else "",
            )
            if stale:
                log.debug("dropped %d messages from paho's queue; they are resent from the outbox", stale)
        except Exception:
            log.exception("on_connect failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbound.dispatch(msg.topic, bytes(msg.payload), bool(msg.retain))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError` block: the exception is still being handled.
        self._failures.unreachable(f"broker {self.where} unreachable: {describe_error(sys.exception())}")

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
                self._failures.note(f"connection to broker {self.where} lost{why}")
            message = self._failures.last
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
            seq = self._mids.acknowledged(mid)
            if seq is not None:
                self._acked += 1
            self._cond.notify_all()
        if seq is not None:
            if reason_code.is_failure:
                log.warning("broker rejected result seq %d (%s); dropping it", seq, reason_code)
            self._outbox.ack(seq)

    def _send_retained(self, client: mqtt.Client, topic: str, payload: bytes, qos: int) -> None:
        """A retained publish that the outbox knows nothing about (call with _send_lock held)."""
        try:
            info = client.publish(topic, payload, qos=qos, retain=True)
        except ValueError as exc:
            log.warning("cannot publish to %r: %s", topic, exc)
            return
        if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            with self._lock:
                self._mids.untracked(info.mid)
