"""The paho-mqtt client as the agent configures it: MQTT v3.1.1, credentials, TLS, the last will, limits.

:func:`new_client` makes one, not connected; :mod:`agent.mqtt_session` gives it its callbacks and connects.
The retained status topic carries :data:`ONLINE` and :data:`OFFLINE`; the last will says ``offline`` when
the agent dies without a clean disconnect.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import MqttSettings, TlsSettings

__all__ = ["OFFLINE", "ONLINE", "configure_tls", "describe_error", "new_client", "stop_network_thread"]

log = logging.getLogger("agent.publisher")
_paho_log = logging.getLogger("agent.publisher.paho")

ONLINE = b"online"
OFFLINE = b"offline"
_LOOP_STOP_WAIT_S = 6.0  # stop_network_thread(): longest wait (a connect attempt times out in 5 s)


def describe_error(exc: BaseException | None) -> str:
    """A connection error for a log line: the OS's words, or the exception's message."""
    if exc is None:
        return "connection failed"
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def new_client(settings: MqttSettings, client_id: str, status_topic: str) -> mqtt.Client:
    """A configured client, not connected; raises OSError or ValueError for unusable TLS settings."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.suppress_exceptions = True  # an exception in a callback must not kill the network thread
    client.on_log = _log_paho
    if settings.username:
        client.username_pw_set(settings.username, settings.password.reveal() or None)
    if settings.tls is not None:
        configure_tls(client, settings.tls)
    client.will_set(status_topic, OFFLINE, qos=1, retain=True)
    client.max_inflight_messages_set(settings.max_in_flight)
    client.max_queued_messages_set(0)
    # paho annotates these as int but computes with floats; sub-second delays need floats.
    client.reconnect_delay_set(cast(int, settings.reconnect_min_s), cast(int, settings.reconnect_max_s))
    return client


def _log_paho(client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
    # paho reports routine reconnect noise at ERROR ("Client is not connected"); we log connection
    # events ourselves, so only an exception inside a callback (a bug) stays an error.
    if level == mqtt.MQTT_LOG_ERR and buf.startswith("Caught exception"):
        log.error("paho: %s", buf)
    else:
        _paho_log.debug("%s", buf)


def stop_network_thread(client: mqtt.Client) -> None:
    """``loop_stop()``, waiting for it at most a few seconds."""
    stopper = threading.Thread(target=client.loop_stop, name="mqtt-loop-stop", daemon=True)
    stopper.start()
    stopper.join(_LOOP_STOP_WAIT_S)
    if stopper.is_alive():
        log.warning("paho's network thread did not stop in %gs; leaving it behind", _LOOP_STOP_WAIT_S)


def configure_tls(client: mqtt.Client, tls: TlsSettings) -> None:
    client.tls_set(
        ca_certs=str(tls.ca_certs) if tls.ca_certs else None,
        certfile=str(tls.certfile) if tls.certfile else None,
        keyfile=str(tls.keyfile) if tls.keyfile else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )
    if tls.insecure:
        client.tls_insecure_set(True)  # the chain is still verified; only the host name is not
