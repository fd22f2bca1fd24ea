"""``seg-agent watch``: what an agent publishes, one readable line per message.

It subscribes to ``{topic_prefix}/{device_id}/#`` on the broker of a configuration file (credentials and TLS
as the agent uses them) and prints each message as a line: a result as its camera, frame, source, classes
with counts and latency; status, health and errors in words; anything else as its topic and size.
``--raw`` prints topic and payload as they came. It never publishes (no last will either), so watching
changes nothing a subscriber sees.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import Settings
from agent.health import status_line
from agent.mqtt_client import configure_tls, describe_error

__all__ = ["describe", "watch"]

_TEXT_LIMIT = 160  # a payload we don't know is shown up to this many characters


def describe(topic: str, payload: bytes, base: str) -> str:
    """One line for one message on ``topic`` (under ``base``, the agent's ``{prefix}/{device_id}``)."""
    kind = topic[len(base) + 1 :] if topic.startswith(base + "/") else topic
    if kind in ("detections", "health", "errors"):
        try:
            obj = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{kind}: not JSON ({len(payload)} bytes)"
        if isinstance(obj, dict):
            return {"detections": _result_line, "health": _health_line, "errors": _error_line}[kind](obj)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return f"{kind}: {len(payload)} bytes"
    if not text.isprintable():
        return f"{kind}: {len(payload)} bytes"
    return f"{kind}: {text[:_TEXT_LIMIT]}{' ...' if len(text) > _TEXT_LIMIT else ''}"


def _clock(message: Mapping[str, Any]) -> str:
    stamp = message.get("timestamp")
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return "--:--:--"


def _result_line(message: Mapping[str, Any]) -> str:
    predictions = message.get("predictions")
    counts = Counter(str(p.get("class")) for p in predictions if isinstance(p, dict)) if predictions else {}
    found = ", ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    extra = []
    if message.get("fallback_reason"):
        extra.append(f"fallback {message['fallback_reason']}")
    if message.get("replayed"):
        extra.append("replayed")
    return (
        f"{_clock(message)} {message.get('camera', '?')} frame {message.get('frame_id', '?')} "
        f"{message.get('source', '?')} {message.get('latency_ms', '?')} ms: {found or 'nothing'}"
        + (f" ({', '.join(extra)})" if extra else "")
    )


def _health_line(health: Mapping[str, Any]) -> str:
    problems = health.get("problems") or []
    return f"health: {status_line(health)}" + (f"; problems: {'; '.join(map(str, problems))}" if problems else "")


def _error_line(error: Mapping[str, Any]) -> str:
    return (
        f"{_clock(error)} {error.get('camera', '?')} frame {error.get('frame_id', '?')} got no result: "
        f"{error.get('reason') or error.get('error', '?')}"
    )


def watch(
    settings: Settings,
    *,
    raw: bool = False,
    out: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Prints the agent's messages until ``stop`` is set (or forever); raises OSError if the broker is
    unreachable at the start."""
    base = settings.topic_base
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"seg-agent-watch-{os.getpid()}",
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    mqtt_settings = settings.mqtt
    if mqtt_settings.username:
        client.username_pw_set(mqtt_settings.username, mqtt_settings.password.reveal() or None)
    if mqtt_settings.tls is not None:
        configure_tls(client, mqtt_settings.tls)

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            out(f"broker refused the connection: {reason}")
            return
        c.subscribe(f"{base}/#", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        out(f"{msg.topic} {payload.decode('utf-8', 'replace')}" if raw else describe(msg.topic, payload, base))

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(mqtt_settings.host, mqtt_settings.port, keepalive=mqtt_settings.keepalive_s)
    except OSError as exc:
        raise OSError(
            f"cannot reach the broker at {mqtt_settings.host}:{mqtt_settings.port}: {describe_error(exc)}"
        ) from None
    client.loop_start()
    try:
        (stop or threading.Event()).wait()
    finally:
        client.disconnect()
        client.loop_stop()
