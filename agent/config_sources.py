"""A camera's ``source``: a device index, a file, a URL, or ``{command: ...}`` (a program whose standard output
is the stream, :mod:`agent.command_source`), read for :mod:`agent.config` by the same :class:`Reader` rules."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal, get_args

from agent.config_reader import ConfigError, Reader

__all__ = ["CommandFormat", "CommandSettings", "read_command", "read_source"]

_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp")
CommandFormat = Literal["mjpeg", "bgr24"]


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """``source: {command: ...}``: frames read from a program's standard output (agent/command_source.py)."""

    argv: tuple[str, ...]  # run without a shell, unless shell (then ("/bin/sh", "-c", text))
    shell: bool = False
    format: CommandFormat = "mjpeg"  # mjpeg: JPEG images back to back (any bytes between are skipped)


def read_source(c: Reader) -> tuple[str | int, CommandSettings | None]:
    """The camera's ``source`` (a path resolved, a device index as an int) and its command, if it is one."""
    source = c.value("source", required=True)
    command = None
    if isinstance(source, dict):
        command = read_command(c.section("source", CommandSettings))
        source = "command: " + shlex.join(command.argv)
    if isinstance(source, bool) or not isinstance(source, int | str):
        raise ConfigError(c.key("source"), "expected a device index, a file path, a URL or {command: ...}")
    if isinstance(source, str) and command is None:
        source = source.strip()
        if not source:
            raise ConfigError(c.key("source"), "must not be empty")
        if source.isdigit():
            source = int(source)
        elif "://" not in source:
            resolved = c.resolve(source)
            if not resolved.exists():
                raise ConfigError(c.key("source"), f"file not found: {resolved}")
            source = str(resolved)
        elif source.split("://", 1)[0].lower() not in _SCHEMES:
            raise ConfigError(c.key("source"), "URL scheme must be rtsp, http(s), rtmp, udp or tcp")
    if isinstance(source, int) and source < 0:
        raise ConfigError(c.key("source"), "device index must be >= 0")
    return source, command


def read_command(s: Reader) -> CommandSettings:
    """``source: {command: [argv...] | "text", shell: false, format: mjpeg}``."""
    shell = s.flag("shell")
    raw = s.value("command", required=True)
    if isinstance(raw, str):
        if shell:
            argv = ["/bin/sh", "-c", raw]
        else:
            try:
                argv = shlex.split(raw)
            except ValueError as exc:
                raise ConfigError(s.key("command"), f"cannot split into arguments: {exc}") from None
    elif isinstance(raw, list) and all(isinstance(a, str | int | float) and not isinstance(a, bool) for a in raw):
        if shell:
            raise ConfigError(s.key("shell"), "shell: true takes the command as one string")
        argv = [str(a) for a in raw]
    else:
        raise ConfigError(s.key("command"), "expected a list of arguments or a string")
    if not argv or not argv[0].strip():
        raise ConfigError(s.key("command"), "must not be empty")
    fmt = s.choice("format", get_args(CommandFormat))
    s.finish()
    return CommandSettings(argv=tuple(argv), shell=shell, format=fmt)  # type: ignore[arg-type]
