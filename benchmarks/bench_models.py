"""The models a run measures (``--models``, ``--model-path``, ``--int8``) and the clips it feeds them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import cv2
import onnxruntime as ort

from agent import synth
from agent.decoders_split import split_head_from_metadata, split_layout
from agent.formats import Port
from agent.quantize import main_quantize
from agent.synth import render_video
from benchmarks import int8 as int8_bench
from benchmarks.bench_base import REPO, SOURCE_FPS, ModelInfo, log


def bench_python(arg: str | None) -> Path | None:
    for candidate in (arg, os.environ.get("SEG_BENCH_PYTHON"), str(REPO / ".venv-bench/bin/python")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def run_bench_env(python: Path, args: list[str], timeout: float = 900.0) -> dict[str, Any]:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [str(python), str(REPO / "benchmarks/ultra.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"benchmarks/ultra.py {args[0]} failed ({proc.returncode}): {' | '.join(tail)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


TRAINED_640 = "yolov8n-synth"
TRAINED_640_FILE = "models/yolov8n-seg-synth.onnx"
"""The trained 640 model's key and where it is looked for (``--model-path yolov8n-synth=PATH`` overrides)."""

MODEL_KEYS = ("demo", "yolov8n-seg", TRAINED_640)


def prepare_models(
    work: Path,
    wanted: list[str],
    python: Path | None,
    demo_override: Path | None = None,
    paths: dict[str, Path] | None = None,
) -> tuple[list[ModelInfo], list[str]]:
    """The models of a run, in ``wanted``'s order, then every ``paths`` key not in it (a trained model block
    of its own); ``paths`` (key -> ONNX file) also overrides where a known key's model is found."""
    paths = dict(paths or {})
    models: list[ModelInfo] = []
    notes: list[str] = []
    for key in [*wanted, *(k for k in paths if k not in wanted)]:
        if key == "demo" and key not in paths:
            _demo(models, notes, work, python, demo_override)
        elif key == "yolov8n-seg" and key not in paths:
            _yolov8n_random(models, notes, work, python)
        elif key == TRAINED_640 and key not in paths:
            found = REPO / TRAINED_640_FILE
            if found.exists():
                models.append(ModelInfo(key, found, f"{TRAINED_640_FILE}: YOLOv8n-seg trained on `seg-agent synth`"))
            else:
                notes.append(f"{key}: skipped: {TRAINED_640_FILE} not there (give --model-path {key}=PATH)")
        elif key in paths:
            models.append(ModelInfo(key, paths[key].resolve(), f"{paths[key].name}, given with --model-path"))
        else:
            notes.append(f"{key}: unknown model (known: {', '.join(MODEL_KEYS)}; others need --model-path)")
    for m in models:
        read_shapes(m)
    return models, notes


def add_int8_twins(models: list[ModelInfo], twins: dict[str, Path], notes: list[str]) -> None:
    """Each int8 file (fp32 key -> file) as a model of its own, right after its fp32 model."""
    for fp32_key, path in twins.items():
        at = next((i for i, m in enumerate(models) if m.key == fp32_key), None)
        if at is None:
            notes.append(f"{fp32_key}-int8: skipped: no {fp32_key} model in this run")
            continue
        note = f"{path.name}: {fp32_key} after `seg-agent quantize`"
        twin = ModelInfo(f"{fp32_key}-int8", path.resolve(), note, trained=models[at].trained, int8_of=fp32_key)
        read_shapes(twin)
        models.insert(at + 1, twin)


LARGE_INPUT = 640
LARGE_CALIBRATION_FRAMES = 48
"""Calibration frames for a model of a 640 input. Set when ``seg-agent quantize`` held every calibration frame's
activations (160 frames at 640 were killed at 17.8 GB of RSS); calibration now goes a chunk at a time (under
1 GB), so more frames would fit. Kept at 48 because the committed BENCHMARKS.md int8 twin of the 640 model was
made with it; raising it changes that file, to be measured (AP and speed) before it is."""


