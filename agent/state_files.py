"""Small JSON files the agent keeps in ``state_dir`` (runtime commands, Home Assistant's announced components,
line counts): written whole or not at all, read back leniently (a missing or damaged file is an empty one)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["load_json", "save_json_atomic"]


def save_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a temporary file, fsync, rename). Raises ``OSError``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_json(path: Path, log: logging.Logger, then: str) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` if there is none, and also (with a warning on ``log`` saying
    ``then``, what happens instead) if it can't be read or is not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s can't be read (%s); %s", path, exc, then)
        return {}
    return doc if isinstance(doc, dict) else {}
