"""The settings of the parts that serve the people who run the agent: snapshots, Prometheus metrics, Home
Assistant discovery and MQTT commands. Each section is a frozen dataclass whose field defaults are the
defaults, read by its ``read_*`` function through a :class:`agent.config_reader.Reader`; :mod:`agent.config`
puts them into ``Settings`` (and re-exports the classes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.config_reader import ConfigError, Reader

__all__ = [
    "CommandsSettings",
    "HomeAssistantSettings",
    "MetricsSettings",
    "SnapshotSettings",
    "read_commands",
    "read_home_assistant",
    "read_metrics",
    "read_snapshots",
]


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    enabled: bool = False  # an annotated JPEG per camera, retained on {topic_base}/{camera}/snapshot
    height: int = 480  # pixels (the width keeps the frame's aspect); 0 = the frame's own height
    quality: int = 80  # JPEG quality to start from (lowered, then the height, until the image fits)
    max_bytes: int = 250_000  # larger images are skipped (and counted)
    interval_s: float = 10.0  # at most one per camera this often


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    enabled: bool = False  # Prometheus text exposition at http://{host}:{port}/metrics
    port: int = 9108
    host: str = "127.0.0.1"  # loopback by default: set 0.0.0.0 (or an address) to let a remote Prometheus in


@dataclass(frozen=True, slots=True)
class HomeAssistantSettings:
    discovery: bool = False  # retained MQTT discovery of one device per agent (agent.homeassistant)
    prefix: str = "homeassistant"  # Home Assistant's discovery prefix; its birth topic is {prefix}/status
    classes: tuple[str, ...] = ()  # count sensors per camera for these classes (empty: the local model's)


@dataclass(frozen=True, slots=True)
class CommandsSettings:
    enabled: bool = False  # detect/mode/fps .../set topics (agent.commands); security rests on the broker's ACL


def read_snapshots(r: Reader) -> SnapshotSettings:
    settings = SnapshotSettings(
        enabled=r.flag("enabled"),
        height=r.int_in("height", 0, 4320),
        quality=r.int_in("quality", 10, 100),
        max_bytes=r.int_in("max_bytes", 1000, 256 * 1024 * 1024),  # MQTT's own limit is 256 MiB
        interval_s=r.number_in("interval_s", 0.1, 86400.0),
    )
    r.finish()
    return settings


def read_metrics(r: Reader) -> MetricsSettings:
    settings = MetricsSettings(enabled=r.flag("enabled"), port=r.int_in("port", 1, 65535), host=r.text("host"))
    if not settings.host.strip():
        raise ConfigError(r.key("host"), "must not be empty (127.0.0.1: this machine only; 0.0.0.0: every address)")
    r.finish()
    return settings


_DISCOVERY_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


def read_home_assistant(h: Reader) -> HomeAssistantSettings:
    prefix = h.text("prefix")
    if not _DISCOVERY_PREFIX_RE.match(prefix):
        raise ConfigError(h.key("prefix"), "use letters, digits, '_', '-' and '/' between levels (an MQTT topic)")
    classes = tuple(h.list_of_str("classes"))
    for i, name in enumerate(classes):
        if not name or any(c in name for c in "+#/"):
            raise ConfigError(f"{h.key('classes')}[{i}]", "a class name, without '/', '+' or '#' (part of a topic)")
    settings = HomeAssistantSettings(discovery=h.flag("discovery"), prefix=prefix, classes=classes)
    h.finish()
    return settings


def read_commands(c: Reader) -> CommandsSettings:
    settings = CommandsSettings(enabled=c.flag("enabled"))
    c.finish()
    return settings