def quantize(m: ModelInfo, work: Path) -> Path:
    """``seg-agent quantize`` of a trained model: the demo's recipe (``benchmarks/int8.py``) for small inputs;
    for a 640 input the same calibration set cut to :data:`LARGE_CALIBRATION_FRAMES` frames, spread evenly,
    and its own 60 held-out synth frames (seed 3500) for the AP gate."""
    if max(m.input_hw) < LARGE_INPUT:
        path, _ = int8_bench.quantize_demo(m.path, work)
        return path
    data, gate = work / "calibration", work / "gate-60"
    if not (data / "annotations.json").exists():
        synth.write_coco_dataset(data, 160, seed=3000)
    if not (gate / "annotations.json").exists():
        synth.write_coco_dataset(gate, 60, seed=3500)
    out = work / f"{m.path.stem}-int8.onnx"
    args = [str(m.path), "--images", str(data / "images"), "--frames", str(LARGE_CALIBRATION_FRAMES)]
    args += ["--eval-images", str(gate / "images"), "--annotations", str(gate / "annotations.json"), "--out", str(out)]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main_quantize(args)
    if rc != 0:
        raise RuntimeError(f"seg-agent quantize refused or failed ({rc}):\n{text.getvalue()}")
    return out


def read_shapes(m: ModelInfo) -> None:
    """The input size, classes and mask channels from the ONNX file's input and outputs."""
    session = ort.InferenceSession(str(m.path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    m.input_hw = (int(shape[2]), int(shape[3]))
    head = split_head_from_metadata(session.get_modelmeta().custom_metadata_map)
    if head is not None:  # the decode out of the graph: its layout says classes and mask channels
        layout = split_layout(head, [Port(o.name, tuple(o.shape)) for o in session.get_outputs()])
        m.split_head, m.num_classes, m.num_masks = True, layout.num_classes, layout.num_masks
        return
    rows = int(session.get_outputs()[0].shape[1])
    m.num_masks = int(session.get_outputs()[1].shape[1])
    m.num_classes = rows - 4 - m.num_masks


def _demo(models: list[ModelInfo], notes: list[str], work: Path, python: Path | None, override: Path | None) -> None:
    demo = REPO / "models/demo-seg.onnx"
    if override is not None:
        models.append(
            ModelInfo(
                "demo",
                override,
                f"{override.name}, given with --demo (a checkpoint of the demo network's training, "
                "before models/demo-seg.onnx existed)"
                if not demo.exists()
                else f"{override.name}, given with --demo",
            )
        )
    elif demo.exists():
        models.append(ModelInfo("demo", demo, "models/demo-seg.onnx (trained)"))
    elif python is not None:
        standin = work / "demo-seg-untrained.onnx"
        if not standin.exists():
            log("exporting the demo network, untrained (models/demo-seg.onnx is not there yet)")
            run_bench_env(python, ["export-standin", "--out", str(standin), "--imgsz", "320"])
        models.append(
            ModelInfo(
                "demo",
                standin,
                "models/demo-seg.onnx was not there yet: the same network untrained (training/net.py, "
                "320x320, seed 0): same graph and cost, but it finds nothing, so its sparse figures are "
                "empty frames",
                trained=False,
            )
        )
    else:
        notes.append("demo: models/demo-seg.onnx missing and no benchmark environment to export the network")


def _yolov8n_random(models: list[ModelInfo], notes: list[str], work: Path, python: Path | None) -> None:
    if python is None:
        notes.append("yolov8n-seg: skipped: no benchmark environment (bash benchmarks/setup_env.sh, or --bench-python)")
        return
    path = work / "yolov8n-seg.onnx"
    if not path.exists():
        log("exporting YOLOv8n-seg from Ultralytics' YAML (random weights)")
        run_bench_env(python, ["export-yolov8n", "--out", str(path), "--imgsz", "640"])
    models.append(
        ModelInfo(
            "yolov8n-seg",
            path,
            "Ultralytics YOLOv8n-seg from yolov8n-seg.yaml, random weights, ONNX 640x640 (80 classes): "
            "the model's cost only; random weights find nothing at confidence 0.4",
            trained=False,
        )
    )


# --------------------------------------------------------------------------------------------- frames


def make_videos(work: Path, sizes: list[tuple[int, int]]) -> dict[tuple[int, int], Path]:
    """One 3 s MJPG clip per size, 30 fps, JPEG quality 80 (the pipeline runs loop it)."""
    videos: dict[tuple[int, int], Path] = {}
    for w, h in sizes:
        path = work / f"shapes-{w}x{h}.avi"
        if not path.exists():
            render_video(path, seconds=3.0, fps=SOURCE_FPS, size=(w, h), seed=7, quality=80)
        videos[(w, h)] = path
    return videos


def read_packets(path: Path, limit: int) -> list[bytes]:
    """The clip's JPEG frames, undecoded (raw FFmpeg packets)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    cap.set(cv2.CAP_PROP_FORMAT, -1)
    packets = []
    while len(packets) < limit and cap.grab():
        ok, packet = cap.retrieve()
        if ok:
            packets.append(packet.tobytes())
    cap.release()
    return packets
