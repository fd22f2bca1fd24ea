"""Remote control over MQTT: detection on/off and the sampling rate per camera, the inference mode.

Only these topics (``{base}`` = ``{topic_prefix}/{device_id}``), each answered by the new state, retained, on
the same path ending in ``state`` instead of ``set``:

``{base}/{camera}/detect/set``  ``ON`` / ``OFF``
``{base}/{camera}/fps/set``     a number, 0 to 240 as ``cameras[].fps`` (0: every frame)
``{base}/mode/set``             ``auto`` / ``serverless`` / ``local`` (those whose parts were loaded at start)

A **retained** command is ignored (and counted): a stale retained ``OFF`` left on the broker must not switch
a camera off at every restart. An empty message (what clearing a retained one sends) is ignored too. A
payload that is not valid is rejected, counted on the health topic and logged; nothing changes. An accepted
change is kept in ``{state_dir}/runtime.json`` (written atomically) and applied again at the next start,
before the cameras open (it wins over config.yaml until set back); the health topic lists what is in effect.

This module validates and calls named methods of the stages (:meth:`CameraWorker.set_detect`,
:meth:`Camera.set_fps`, :meth:`Router.set_mode`); paho's thread only posts the message to the
:class:`agent.inbox.Inbox`. Who may send commands is the broker's business (users, TLS, the ACL template in
``systemd/mosquitto.acl``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.config import Settings
from agent.inbox import Inbox
from agent.logs import Throttle
from agent.mqtt_session import Handler
from agent.pipeline import frames_under_way
from agent.state_files import load_json as _load_json
from agent.state_files import save_json_atomic
from agent.worker import CameraWorker

__all__ = [
    "FPS_MAX",
    "RUNTIME_FILE",
    "Command",
    "Commands",
    "Rejected",
    "load_json",
    "parse_command",
    "save_json_atomic",
]

log = logging.getLogger("agent.commands")

RUNTIME_FILE = "runtime.json"
FPS_MAX = 240.0  # as cameras[].fps
_MAX_PAYLOAD = 32  # bytes: every valid payload is far shorter
_MODES = ("auto", "serverless", "local")


class Rejected(ValueError):
    """A command that is not valid; the message says why."""


@dataclass(frozen=True, slots=True)
class Command:
    kind: Literal["detect", "fps", "mode"]
    camera: str | None  # None for the mode
    value: bool | float | str


def parse_command(base: str, topic: str, payload: bytes, *, cameras: Sequence[str], modes: Sequence[str]) -> Command:
    """The command on ``topic`` with ``payload``; :class:`Rejected` if either is not valid."""
    if not topic.startswith(base + "/"):
        raise Rejected(f"not a command topic: {topic}")
    parts = topic[len(base) + 1 :].split("/")
    if len(payload) > _MAX_PAYLOAD:
        raise Rejected(f"payload of {len(payload)} bytes (at most {_MAX_PAYLOAD})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Rejected("payload is not UTF-8 text") from None
    if parts == ["mode", "set"]:
        mode = text.lower()
        if mode not in _MODES:
            raise Rejected(f"mode {text!r}: expected auto, serverless or local")
        if mode not in modes:
            raise Rejected(f"mode {mode!r} needs parts this agent did not load (it offers {', '.join(modes)})")
        return Command("mode", None, mode)
    if len(parts) != 3 or parts[2] != "set" or parts[1] not in ("detect", "fps"):
        raise Rejected(f"not a command topic: {topic}")
    camera, kind = parts[0], parts[1]
    if camera not in cameras:
        raise Rejected(f"no camera named {camera!r}")
    if kind == "detect":
        if text.upper() not in ("ON", "OFF"):
            raise Rejected(f"detect {text!r}: expected ON or OFF")
        return Command("detect", camera, text.upper() == "ON")
    try:
        fps = float(text)
    except ValueError:
        raise Rejected(f"fps {text!r}: expected a number") from None
    if not math.isfinite(fps) or not 0.0 <= fps <= FPS_MAX:
        raise Rejected(f"fps {text!r}: expected 0 to {FPS_MAX:g} (0: every frame)")
    return Command("fps", camera, fps)


def load_json(path: Path) -> dict[str, Any]:
    """``state_dir/runtime.json`` (or any state file) as :func:`agent.state_files.load_json` reads it."""
    return _load_json(path, log, "starting from config.yaml's values")


class _Publisher(Protocol):
    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...

    def on_connected(self, hook: Callable[[], object]) -> None: ...


class _Router(Protocol):
    @property
    def configured_mode(self) -> str: ...

    def modes(self) -> tuple[str, ...]: ...

    def set_mode(self, mode: str) -> None: ...


class Commands:
    """Receives, validates and applies commands; keeps the runtime changes and echoes the state."""

    def __init__(
        self,
        settings: Settings,
        *,
        workers: Sequence[CameraWorker],
        router: _Router,
        publisher: _Publisher,
        inbox: Inbox,
    ) -> None:
        self._base = settings.topic_base
        self._path = settings.state_dir / RUNTIME_FILE
        self._workers = {w.name: w for w in workers}
        self._settings = settings
        self._cameras = {c.name: c for c in settings.cameras}
        self._config_fps = {c.name: c.fps for c in settings.cameras}
        self._config_mode = settings.inference.mode
        self._router = router
        self._publisher = publisher
        self._inbox = inbox
        self._warn = Throttle(log)
        self._lock = threading.Lock()  # the counters and the overrides (the health thread reads them)
        self._accepted = 0
        self._rejected = 0
        self._ignored_retained = 0
        self._last_rejected: dict[str, str] | None = None
        self._overrides: dict[str, Any] = {"cameras": {}}  # what differs from config.yaml

    # ------------------------------------------------------------------ life cycle

    def restore(self) -> None:
        """Apply the changes kept from earlier runs (before the cameras start); drop those no longer valid."""
        doc = load_json(self._path)
        kept: list[str] = []
        commands: list[Command] = []
        if isinstance(doc.get("mode"), str):
            commands.append(Command("mode", None, doc["mode"]))
        cams = doc.get("cameras")
        for name, values in (cams if isinstance(cams, dict) else {}).items():
            if name in self._workers and isinstance(values, dict):
                if isinstance(values.get("detect"), bool):
                    commands.append(Command("detect", name, values["detect"]))
                fps = values.get("fps")
                if isinstance(fps, int | float) and not isinstance(fps, bool) and 0 <= fps <= FPS_MAX:
                    commands.append(Command("fps", name, float(fps)))
        for cmd in commands:
            try:
                self._apply(cmd)
            except ValueError as exc:
                log.warning("kept runtime change %s not applied: %s", _describe(cmd), exc)
                continue
            kept.append(_describe(cmd))
        if kept:
            log.info("runtime changes from earlier commands applied again: %s", ", ".join(kept))
        if doc and self._overrides_doc() != doc:
            self._persist()

    def start(self) -> None:
        """Subscribe (again on every connect: the publisher does that); commands are applied on the inbox's
        thread, and every state is echoed after each connect."""
        for suffix in ("+/detect/set", "+/fps/set", "mode/set"):
            self._publisher.subscribe(f"{self._base}/{suffix}", self._received)
        self._publisher.on_connected(lambda: self._inbox.post(self.echo_all))

    def echo_all(self) -> None:
        """Every state topic, retained (after each connect: a broker without persistence forgets them)."""
        self._echo_mode()
        for name in self._workers:
            self._echo_detect(name)
            self._echo_fps(name)

    # ------------------------------------------------------------------ messages

    def _received(self, topic: str, payload: bytes, retained: bool) -> None:
        """On paho's thread: only count or hand on."""
        if not payload:  # how a retained message is cleared: what reaches live subscribers, not a command
            log.debug("empty message on %s ignored", topic)
            return
        if retained:
            with self._lock:
                self._ignored_retained += 1
            self._warn.log(
                logging.WARNING,
                f"retained {topic}",
                "ignoring a retained command on %s (commands must not be retained; clear it with an empty "
                "retained message)",
                topic,
            )
            return
        if not self._inbox.post(lambda: self.handle(topic, payload)):
            self._reject(topic, "too many commands at once")

    def handle(self, topic: str, payload: bytes) -> bool:
        """Validate and apply one command; True if applied."""
        try:
            cmd = parse_command(self._base, topic, payload, cameras=list(self._workers), modes=self._router.modes())
            self._apply(cmd)
        except ValueError as exc:
            self._reject(topic, str(exc))
            return False
        with self._lock:
            self._accepted += 1
        log.info("command on %s: %s", topic, _describe(cmd))
        self._persist()
        if cmd.kind == "mode":
            self._echo_mode()
        elif cmd.kind == "detect" and cmd.camera is not None:
            self._echo_detect(cmd.camera)
        elif cmd.camera is not None:
            self._echo_fps(cmd.camera)
        return True

    def _reject(self, topic: str, reason: str) -> None:
        with self._lock:
            self._rejected += 1
            self._last_rejected = {"topic": topic, "reason": reason}
        self._warn.log(logging.WARNING, f"rejected {topic}", "command on %s rejected: %s", topic, reason)

    def _apply(self, cmd: Command) -> None:
        """Call the stage's method and note the override (ValueError if the stage refuses)."""
        if cmd.kind == "mode":
            mode = str(cmd.value)
            self._router.set_mode(mode)
            for name, worker in self._workers.items():  # a local run never queues behind a hosted-sized bound
                worker.set_in_flight(frames_under_way(self._settings, self._cameras[name], mode))
            with self._lock:
                if mode == self._config_mode:
                    self._overrides.pop("mode", None)
                else:
                    self._overrides["mode"] = mode
            return
        assert cmd.camera is not None
        worker = self._workers[cmd.camera]
        if cmd.kind == "detect":
            worker.set_detect(bool(cmd.value))
            self._note(cmd.camera, "detect", bool(cmd.value), True)
        else:
            worker.camera.set_fps(float(cmd.value))
            self._note(cmd.camera, "fps", float(cmd.value), self._config_fps[cmd.camera])

    def _note(self, camera: str, key: str, value: object, configured: object) -> None:
        with self._lock:
            cams: dict[str, dict[str, Any]] = self._overrides["cameras"]
            entry = cams.setdefault(camera, {})
            if value == configured:
                entry.pop(key, None)
            else:
                entry[key] = value
            if not entry:
                cams.pop(camera)

    def _overrides_doc(self) -> dict[str, Any]:
        with self._lock:
            doc = {k: v for k, v in self._overrides.items() if k != "cameras"}
            doc["cameras"] = {n: dict(v) for n, v in self._overrides["cameras"].items()}
            return doc

    def _persist(self) -> None:
        try:
            save_json_atomic(self._path, self._overrides_doc())
        except OSError as exc:
            self._warn.log(logging.ERROR, "persist", "runtime change not kept in %s: %s", self._path, exc)

    # ------------------------------------------------------------------ state topics

    def _echo(self, topic: str, payload: str) -> None:
        self._publisher.publish_retained(topic, payload.encode())

    def _echo_mode(self) -> None:
        self._echo(f"{self._base}/mode/state", self._router.configured_mode)

    def _echo_detect(self, name: str) -> None:
        self._echo(f"{self._base}/{name}/detect/state", "ON" if self._workers[name].detecting else "OFF")

    def _echo_fps(self, name: str) -> None:
        self._echo(f"{self._base}/{name}/fps/state", f"{self._workers[name].camera.fps():g}")

    def stats(self) -> dict[str, Any]:
        """For the health topic: counts, the last rejection, the runtime changes in effect."""
        runtime = self._overrides_doc()
        with self._lock:
            return {
                "accepted": self._accepted,
                "rejected": self._rejected,
                "ignored_retained": self._ignored_retained,
                "last_rejected": self._last_rejected,
                "runtime": runtime,
            }


def _describe(cmd: Command) -> str:
    if cmd.kind == "mode":
        return f"mode {cmd.value}"
    if cmd.kind == "detect":
        return f"camera {cmd.camera} detection {'on' if cmd.value else 'off'}"
    return f"camera {cmd.camera} at {cmd.value:g} fps"
