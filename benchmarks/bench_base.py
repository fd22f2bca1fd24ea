"""What every part of ``benchmarks/run.py`` shares: the plan, the constants and targets, small helpers."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

SIZES = ((640, 480), (1280, 720), (1920, 1080))
SOURCE_FPS = 30.0
PACED_FPS = 2.0
CONFIDENCE = 0.40  # config.yaml's defaults: confidence 40, overlap 30
OVERLAP = 0.30
DENSE_INSTANCES = 150
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
SESSIONS = 2  # the extra throughput row: 2 sessions side by side, cores/2 threads each
OVERLAP_LOCAL = {"frames_in_flight": 2, "spin": "on"}
"""The other extra throughput row: one session, frame N's postprocessing, JSON and outbox beside frame N+1's run
(its session thread runs them back to back), the pool spinning during runs (``auto`` would stop it)."""

# Targets from the issue ("benchmark figures, not test assertions").
TARGET_THROUGHPUT = 0.90  # pipeline frames/s >= 0.90 x floor frames/s
TARGET_THROUGHPUT_TRAINED_640 = 0.95  # issue 17: >= 0.95 x with a trained 640 model finding objects (fp32, int8)
TARGET_LATENCY = 1.15  # capture-to-PUBACK p50 <= 1.15 x floor latency (640x480, 1280x720)
TARGET_DENSE = 0.10  # dense postprocessing <= 10 % of the model's time
TARGET_CPU = 1.20  # CPU at 2 fps <= 1.2 x the model's own CPU per second
TARGET_RSS_MB = 300.0  # peak RSS with the demo model at 1920x1080


@dataclass
class Plan:
    quick: bool
    floor_runs: int
    stage_runs: int
    throughput_seconds: float
    paced_seconds: float
    paced_warmup: float
    stalled_seconds: float
    ultra_reps: int

    @staticmethod
    def make(quick: bool) -> Plan:
        if quick:
            return Plan(True, 6, 5, 4.0, 6.0, 3.0, 6.0, 4)
        return Plan(False, 12, 12, 10.0, 12.0, 4.0, 10.0, 10)


@dataclass
class ModelInfo:
    key: str
    path: Path
    note: str
    input_hw: tuple[int, int] = (0, 0)
    num_classes: int = 0
    num_masks: int = 32
    floor: dict[str, Any] = field(default_factory=dict)
    trained: bool = True  # False: random weights, the model's cost only (it finds nothing)
    int8_of: str | None = None  # the fp32 model's key when this is its `seg-agent quantize` twin
    split_head: bool = False  # box decode out of the graph (`seg-agent optimize` / `quantize`): not Ultralytics'


def throughput_target(input_hw: tuple[int, int] | list[int], trained: bool) -> float:
    """The frames/s target of a model's pipeline rows: 0.95x for a trained 640 model (issue 17), else 0.90x."""
    return TARGET_THROUGHPUT_TRAINED_640 if trained and max(input_hw) >= 640 else TARGET_THROUGHPUT


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check


def mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")
