"""A Roboflow model package, as Roboflow's ``inference`` server caches a model: one directory with

* the weights: ``weights.onnx`` (``yolov5s_weights.onnx`` for YOLOv5), or else the directory's only ``.onnx``;
* ``environment.json``: ``PREPROCESSING`` (a mapping, or in some versions that mapping as a JSON string) and
  ``CLASS_MAP`` (``{"0": "name", ...}``);
* ``class_names.txt``: one class name a line (wins over ``CLASS_MAP``, as in Roboflow's server);
* ``model_type.json``: ``{"project_task_type": "instance-segmentation", "model_type": "yolov8n-seg"}``.

Only the weights are required; without ``environment.json`` the format's own preprocessing applies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.preprocess import Preprocessing, parse_roboflow_preprocessing

__all__ = ["ROBOFLOW_BACKGROUND_CLASS", "WEIGHTS_FILES", "PackageError", "RoboflowPackage", "read_package"]

WEIGHTS_FILES = ("weights.onnx", "yolov5s_weights.onnx")
ROBOFLOW_BACKGROUND_CLASS = "background_class83422"
"""The placeholder class Roboflow's server removes from RF-DETR outputs (the dataset's super-category slot)."""


def read_names_file(path: Path) -> list[str]:
    """Class names, one a line in class-id order (``classes.txt``, ``class_names.txt``); blank lines and a
    UTF-8 byte-order mark ignored. Raises ``OSError`` / ``UnicodeDecodeError`` for the caller to word."""
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


class PackageError(Exception):
    """The directory is not a usable Roboflow package; the message says what is missing or malformed."""


@dataclass(frozen=True, slots=True)
class RoboflowPackage:
    directory: Path
    weights: Path
    class_names: list[str] | None
    preprocessing: Preprocessing | None  # None: no environment.json
    model_type: str | None
    task: str | None
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PackageError(f"{path}: not valid JSON: {exc}") from None


def _weights(directory: Path) -> Path:
    for name in WEIGHTS_FILES:
        if (directory / name).is_file():
            return directory / name
    onnx_files = sorted(p for p in directory.glob("*.onnx") if p.is_file())
    if len(onnx_files) == 1:
        return onnx_files[0]
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:12]) or "nothing"
    why = "several .onnx files, none named weights.onnx" if onnx_files else f"no {WEIGHTS_FILES[0]}"
    raise PackageError(f"{directory}: no such model file: {why} (found: {found})")


def _class_names(directory: Path, environment: dict[str, Any]) -> list[str] | None:
    names_file = directory / "class_names.txt"
    if names_file.is_file():
        try:
            names = read_names_file(names_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise PackageError(f"{names_file}: cannot read: {exc}") from None
        if names:
            return names
    class_map = environment.get("CLASS_MAP")
    if isinstance(class_map, dict) and class_map:
        try:
            indexed = {int(k): str(v) for k, v in class_map.items()}
        except (TypeError, ValueError):
            raise PackageError(f"{directory / 'environment.json'}: CLASS_MAP keys must be class indices") from None
        return [indexed.get(i, f"class{i}") for i in range(max(indexed) + 1)]
    return None


def read_package(directory: Path) -> RoboflowPackage:
    """Read a package directory; :class:`PackageError` names the file and what is wrong with it."""
    weights = _weights(directory)
    environment: dict[str, Any] = {}
    preprocessing: Preprocessing | None = None
    notes: list[str] = []
    env_file = directory / "environment.json"
    if env_file.is_file():
        doc = _read_json(env_file)
        if not isinstance(doc, dict):
            raise PackageError(f"{env_file}: expected a JSON object")
        environment = doc
        if "PREPROCESSING" in environment:
            try:
                preprocessing, notes = parse_roboflow_preprocessing(environment["PREPROCESSING"])
            except ValueError as exc:
                raise PackageError(f"{env_file}: {exc}") from None
        else:
            preprocessing = Preprocessing(resize="stretch", fill=0)  # Roboflow's server: no resize = Stretch to
            notes.append("environment.json has no PREPROCESSING; using 'Stretch to' as Roboflow's server does")
    model_type = task = None
    type_file = directory / "model_type.json"
    if type_file.is_file():
        doc = _read_json(type_file)
        if isinstance(doc, dict):
            model_type = str(doc["model_type"]) if doc.get("model_type") else None
            task = str(doc["project_task_type"]) if doc.get("project_task_type") else None
    if task is not None and task != "instance-segmentation":
        raise PackageError(f"{type_file}: a {task} model ({model_type}); the agent needs instance-segmentation")
    return RoboflowPackage(
        directory=directory,
        weights=weights,
        class_names=_class_names(directory, environment),
        preprocessing=preprocessing,
        model_type=model_type,
        task=task,
        notes=notes,
    )
