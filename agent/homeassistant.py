"""Home Assistant MQTT discovery: the agent appears as one device with its cameras' entities, no YAML.

One retained device-based discovery message (Home Assistant 2024.11+) on ``{prefix}/device/{node}/config``
(``node``: the device_id with anything outside ``[a-zA-Z0-9_-]`` made ``_``), with ``dev`` (the device),
``o`` (the origin: seg-agent) and ``cmps`` (the components, each with its platform ``p`` and a
``unique_id``). Availability is the agent's own retained status topic (``online``/``offline``, also the last
will), shared by every entity.

Per camera: an occupancy ``binary_sensor`` and a count ``sensor`` per class (from the retained counts on
``{base}/{camera}/all/all`` and ``{base}/{camera}/all/{class}``), the processed frame rate (from the health
topic), an ``image`` of the snapshot topic when snapshots are on, and with commands on a ``switch`` for
detection and a ``number`` for the sampling rate. For the agent: a ``select`` for the inference mode (with
commands on), and sensors for the way results are made (``serverless``/``local``/...), the latency and the
outbox depth, read from the retained health topic with ``value_template``.

Published after every connect and again whenever Home Assistant's birth message (``{prefix}/status``
``online``) arrives. A camera taken out of config.yaml loses its entities: the components published before
(kept in ``{state_dir}/homeassistant.json``) and no longer built are sent as ``{"p": platform}`` alone, which
is how device discovery deletes one component. With discovery turned off again, that file left behind makes
the agent clear the retained message once (:func:`withdraw_when_connected`): the device goes from Home Assistant.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from agent import __version__
from agent.commands import load_json
from agent.config import Settings
from agent.inbox import Inbox
from agent.mqtt_client import OFFLINE, ONLINE
from agent.mqtt_session import Handler
from agent.state_files import save_json_atomic

__all__ = ["STATE_FILE", "Discovery", "device_config", "discovery_topic", "node_id", "withdraw_when_connected"]

log = logging.getLogger("agent.homeassistant")

STATE_FILE = "homeassistant.json"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_TOPIC_UNSAFE = set("+#/")


def node_id(device_id: str) -> str:
    """The device_id as Home Assistant's discovery ids must be: ``[a-zA-Z0-9_-]`` only."""
    return _UNSAFE.sub("_", device_id)


def discovery_topic(settings: Settings) -> str:
    return f"{settings.home_assistant.prefix}/device/{node_id(settings.device_id)}/config"


_Entity = tuple[str, str, str, dict[str, Any]]  # component id (within the device), platform, name, options


