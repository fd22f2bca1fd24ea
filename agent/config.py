"""Settings: ``config.yaml`` plus the environment, validated once into frozen dataclasses.

Every error names the key path (``cameras[0].fps``) and the reason, and is raised as
:class:`ConfigError` so the command line can print it and exit with status 2. Relative paths
resolve against the directory of the configuration file. ``${VAR}`` and ``${VAR:-default}`` in
string values are replaced from the environment; secrets are wrapped in :class:`Secret` so they
never print. Each default is written once, as the dataclass field's default; the parsers below read every
section through an :class:`agent.config_reader.Reader` that fills its dataclass, so a key left out takes
that value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from agent.config_operate import (
    CommandsSettings,
    HomeAssistantSettings,
    MetricsSettings,
    SnapshotSettings,
    read_commands,
    read_home_assistant,
    read_metrics,
    read_snapshots,
)
from agent.config_reader import ConfigError, Reader, Secret, as_plain, expect_mapping, read_yaml
from agent.config_sources import CommandSettings, read_source
from agent.tracking import TrackingSettings
from agent.zones import LineDef, ZoneDef
from agent.zones_config import EventSettings, read_areas, read_events, read_tracking

__all__ = [
    "CameraSettings",
    "CommandSettings",
    "CommandsSettings",
    "ConfigError",
    "HealthSettings",
    "HomeAssistantSettings",
    "InferenceSettings",
    "LocalSettings",
    "MetricsSettings",
    "MqttSettings",
    "OutboxSettings",
    "PolygonSettings",
    "Secret",
    "ServerlessSettings",
    "Settings",
    "SnapshotSettings",
    "TlsSettings",
    "TrackingSettings",
    "load_settings",
    "parse_settings",
    "percent",
    "settings_summary",
]

Mode = Literal["auto", "serverless", "local"]
DropPolicy = Literal["drop_oldest", "drop_newest"]
Synchronous = Literal["off", "normal", "full"]
Spin = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class CameraSettings:
    name: str
    source: str | int  # device index, file path, rtsp:// or http(s):// URL; "command: ..." for a command
    fps: float = 5.0  # frames sampled per second; 0 = every frame, as fast as the pipeline goes
    loop: bool = False  # files only: start again at the end
    realtime: bool = True  # files only: play at the file's own pace (False: every sampled frame, no drops)
    width: int = 0  # USB cameras: requested capture size (0 = driver default)
    height: int = 0
    stall_timeout_s: float = 10.0  # no new frame for this long -> reopen
    open_timeout_s: float = 10.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    zones: tuple[ZoneDef, ...] = ()  # polygons for events and counts (agent/zones_config.py)
    lines: tuple[LineDef, ...] = ()
    command: CommandSettings | None = None  # source: {command: ...}

    @property
    def is_file(self) -> bool:
        return self.command is None and isinstance(self.source, str) and "://" not in self.source


@dataclass(frozen=True, slots=True)
class ServerlessSettings:
    api_url: str = "https://serverless.roboflow.com"
    model_id: str = ""  # "project/version"
    api_key: Secret = field(default_factory=lambda: Secret(""))
    connect_timeout_s: float = 3.0
    timeout_s: float = 5.0  # read timeout
    max_in_flight: int = 2  # concurrent requests per camera
    upload_max_side: int = 0  # downscale before upload so the long side is at most this (0 = as captured)
    jpeg_quality: int = 85
    probe_interval_s: float = 10.0  # first probe after falling back; doubles up to probe_max_s
    probe_max_s: float = 120.0
    max_calls_per_minute: int = 0  # per camera; 0 = no cap
    max_calls_per_day: int = 0  # per camera; 0 = no cap
    change_gate: float = 0.0  # skip frames whose mean abs difference (0-255) to the last sent is below this


@dataclass(frozen=True, slots=True)
class PolygonSettings:
    """``inference.local.polygons``: what local results write of each mask besides ``points``."""

    rings: bool = False  # a "rings" field per prediction: every part and hole of the mask (opt-in)
    tolerance_px: float = 0.0  # Douglas-Peucker simplification of every polygon, in pixels; 0 = exact contour


@dataclass(frozen=True, slots=True)
class LocalSettings:
    model: Path | None = None
    classes: Path | None = None  # optional classes.txt (one name per line)
    threads: int = 0  # ONNX Runtime intra-op threads per session; 0 = one per physical core
    # Sessions running frames side by side (frames in flight per camera); "auto" (the default): decided at
    # start from the cores, the cameras' fps and the model's measured run (agent.session_plan, README: Speed)
    sessions: int | Literal["auto"] = "auto"
    providers: tuple[str, ...] = ("cpu",)
    class_map: Mapping[str, str] = field(default_factory=dict)  # local name -> hosted name
    model_id: str = ""  # what local results say in model_id; "" = the model file's name without suffix
    polygons: PolygonSettings = field(default_factory=PolygonSettings)
    # Frames under way at once (0 = sessions): more than the sessions lets frames' CPU work (decode,
    # letterbox, masks, polygons, JSON) go on beside a session's run, for accelerators (GPU, NPU, TensorRT).
    frames_in_flight: int = 0
    # ONNX Runtime's pool threads spin (busy-wait) for work: auto | on | off (agent.runtime.spins, README: Speed)
    spin: Spin = "auto"
    # While the pool spins: microseconds a waiting thread spins before it sleeps; 0 = ONNX Runtime's default
    # (session.intra_op.spin_duration_us; README: Speed, thread spinning)
    spin_us: int = 0

    @property
    def local_runs(self) -> int:
        """Frames the local model may have under way at once: ``frames_in_flight``, at least ``sessions``
        (``auto`` counts as 1 until the pipeline has resolved it, :func:`agent.pipeline.build`)."""
        return max(1 if self.sessions == "auto" else self.sessions, self.frames_in_flight)


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    mode: Mode = "auto"
    confidence: float = 40.0  # 0-100; a value below 1 is read as a fraction (see percent())
    overlap: float = 30.0  # 0-100, the same rule
    max_detections: int = 300
    serverless: ServerlessSettings = field(default_factory=ServerlessSettings)
    local: LocalSettings = field(default_factory=LocalSettings)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_certs: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    insecure: bool = False  # skip hostname verification (testing only)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "seg-agent"
    qos: int = 1
    client_id: str = ""  # default: seg-agent-{device_id}
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_in_flight: int = 100  # messages handed to the client and not yet acknowledged
    tls: TlsSettings | None = None


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    max_messages: int = 100_000
    max_age_s: float = 7 * 24 * 3600.0  # older results are dropped (0 = keep forever)
    drop_policy: DropPolicy = "drop_oldest"
    commit_interval_s: float = 0.5  # batch commits: at most this much may be lost on power loss
    synchronous: Synchronous = "normal"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    device_id: str
    cameras: tuple[CameraSettings, ...]
    inference: InferenceSettings
    mqtt: MqttSettings
    state_dir: Path
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    events: EventSettings = field(default_factory=EventSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    log_level: str = "info"
    config_path: Path | None = None
    snapshots: SnapshotSettings = field(default_factory=SnapshotSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    home_assistant: HomeAssistantSettings = field(default_factory=HomeAssistantSettings)
    commands: CommandsSettings = field(default_factory=CommandsSettings)

    @property
    def topic_base(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.device_id}"

    @property
    def model_id(self) -> str:
        """The model whose results this agent publishes by default: the hosted model, or the local one when
        the hosted API isn't used. Each message names the model that made it (:attr:`local_model_id`,
        ``inference.serverless.model_id``)."""
        if self.inference.mode == "local" or not self.inference.serverless.model_id:
            return self.local_model_id
        return self.inference.serverless.model_id

    @property
    def local_model_id(self) -> str:
        """What local results say in ``model_id``: ``inference.local.model_id``, else the model file's name
        without its suffix (a Roboflow package: its folder's name)."""
        local = self.inference.local
        if local.model_id:
            return local.model_id
        return local.model.stem if local.model else ""


# --------------------------------------------------------------------------- loading
# Each section's reader fills its dataclass: a key left out takes the field's default written above.

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino", "coreml", "dml", "rocm", "xnnpack", "acl", "armnn")
_TLS_PORT = 8883  # mqtt.port's default when mqtt.tls is set


def load_settings(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read, substitute and validate a configuration file."""
    config_path = Path(path)
    raw = read_yaml(config_path)
    return parse_settings(raw, base_dir=config_path.resolve().parent, env=env, config_path=config_path)


def parse_settings(
    raw: object,
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Validate an already-parsed YAML document."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    doc = Reader(expect_mapping(raw, ""), "", env, base_dir, Settings)

    device_id = doc.text("device_id", required=True)
    if not _NAME_RE.match(device_id):
        raise ConfigError("device_id", "use letters, digits, '.', '_' or '-' only (it is part of MQTT topics)")

    cameras = tuple(_camera(c) for c in doc.list_of_mappings("cameras", CameraSettings, required=True, min_len=1))
    names = [c.name for c in cameras]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"cameras[{i}].name", f"duplicate camera name {name!r}")

    inference = _inference(doc.section("inference", InferenceSettings))
    mqtt = _mqtt(doc.section("mqtt", MqttSettings), device_id)
    state_dir = doc.path("state_dir", required=True)
    outbox = _outbox(doc.section("outbox", OutboxSettings))
    health = HealthSettings(interval_s=doc.section("health", HealthSettings).number_in("interval_s", 1.0, 86400.0))
    events = read_events(doc.section("events", EventSettings))
    log_level = doc.choice("log_level", _LOG_LEVELS)
    snapshots = read_snapshots(doc.section("snapshots", SnapshotSettings))
    metrics = read_metrics(doc.section("metrics", MetricsSettings))
    home_assistant = read_home_assistant(doc.section("home_assistant", HomeAssistantSettings))
    commands = read_commands(doc.section("commands", CommandsSettings))
    tracking = read_tracking(doc.section("tracking", TrackingSettings))
    doc.finish()
    if events.enabled and not tracking.enabled:
        raise ConfigError("events.enabled", "needs tracking.enabled: true (events follow tracked objects)")
    for i, cam in enumerate(cameras):
        if (cam.zones or cam.lines) and not events.enabled:
            raise ConfigError(f"cameras[{i}].{'zones' if cam.zones else 'lines'}", "needs events.enabled: true")
    assert state_dir is not None
    return Settings(
        device_id=device_id,
        cameras=cameras,
        inference=inference,
        mqtt=mqtt,
        state_dir=state_dir,
        outbox=outbox,
        health=health,
        events=events,
        log_level=log_level,
        config_path=config_path,
        snapshots=snapshots,
        metrics=metrics,
        home_assistant=home_assistant,
        commands=commands,
        tracking=tracking,
    )


def _camera(c: Reader) -> CameraSettings:
    name = c.text("name", required=True)
    if not _NAME_RE.match(name):
        raise ConfigError(c.key("name"), "use letters, digits, '.', '_' or '-' only")
    source, command = read_source(c)
    rmin = c.number_in("reconnect_min_s", 0.05, 3600.0)
    rmax = c.number_in("reconnect_max_s", 0.05, 86400.0)
    if rmax < rmin:
        raise ConfigError(c.key("reconnect_max_s"), "must be >= reconnect_min_s")
    zones, lines = read_areas(c)
    settings = CameraSettings(
        name=name,
        source=source,
        fps=c.number_in("fps", 0.0, 240.0),
        loop=c.flag("loop"),
        realtime=c.flag("realtime"),
        width=c.int_in("width", 0, 16384),
        height=c.int_in("height", 0, 16384),
        stall_timeout_s=c.number_in("stall_timeout_s", 0.5, 3600.0),
        open_timeout_s=c.number_in("open_timeout_s", 0.5, 600.0),
        reconnect_min_s=rmin,
        reconnect_max_s=rmax,
        zones=zones,
        lines=lines,
        command=command,
    )
    c.finish()
    if command is not None and command.format == "bgr24" and not (settings.width and settings.height):
        raise ConfigError(c.key("width"), "format bgr24 needs the frame size: set width and height")
    return settings


def percent(value: float) -> float:
    """A threshold on the API's 0-100 scale, by Roboflow's server's own rule: a value below 1 is a fraction
    (``0.5`` means 50 %), so a threshold means the same on the hosted and the local side."""
    return value * 100.0 if 0.0 < value < 1.0 else value


def _inference(s: Reader) -> InferenceSettings:
    settings = InferenceSettings(
        mode=s.choice("mode", get_args(Mode)),  # type: ignore[arg-type]
        confidence=percent(s.number_in("confidence", 0.0, 100.0)),
        overlap=percent(s.number_in("overlap", 0.0, 100.0)),
        max_detections=s.int_in("max_detections", 1, 10000),
        serverless=_serverless(s.section("serverless", ServerlessSettings)),
        local=_local(s.section("local", LocalSettings)),
    )
    s.finish()

    mode = settings.mode
    if mode in ("auto", "local") and settings.local.model is None:
        raise ConfigError(s.key("local.model"), f"required in mode {mode!r} (the local ONNX model)")
    if mode in ("auto", "serverless"):
        if not settings.serverless.model_id:
            raise ConfigError(s.key("serverless.model_id"), f"required in mode {mode!r}")
        if not settings.serverless.api_key:
            unset = s.section("serverless").unset_env("api_key")
            raise ConfigError(
                s.key("serverless.api_key"),
                f"required in mode {mode!r}{unset}; use mode: local to run without the hosted API",
            )
    return settings


def _serverless(r: Reader) -> ServerlessSettings:
    api_key = r.secret("api_key")
    model_id = r.text("model_id")
    if model_id and not re.match(r"^[A-Za-z0-9_.-]+/[0-9]+$", model_id):
        raise ConfigError(r.key("model_id"), "expected 'project/version', for example 'your-model/42'")
    api_url = r.text("api_url").rstrip("/")
    if not re.match(r"^https?://[^/\s]+", api_url):
        raise ConfigError(r.key("api_url"), "expected an http:// or https:// URL")
    probe = r.number_in("probe_interval_s", 0.1, 3600.0)
    settings = ServerlessSettings(
        api_url=api_url,
        model_id=model_id,
        api_key=api_key,
        connect_timeout_s=r.number_in("connect_timeout_s", 0.1, 120.0),
        timeout_s=r.number_in("timeout_s", 0.1, 300.0),
        max_in_flight=r.int_in("max_in_flight", 1, 64),
        upload_max_side=r.int_in("upload_max_side", 0, 16384),
        jpeg_quality=r.int_in("jpeg_quality", 10, 100),
        probe_interval_s=probe,
        probe_max_s=max(probe, r.number_in("probe_max_s", 0.1, 86400.0)),
        max_calls_per_minute=r.int_in("max_calls_per_minute", 0, 10**6),
        max_calls_per_day=r.int_in("max_calls_per_day", 0, 10**9),
        change_gate=r.number_in("change_gate", 0.0, 255.0),
    )
    r.finish()
    return settings


def _local(lo: Reader) -> LocalSettings:
    model = lo.path("model")
    if model is not None and not (model.is_file() or model.is_dir()):  # a .onnx file or a Roboflow package
        raise ConfigError(lo.key("model"), f"model file not found: {model}")
    if model is not None and not os.access(model, os.R_OK):
        raise ConfigError(lo.key("model"), f"model file not readable: {model}")
    classes = lo.path("classes")
    if classes is not None and not classes.is_file():
        raise ConfigError(lo.key("classes"), f"file not found: {classes}")
    providers = tuple(lo.list_of_str("providers"))
    for i, p in enumerate(providers):
        if p.lower() not in _PROVIDERS:
            raise ConfigError(f"{lo.key('providers')}[{i}]", f"unknown provider {p!r}; one of {', '.join(_PROVIDERS)}")
    class_map = lo.str_mapping("class_map")
    settings = LocalSettings(
        model=model,
        classes=classes,
        threads=lo.int_in("threads", 0, 256),
        sessions=lo.int_or_word("sessions", "auto", 1, 16),  # type: ignore[arg-type]  # auto: session_plan
        providers=tuple(p.lower() for p in providers),
        class_map=class_map,
        model_id=lo.text("model_id"),
        polygons=_polygons(lo.section("polygons", PolygonSettings)),
        frames_in_flight=lo.int_in("frames_in_flight", 0, 64),
        spin=lo.choice("spin", get_args(Spin)),  # type: ignore[arg-type]
        spin_us=lo.int_in("spin_us", 0, 1_000_000),
    )
    lo.finish()
    return settings


def _polygons(pg: Reader) -> PolygonSettings:
    settings = PolygonSettings(rings=pg.flag("rings"), tolerance_px=pg.number_in("tolerance_px", 0.0, 1000.0))
    pg.finish()
    return settings


def _mqtt(m: Reader, device_id: str) -> MqttSettings:
    host = m.text("host")
    topic_prefix = m.text("topic_prefix").strip("/")
    if not topic_prefix or any(ch in topic_prefix for ch in "#+\0"):
        raise ConfigError(m.key("topic_prefix"), "must be non-empty and contain no '#', '+' or NUL")
    tls = _tls(m.section("tls", TlsSettings)) if m.has("tls") else None
    rmin = m.number_in("reconnect_min_s", 0.05, 3600.0)
    settings = MqttSettings(
        host=host,
        port=m.int_in("port", 1, 65535, default=_TLS_PORT if tls else None),
        topic_prefix=topic_prefix,
        qos=m.int_in("qos", 0, 2),
        client_id=m.text("client_id") or f"seg-agent-{device_id}",
        username=m.text("username"),
        password=m.secret("password"),
        keepalive_s=m.int_in("keepalive_s", 5, 3600),
        reconnect_min_s=rmin,
        reconnect_max_s=max(rmin, m.number_in("reconnect_max_s", 0.05, 86400.0)),
        max_in_flight=m.int_in("max_in_flight", 1, 65535),
        tls=tls,
    )
    m.finish()
    return settings


def _tls(t: Reader) -> TlsSettings:
    paths = {}
    for key in ("ca_certs", "certfile", "keyfile"):
        p = t.path(key)
        if p is not None and not p.is_file():
            raise ConfigError(t.key(key), f"file not found: {p}")
        paths[key] = p
    if (paths["certfile"] is None) != (paths["keyfile"] is None):
        raise ConfigError(t.key("certfile"), "certfile and keyfile go together")
    settings = TlsSettings(insecure=t.flag("insecure"), **paths)
    t.finish()
    return settings


def _outbox(o: Reader) -> OutboxSettings:
    settings = OutboxSettings(
        max_messages=o.int_in("max_messages", 1, 10**9),
        max_age_s=o.number_in("max_age_s", 0.0, 10**9),
        drop_policy=o.choice("drop_policy", get_args(DropPolicy)),  # type: ignore[arg-type]
        commit_interval_s=o.number_in("commit_interval_s", 0.0, 60.0),
        synchronous=o.choice("synchronous", get_args(Synchronous)),  # type: ignore[arg-type]
    )
    o.finish()
    return settings


# --------------------------------------------------------------------------- printing


def settings_summary(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked (for ``check-config`` and the log)."""
    result: dict[str, Any] = as_plain(settings)
    return result
