"""The machine a run is on: CPU, flags for int8, versions, load, and other busy processes."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from benchmarks import int8 as int8_bench
from benchmarks.bench_base import REPO


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "load_start": os.getloadavg(),
        "flags": int8_bench.shown_flags(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "agent"], cwd=REPO, capture_output=True, text=True)
        info["commit"] = rev.stdout.strip() + (" + uncommitted changes in agent/" if dirty.stdout.strip() else "")
    return info


def busy_processes() -> list[str]:
    """Other processes using the CPU now (a shared machine makes every figure noisier)."""
    try:
        out = subprocess.run(
            ["ps", "--ppid", str(os.getpid()), "--pid", str(os.getpid()), "-N", "-o", "pcpu,ni,comm", "--sort=-pcpu"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return []
    rows = []
    for line in out.stdout.splitlines()[1:8]:
        parts = line.split(None, 2)
        if len(parts) == 3 and float(parts[0]) >= 10.0 and parts[2] != "ps":
            rows.append(f"{parts[2]} ({parts[0]} % CPU, nice {parts[1]})")
    return rows