def device_config(
    settings: Settings,
    *,
    classes: Sequence[str],
    modes: Sequence[str],
    commands: bool,
    snapshots: bool,
    gone: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The device discovery payload. ``classes``: one count sensor each per camera; ``modes``: the select's
    options; ``commands``/``snapshots``: whether those entities exist; ``gone``: component ids published
    before and no longer built, with their platform (sent as ``{"p": platform}``: deleted)."""
    node = node_id(settings.device_id)
    base = settings.topic_base
    entities: list[_Entity] = []
    names = _class_ids(classes)
    for cam in settings.cameras:
        entities += _camera_entities(base, cam.name, names, commands=commands, snapshots=snapshots)
    entities += _agent_entities(base, modes, commands=commands)
    cmps = {cid: {"p": p, "name": name, "unique_id": f"{node}_{cid}", **opts} for cid, p, name, opts in entities}
    for cid, platform in (gone or {}).items():
        if cid not in cmps:
            cmps[cid] = {"p": platform}
    return {
        "dev": {
            "ids": [f"seg-agent_{node}"],
            "name": f"seg-agent {settings.device_id}",
            "mf": "seg-agent",
            "mdl": "edge instance segmentation agent",
            "sw": __version__,
        },
        "o": {"name": "seg-agent", "sw": __version__},
        "avty_t": f"{base}/status",
        "pl_avail": ONLINE.decode(),
        "pl_not_avail": OFFLINE.decode(),
        "qos": 1,
        "cmps": cmps,
    }


def _class_ids(classes: Sequence[str]) -> dict[str, str]:
    """Each usable class name (none empty or with a topic wildcard or level) -> its id part, unique."""
    names: dict[str, str] = {}
    for cls in classes:
        if cls and not _TOPIC_UNSAFE.intersection(cls):
            part = _UNSAFE.sub("_", cls)
            while part in names.values():
                part += "_"
            names[cls] = part
    return names


def _camera_entities(base: str, c: str, names: Mapping[str, str], *, commands: bool, snapshots: bool) -> list[_Entity]:
    cid = _UNSAFE.sub("_", c)
    on_off = "{{ 'ON' if (value | int(0)) > 0 else 'OFF' }}"
    entities: list[_Entity] = [
        (f"{cid}_occupancy", "binary_sensor", f"{c} occupancy",
         {"dev_cla": "occupancy", "stat_t": f"{base}/{c}/all/all", "val_tpl": on_off}),
        *[
            (f"{cid}_count_{part}", "sensor", f"{c} {cls} count",
             {"stat_t": f"{base}/{c}/all/{cls}", "stat_cla": "measurement"})
            for cls, part in names.items()
        ],
        (f"{cid}_fps", "sensor", f"{c} processed rate",
         {"stat_t": f"{base}/health", "val_tpl": f"{{{{ value_json.cameras['{c}'].fps_processed }}}}",
          "unit_of_meas": "fps", "stat_cla": "measurement", "ent_cat": "diagnostic"}),
    ]  # fmt: skip
    if snapshots:
        entities.append(
            (f"{cid}_snapshot", "image", f"{c} snapshot",
             {"image_topic": f"{base}/{c}/snapshot", "content_type": "image/jpeg"})
        )  # fmt: skip
    if commands:
        entities += [
            (f"{cid}_detect", "switch", f"{c} detection",
             {"cmd_t": f"{base}/{c}/detect/set", "stat_t": f"{base}/{c}/detect/state",
              "pl_on": "ON", "pl_off": "OFF", "ent_cat": "config"}),
            (f"{cid}_fps_set", "number", f"{c} sampling rate",
             {"cmd_t": f"{base}/{c}/fps/set", "stat_t": f"{base}/{c}/fps/state", "min": 0, "max": 240,
              "step": 0.5, "mode": "box", "unit_of_meas": "fps", "ent_cat": "config"}),
        ]  # fmt: skip
    return entities


def _agent_entities(base: str, modes: Sequence[str], *, commands: bool) -> list[_Entity]:
    health = f"{base}/health"
    latency = (
        "{% set l = value_json.inference.latency %}"
        "{{ l.serverless.p50_ms if value_json.mode == 'serverless' else l.local.p50_ms }}"
    )
    entities: list[_Entity] = [
        ("inference", "sensor", "inference",
         {"stat_t": health, "val_tpl": "{{ value_json.mode }}", "ic": "mdi:cloud-outline"}),
        ("latency", "sensor", "latency",
         {"stat_t": health, "val_tpl": latency, "unit_of_meas": "ms", "dev_cla": "duration",
          "stat_cla": "measurement"}),
        ("outbox_depth", "sensor", "outbox depth",
         {"stat_t": health, "val_tpl": "{{ value_json.outbox.depth }}", "stat_cla": "measurement",
          "ent_cat": "diagnostic"}),
    ]  # fmt: skip
    if commands:
        entities.append(
            ("mode", "select", "inference mode",
             {"cmd_t": f"{base}/mode/set", "stat_t": f"{base}/mode/state", "ops": list(modes)})
        )  # fmt: skip
    return entities


class _Publisher(Protocol):
    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...

    def on_connected(self, hook: Callable[[], object]) -> None: ...


class Discovery:
    """Publishes the device's discovery message on every connect and on Home Assistant's birth message."""

    def __init__(
        self,
        settings: Settings,
        *,
        publisher: _Publisher,
        inbox: Inbox,
        classes: Sequence[str],
        modes: Sequence[str],
        commands: bool,
        snapshots: bool,
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._inbox = inbox
        self._classes = list(classes)
        self._modes = list(modes)
        self._commands = commands
        self._snapshots = snapshots
        self._path = settings.state_dir / STATE_FILE
        self.topic = discovery_topic(settings)
        self.sent = 0  # discovery messages handed to the publisher

    def start(self) -> None:
        self._publisher.subscribe(f"{self._settings.home_assistant.prefix}/status", self._birth)
        self._publisher.on_connected(lambda: self._inbox.post(self.publish))

    def _birth(self, topic: str, payload: bytes, retained: bool) -> None:
        """On paho's thread: Home Assistant (re)started; its birth message asks for discovery again."""
        if payload.strip().lower() == ONLINE:
            self._inbox.post(self.publish)

    def config(self, gone: Mapping[str, str] | None = None) -> dict[str, Any]:
        return device_config(
            self._settings,
            classes=self._classes,
            modes=self._modes,
            commands=self._commands,
            snapshots=self._snapshots,
            gone=gone,
        )

    def publish(self) -> None:
        """The discovery message, retained; components published before and gone now are deleted."""
        known = load_json(self._path).get("components")
        before = {str(k): str(v) for k, v in known.items()} if isinstance(known, dict) else {}
        current = self.config()
        doc = self.config(gone={cid: p for cid, p in before.items() if cid not in current["cmps"]})
        gone = len(doc["cmps"]) - len(current["cmps"])
        components = {cid: c["p"] for cid, c in doc["cmps"].items()}
        if components != before:
            try:
                save_json_atomic(self._path, {"components": components})
            except OSError as exc:
                log.warning("can't keep the published entities in %s: %s", self._path, exc)
        self._publisher.publish_retained(self.topic, json.dumps(doc, separators=(",", ":")).encode())
        self.sent += 1
        if gone:
            log.info("Home Assistant: %d entities no longer configured are deleted", gone)
        log.debug("Home Assistant discovery sent to %s (%d components)", self.topic, len(doc["cmps"]))


def withdraw_when_connected(settings: Settings, publisher: _Publisher, inbox: Inbox) -> bool:
    """Discovery turned off after it was on (``{state_dir}/homeassistant.json`` is left): once connected,
    clear the retained discovery message (Home Assistant then deletes the device) and forget it. False if
    there is nothing to withdraw."""
    path = settings.state_dir / STATE_FILE
    if not path.exists():
        return False
    topic = discovery_topic(settings)

    def withdraw() -> None:
        if not path.exists():
            return
        publisher.publish_retained(topic, b"")
        path.unlink(missing_ok=True)
        log.info("Home Assistant discovery is off: the device announced on %s is withdrawn", topic)

    publisher.on_connected(lambda: inbox.post(withdraw))
    return True
