"""The real agent in a subprocess (``benchmarks/pipeline.py``): throughput, paced and stalled runs; and
Ultralytics' ``predict`` in the benchmark environment."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from benchmarks.bench_base import (
    CONFIDENCE,
    CORES,
    OVERLAP,
    PACED_FPS,
    REPO,
    SOURCE_FPS,
    ModelInfo,
    Plan,
    median,
    percentile,
)
from benchmarks.bench_models import run_bench_env


@contextlib.contextmanager
def broker(work: Path) -> Iterator[Any]:
    from tests.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory(dir=work) as tmp, Mosquitto(Path(tmp)) as mq:
        yield mq


def agent_config(
    path: Path,
    port: int,
    model: ModelInfo,
    camera: dict[str, Any],
    state: Path,
    sessions: int = 1,
    local: dict[str, Any] | None = None,
) -> Path:
    """The agent's config for a run; ``local``: more ``inference.local`` keys (``frames_in_flight``, ``spin``)."""
    config = {
        "device_id": "bench",
        "log_level": "warning",
        "cameras": [{"name": "cam0", **camera}],
        "inference": {
            "mode": "local",
            "confidence": CONFIDENCE * 100,
            "overlap": OVERLAP * 100,
            "local": (
                {"model": str(model.path), "threads": int(model.floor["best_threads"]), "sessions": 1}
                if sessions == 1
                else {"model": str(model.path), "threads": max(1, CORES // sessions), "sessions": sessions}
            )
            | (local or {}),
        },
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(state),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_agent(config: Path, mode: str, plan: Plan, timeout: float = 900.0) -> dict[str, Any]:
    args = ["--config", str(config), "--mode", mode]
    if mode == "throughput":
        args += ["--seconds", str(plan.throughput_seconds), "--warmup", str(plan.paced_warmup)]
    elif mode == "paced":
        args += ["--seconds", str(plan.paced_seconds), "--warmup", str(plan.paced_warmup)]
    else:
        args += ["--seconds", str(plan.stalled_seconds), "--warmup", "4"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmarks.pipeline {mode} failed ({proc.returncode}): {proc.stderr[-800:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def pipeline_throughput(
    mq: Any,
    work: Path,
    model: ModelInfo,
    video: Path,
    plan: Plan,
    sessions: int = 1,
    local: dict[str, Any] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        camera = {"source": str(video), "fps": 0, "realtime": False, "loop": True}
        state = Path(tmp) / "state"
        config = agent_config(Path(tmp) / "agent.yaml", mq.port, model, camera, state, sessions, local)
        r = run_agent(config, "throughput", plan)
    rows = [row for row in r["rows"] if row[2] >= r["window_start"]]
    return {
        "dets_per_frame": _dets_per_frame(r),
        "fps": r["results_in_window"] / r["window_s"],
        "results": r["results_in_window"],
        "window_s": r["window_s"],
        "latency_ms": median(_latencies(rows)),  # includes waiting behind the frame in inference
        "cpu_ms_per_s": r["cpu_s"] / r["window_s"] * 1000,
        "thread_cpu_ms_per_result": {
            k: v * 1000 / max(1, r["results_in_window"]) for k, v in r.get("thread_cpu_s", {}).items()
        },
    }


def _dets_per_frame(r: dict[str, Any]) -> float:
    """Mean instances per acknowledged result within the window (``benchmarks/pipeline.py``'s counts)."""
    counts = [n for row, n in zip(r["rows"], r.get("detections", []), strict=False) if row[2] >= r["window_start"]]
    return float(np.mean(counts)) if counts else float("nan")


def _latencies(rows: list[list[float]]) -> list[float]:
    return [(ack - capture) * 1000 for capture, _, ack in rows]


def pipeline_paced(mq: Any, work: Path, model: ModelInfo, video: Path, plan: Plan) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        camera = {"source": str(video), "fps": PACED_FPS, "realtime": True, "loop": True}
        config = agent_config(Path(tmp) / "agent.yaml", mq.port, model, camera, Path(tmp) / "state")
        r = run_agent(config, "paced", plan)
    rows = [row for row in r["rows"] if row[2] >= r["window_start"]]
    lat = _latencies(rows)
    put_to_ack = [(ack - put) * 1000 for _, put, ack in rows]
    cpu_per_s = r["cpu_s"] / r["window_s"]
    return {
        "dets_per_frame": _dets_per_frame(r),
        "latency_p50_ms": median(lat),
        "latency_p90_ms": percentile(lat, 90),
        "put_to_ack_p50_ms": median(put_to_ack),
        "results": len(rows),
        "rate": r["results_in_window"] / r["window_s"],
        "cpu_ms_per_s": cpu_per_s * 1000,
        "rss_peak_mb": r.get("vmhwm", 0) / 1024,
    }


def pipeline_stalled(mq: Any, work: Path, model: ModelInfo, plan: Plan) -> dict[str, Any]:
    from tests.streams import MjpegServer

    with tempfile.TemporaryDirectory(dir=work) as tmp, MjpegServer(fps=SOURCE_FPS, hang_after=45) as server:
        # 1.5 s of frames, then silence with the connection open; every later connection (the agent reopens
        # a stalled source after stall_timeout_s, 10 s by default) gets the HTTP headers and nothing else.
        def wedge_after_first() -> None:
            deadline = time.monotonic() + 60
            while server.connections < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            server.hang = True

        threading.Thread(target=wedge_after_first, daemon=True).start()
        camera = {"source": server.url(), "fps": PACED_FPS}
        config = agent_config(Path(tmp) / "agent.yaml", mq.port, model, camera, Path(tmp) / "state")
        r = run_agent(config, "stalled", plan)
    return {
        "cpu_ms_per_s": r["cpu_s"] / r["window_s"] * 1000,
        "window_s": r["window_s"],
        "results_in_window": r["results_in_window"],
    }


def ultralytics_predict(python: Path, work: Path, model: ModelInfo, packets: dict, plan: Plan) -> dict[str, Any]:
    frames = {}
    for (w, h), pk in packets.items():
        frames[f"{w}x{h}"] = cv2.imdecode(np.frombuffer(pk[0], np.uint8), cv2.IMREAD_COLOR)
    npz = work / f"frames-{model.key}.npz"
    np.savez(npz, **frames)  # type: ignore[arg-type]
    common = [
        "predict",
        "--model",
        str(model.path),
        "--frames",
        str(npz),
        "--imgsz",
        str(model.input_hw[0]),
        "--threads",
        str(model.floor["best_threads"]),
        "--reps",
        str(plan.ultra_reps),
    ]
    result = run_bench_env(python, [*common, "--conf", str(CONFIDENCE), "--iou", str(OVERLAP)])
    low_reps = str(max(3, plan.ultra_reps // 2))
    low = run_bench_env(python, [*common, "--conf", "0.0", "--iou", "0.45", "--reps", low_reps])
    result["low_conf"] = low["sizes"]
    return result
