"""Reading a YAML configuration key by key, for :mod:`agent.config`.

:func:`read_yaml` turns a file into a document; a :class:`Reader` walks one mapping of it with typed getters
(numbers and integers in a range, flags, choices, paths, lists), replaces ``${VAR}`` and ``${VAR:-default}``
in string values from the environment, resolves relative paths against the configuration's directory, and
remembers which keys it read so that :meth:`Reader.finish` can call a leftover key unknown. A section that
fills a settings dataclass takes the value of a key left out from that dataclass's field of the same name,
so every default is written once, in the dataclass. Every problem is a :class:`ConfigError` naming the key
path (``cameras[0].fps``) and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["ConfigError", "Reader", "Secret", "as_plain", "expect_mapping", "read_yaml"]

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MISSING = object()


class ConfigError(Exception):
    """A configuration that can't be used; ``str()`` is ``"key.path: reason"``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_yaml(path: Path) -> object:
    """The YAML document in ``path``; a file that can't be read or parsed is a :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    try:
        _reject_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), "")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{path}: {problem}{where}") from None


def _reject_duplicate_keys(node: yaml.Node | None, path: str, seen: set[int] | None = None) -> None:
    """A key given twice in one mapping is an error at its path (YAML itself would keep the last silently)."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias is checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise ConfigError(where, f"duplicate key (lines {first_line[key]} and {line}); give it once")
                first_line[key] = line
            _reject_duplicate_keys(value_node, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _reject_duplicate_keys(item, f"{path}[{i}]", seen)


def expect_mapping(value: object, path: str) -> dict[str, Any]:
    """``value`` as a mapping with string keys, or a :class:`ConfigError` at ``path``."""
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected a mapping, got {_type_name(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(path, f"keys must be strings, got {k!r}")
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _field_defaults(fills: type[DataclassInstance] | None) -> dict[str, Any]:
    if fills is None:
        return {}
    defaults: dict[str, Any] = {}
    for f in fields(fills):
        if f.default is not MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


class Reader:
    """Reads keys from one mapping, remembering which were used, so leftovers are errors.

    ``fills``: the settings dataclass this mapping becomes; a getter called without ``default`` returns its
    field's default for a key left out.
    """

    def __init__(
        self,
        data: dict[str, Any],
        path: str,
        env: Mapping[str, str],
        base_dir: Path,
        fills: type[DataclassInstance] | None = None,
    ) -> None:
        self._data = data
        self._path = path
        self._env = env
        self._base_dir = base_dir
        self._defaults = _field_defaults(fills)
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def has(self, name: str) -> bool:
        return name in self._data

    def resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self._base_dir / path).resolve()

    def _default(self, name: str, given: Any) -> Any:
        if given is not None:
            return given
        try:
            return self._defaults[name]
        except KeyError:
            raise KeyError(f"no default for {self.key(name)}: pass one or the dataclass the section fills") from None

    def value(self, name: str, *, required: bool = False) -> Any:
        self._used.add(name)
        if name not in self._data or self._data[name] is None:
            if required:
                raise ConfigError(self.key(name), "required key is missing")
            return _MISSING
        value = self._data[name]
        return self._substitute(value) if isinstance(value, str) else value

    def _substitute(self, value: str) -> str:
        def repl(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in self._env:
                return self._env[var]
            return default if default is not None else ""

        return _ENV_RE.sub(repl, value)

    def text(self, name: str, *, default: str | None = None, required: bool = False) -> str:
        value = self.value(name, required=required)
        if value is _MISSING:
            result: str = self._default(name, default)
            return result
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(self.key(name), f"expected a string, got {_type_name(value)}")
        text = str(value)
        if required and not text.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return text

    def secret(self, name: str) -> Secret:
        return Secret(self.text(name, default=""))

    def unset_env(self, name: str) -> str:
        """Names the environment variables a key refers to that are not set (for error messages)."""
        raw = self._data.get(name)
        if not isinstance(raw, str):
            return ""
        missing = [m.group(1) for m in _ENV_RE.finditer(raw) if m.group(1) not in self._env]
        return f" (environment variable {', '.join(missing)} is not set)" if missing else ""

    def flag(self, name: str, default: bool | None = None) -> bool:
        value = self.value(name)
        if value is _MISSING:
            result: bool = self._default(name, default)
            return result
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_type_name(value)} {value!r}")
        return value

    def number_in(self, name: str, lo: float, hi: float, *, default: float | None = None) -> float:
        value = self.value(name)
        if value is _MISSING:
            return float(self._default(name, default))
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(self.key(name), f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"expected a number, got {_type_name(value)}")
        if not lo <= value <= hi:
            raise ConfigError(self.key(name), f"{value} is out of range [{lo:g}, {hi:g}]")
        return float(value)

    def int_in(self, name: str, lo: int, hi: int, *, default: int | None = None) -> int:
        value = self.value(name)
        if value is _MISSING:
            result: int = self._default(name, default)
            return result
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected an integer, got {_type_name(value)} {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(self.key(name), f"{value} is out of range [{lo}, {hi}]")
        return value

    def int_or_word(self, name: str, word: str, lo: int, hi: int) -> int | str:
        """An integer in ``[lo, hi]`` or the one ``word`` (``sessions: auto``)."""
        value = self.value(name)
        if isinstance(value, str) and value.strip() == word:
            return word
        if isinstance(value, str) and not value.strip().isdigit():
            raise ConfigError(self.key(name), f"expected {word} or an integer, got {value!r}")
        return self.int_in(name, lo, hi)

    def choice(self, name: str, options: tuple[str, ...]) -> str:
        raw = self.value(name)
        if isinstance(raw, bool) and ("on" if raw else "off") in options:  # YAML 1.1 reads a bare on/off as a bool
            return "on" if raw else "off"
        value = self.text(name)
        if value not in options:
            raise ConfigError(self.key(name), f"{value!r} is not one of {', '.join(options)}")
        return value

    def path(self, name: str, *, required: bool = False) -> Path | None:
        text = self.text(name, default="", required=required)
        return self.resolve(text) if text else None

    def list_of_str(self, name: str) -> list[str]:
        value = self.value(name)
        if value is _MISSING:
            return list(self._default(name, None))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "expected a list of strings")
        return value

    def str_mapping(self, name: str) -> dict[str, str]:
        value = self.value(name)
        if value is _MISSING:
            return {}
        mapping = expect_mapping(value, self.key(name))
        out: dict[str, str] = {}
        for k, v in mapping.items():
            if not isinstance(v, str):
                raise ConfigError(f"{self.key(name)}.{k}", f"expected a string, got {_type_name(v)}")
            out[k] = v
        return out

    def section(self, name: str, fills: type[DataclassInstance] | None = None) -> Reader:
        """The mapping at ``name`` (empty when left out), filling the dataclass ``fills``."""
        value = self.value(name)
        data = {} if value is _MISSING else expect_mapping(value, self.key(name))
        return Reader(data, self.key(name), self._env, self._base_dir, fills)

    def list_of_mappings(
        self, name: str, fills: type[DataclassInstance], *, required: bool = False, min_len: int = 0
    ) -> list[Reader]:
        """The mappings listed at ``name``, each filling the dataclass ``fills``."""
        value = self.value(name, required=required)
        if value is _MISSING:
            value = []
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"expected a list, got {_type_name(value)}")
        if len(value) < min_len:
            raise ConfigError(self.key(name), f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
        readers = []
        for i, v in enumerate(value):
            path = f"{self.key(name)}[{i}]"
            readers.append(Reader(expect_mapping(v, path), path, self._env, self._base_dir, fills))
        return readers

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            known = sorted(self._used)
            hint = f" (known keys here: {', '.join(known)})" if known else ""
            raise ConfigError(self.key(unknown[0]), f"unknown key{hint}")


def as_plain(value: Any) -> Any:
    """Settings as plain data (dicts, lists, strings, numbers), secrets shown as ``***`` (or ``""`` if unset)."""
    if isinstance(value, Secret):
        return "***" if value else ""
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [as_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    return value
