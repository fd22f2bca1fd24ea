"""seg-agent benchmarks: the agent's local pipeline against the model's own speed, on this machine, in one run.

    python benchmarks/run.py [--quick] [--out BENCHMARKS.md] [--json results.json]
                             [--bench-python .venv-bench/bin/python] [--models demo,yolov8n-seg]

Run from the repository root with the project's environment (the one the agent runs in). For each model and
each frame size (640x480, 1280x720, 1920x1080), side by side, measured in this one run:

* floor: a bare ``InferenceSession.run`` on an already letterboxed tensor, with the best of a grid of thread
  counts (1 .. cores, and ONNX Runtime's default) and spinning on/off. Everything else is compared with it:
  frames/s and dense postprocessing with its back-to-back runs, latency and CPU at 2 fps with its runs after
  a pause (a run after an idle gap is ~1.1x slower: cold caches, a parked pool).
* pipeline: the real ``agent.daemon.Agent`` in a subprocess (``benchmarks/pipeline.py``) reading a looping
  MJPG video file (``agent.synth`` shapes, 30 fps) through a throwaway Mosquitto: frames/s with ``fps: 0,
  realtime: false`` (results acknowledged within a window after a warm-up); capture-to-PUBACK latency, CPU
  use and peak memory at 2 frames/s sampled from the 30 fps file played in real time.
* stages, in process: JPEG decode, letterbox, session, postprocessing on the model's own outputs (sparse)
  and on synthetic outputs with 150 instances (dense, ``benchmarks/synthetic.py``), JSON.
* Ultralytics: ``YOLO(model.onnx).predict`` + polygons on the same frames and ONNX file, with the same
  ONNX Runtime session options, in a separate environment (``benchmarks/ultra.py``; set it up with
  ``bash benchmarks/setup_env.sh``). Without it that column says why it is missing.
* idle: CPU use while a live source has stalled.

Models: ``demo`` is ``models/demo-seg.onnx``, or, before that file exists, the same network untrained
(exported by the benchmark environment from ``training/net.py``; same graph, same cost). ``yolov8n-seg`` is
Ultralytics' YOLOv8n-seg built from its YAML (random weights, nothing downloaded) and exported to ONNX at 640
by the benchmark environment; it is skipped, with a note, when that environment is missing. Everything is
written under ``--work`` (default ``runs/bench/``, not committed).

``--quick`` shortens every measurement (about 4 minutes instead of 7 on a 2-core machine); the figures are noisier.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import yaml  # noqa: E402

from agent.jpeg import decode_jpeg, reduction_factor  # noqa: E402
from agent.model import OnnxModel, limit_helper_threads  # noqa: E402
from agent.postprocess import decode_yolov8_seg, letterbox, letterbox_params  # noqa: E402
from agent.results import detections_to_api, encode, to_message  # noqa: E402
from agent.synth import render_video  # noqa: E402
from benchmarks import int8 as int8_bench  # noqa: E402
from benchmarks.synthetic import dense_outputs  # noqa: E402

SIZES = ((640, 480), (1280, 720), (1920, 1080))
SOURCE_FPS = 30.0
PACED_FPS = 2.0
CONFIDENCE = 0.40  # config.yaml's defaults: confidence 40, overlap 30
OVERLAP = 0.30
DENSE_INSTANCES = 150
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
SESSIONS = 2  # the extra throughput row: 2 sessions side by side, cores/2 threads each

# Targets from the issue ("benchmark figures, not test assertions").
TARGET_THROUGHPUT = 0.90  # pipeline frames/s >= 0.90 x floor frames/s
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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------------------- machine


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


# --------------------------------------------------------------------------------------------- models


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


def prepare_models(
    work: Path,
    wanted: list[str],
    python: Path | None,
    demo_override: Path | None = None,
    int8: Path | None = None,
) -> tuple[list[ModelInfo], list[str]]:
    models: list[ModelInfo] = []
    notes: list[str] = []
    if "demo" in wanted:
        demo = REPO / "models/demo-seg.onnx"
        if demo_override is not None:
            models.append(
                ModelInfo(
                    "demo",
                    demo_override,
                    f"{demo_override.name}, given with --demo (a checkpoint of the demo network's training, "
                    "before models/demo-seg.onnx existed)"
                    if not demo.exists()
                    else f"{demo_override.name}, given with --demo",
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
                )
            )
        else:
            notes.append("demo: models/demo-seg.onnx missing and no benchmark environment to export the network")
    if "yolov8n-seg" in wanted:
        if python is None:
            notes.append(
                "yolov8n-seg: skipped: no benchmark environment (bash benchmarks/setup_env.sh, or --bench-python)"
            )
        else:
            path = work / "yolov8n-seg.onnx"
            if not path.exists():
                log("exporting YOLOv8n-seg from Ultralytics' YAML (random weights)")
                run_bench_env(python, ["export-yolov8n", "--out", str(path), "--imgsz", "640"])
            models.append(
                ModelInfo(
                    "yolov8n-seg",
                    path,
                    "Ultralytics YOLOv8n-seg from yolov8n-seg.yaml, random weights, ONNX 640x640 (80 classes): "
                    "the real network's cost; random weights find nothing at confidence 0.4",
                )
            )
    if int8 is not None:
        models.append(ModelInfo("demo-int8", int8, f"{int8.name}: the demo model after `seg-agent quantize`"))
    for m in models:
        session = ort.InferenceSession(str(m.path), providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape
        m.input_hw = (int(shape[2]), int(shape[3]))
        rows = int(session.get_outputs()[0].shape[1])
        m.num_masks = int(session.get_outputs()[1].shape[1])
        m.num_classes = rows - 4 - m.num_masks
    return models, notes


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


# --------------------------------------------------------------------------------------------- floor


SPIN_MODES = ("off", "on", "on+stop")  # spinning: never / ONNX Runtime's default / during runs only (the agent's)
_SETTLE_S = 0.12  # pause before each floor run: a spinning pool of another session goes on ~60 ms after its run


def _session(path: Path, threads: int, spin: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if spin == "off" else "1")
    if spin == "on+stop":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Floor:
    """The model's own speed: a bare ``session.run`` on an already letterboxed tensor.

    ``choose()`` runs a grid of thread counts (1 .. cores and ONNX Runtime's default) and spinning modes
    (off; on, ONNX Runtime's default, which goes on spinning after each run; on during runs only, as the agent
    runs), interleaved, each run after a short pause so that no other session's threads are still spinning,
    and keeps the fastest. ``sample()`` then adds runs of that configuration and of the agent's (the same
    thread count, spinning during runs only) between the other measurements, so that the floor is the median
    over the whole run, exposed to the same background load as everything compared with it. CPU per run is
    measured over the run and the pause after it (what a spinning pool burns after the run counts).
    """

    def __init__(self, model: ModelInfo, frame: np.ndarray) -> None:
        self.model = model
        self.tensor, _ = letterbox(frame, model.input_hw)
        self.best: tuple[int, str] = (0, "on+stop")
        self.sessions: dict[tuple[int, str], ort.InferenceSession] = {}
        self.walls: dict[tuple[int, str], list[float]] = {}
        self.cpus: dict[tuple[int, str], list[float]] = {}
        self.hot: list[float] = []  # back-to-back runs of the best configuration (see burst)
        self.grid: dict[str, float] = {}

    def _run(self, config: tuple[int, str]) -> None:
        session = self.sessions[config]
        feed = {session.get_inputs()[0].name: self.tensor}
        time.sleep(_SETTLE_S)
        c0, t0 = cpu_s(), time.perf_counter()
        session.run(None, feed)
        wall = (time.perf_counter() - t0) * 1000
        time.sleep(_SETTLE_S)
        self.walls.setdefault(config, []).append(wall)
        self.cpus.setdefault(config, []).append((cpu_s() - c0) * 1000)

    def choose(self, runs: int) -> None:
        cores = os.cpu_count() or 1
        configs = [(t, spin) for t in sorted({*range(1, cores + 1), 0}) for spin in SPIN_MODES]
        self.sessions = {c: _session(self.model.path, *c) for c in configs}
        for c in configs:
            self.sessions[c].run(None, {self.sessions[c].get_inputs()[0].name: self.tensor})
        for rep in range(runs):
            for c in configs if rep % 2 == 0 else configs[::-1]:
                self._run(c)
        self.grid = {f"{t or 'default'} threads, spinning {sp}": median(self.walls[(t, sp)]) for t, sp in configs}
        self.best = min(configs, key=lambda c: median(self.walls[c]))
        keep = {self.best, self.agent_config}
        self.sessions = {c: sess for c, sess in self.sessions.items() if c in keep}
        self.walls = {c: v for c, v in self.walls.items() if c in keep}
        self.cpus = {c: v for c, v in self.cpus.items() if c in keep}
        self.publish()

    @property
    def agent_config(self) -> tuple[int, str]:
        return (self.best[0], "on+stop")  # as agent/model.py configures its session

    def sample(self, runs: int) -> None:
        for _ in range(runs):
            for c in sorted({self.best, self.agent_config}):
                self._run(c)
        self.burst(runs)
        self.publish()

    def burst(self, runs: int) -> None:
        """Back-to-back runs of the best configuration, no pause: the model's own rate when frames queue up,
        what the throughput runs are compared with. (After a pause a run is slower, caches and the pool's
        threads cold: that is the paced runs' situation, compared with the paused samples.)"""
        session = self.sessions[self.best]
        feed = {session.get_inputs()[0].name: self.tensor}
        time.sleep(_SETTLE_S)
        session.run(None, feed)  # wakes the pool: not counted
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            self.hot.append((time.perf_counter() - t0) * 1000)

    def mark(self) -> tuple[int, int]:
        return len(self.walls[self.best]), len(self.hot)

    def local(self, since: tuple[int, int]) -> dict[str, float]:
        """The floor over the samples taken since ``mark()``: next to a measurement, in time."""
        best = self.walls[self.best][since[0] :]
        agent = self.walls[self.agent_config][since[0] :]
        return {
            "best_ms": median(best),
            "hot_ms": median(self.hot[since[1] :]),
            "agent_ms": median(agent),
            "agent_cpu_ms": median(self.cpus[self.agent_config][since[0] :]),
            "runs": len(best),
        }

    def publish(self) -> None:
        best, agent = self.walls[self.best], self.walls[self.agent_config]
        self.model.floor = {
            "best_ms": median(best),
            "best_p90_ms": percentile(best, 90),
            "best_threads": self.best[0],
            "best_spin": self.best[1],
            "grid_ms": self.grid,
            "agent_ms": median(agent),
            "agent_cpu_ms": median(self.cpus[self.agent_config]),
            "runs": len(best),
        }
        if self.hot:
            self.model.floor["hot_ms"] = median(self.hot)


# --------------------------------------------------------------------------------------------- in process


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    fn()
    samples = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return median(samples), result


def json_payload(det: Any, names: list[str], frame_wh: tuple[int, int]) -> bytes:
    api = detections_to_api(det, names, image_wh=frame_wh, time_s=0.01)
    message = to_message(
        api,
        device_id="bench",
        camera="cam0",
        frame_id=1,
        timestamp=time.time(),
        source="local",
        model_id="bench",
        latency_ms=1.0,
    )
    return encode(message)


def measure_stages(model: ModelInfo, onnx: OnnxModel, packets: list[bytes], size: tuple[int, int], plan: Plan) -> dict:
    w, h = size
    # Decoded as the agent's capture decodes them: at the largest reduction the model loses nothing from.
    factor = reduction_factor((h, w), onnx.needed_hw((h, w)))
    frames = [decode_jpeg(np.frombuffer(p, np.uint8), factor) for p in packets[: plan.stage_runs]]
    frame = frames[0]
    out: dict[str, Any] = {"decode_factor": factor}
    i = itertools.count()
    out["jpeg_full_ms"], _ = timed(
        lambda: decode_jpeg(np.frombuffer(packets[next(i) % len(packets)], np.uint8)),
        plan.stage_runs,
    )
    out["jpeg_ms"], _ = timed(
        lambda: decode_jpeg(np.frombuffer(packets[next(i) % len(packets)], np.uint8), factor),
        plan.stage_runs,
    )
    out["letterbox_ms"], (tensor, params) = timed(
        lambda: letterbox(frame, model.input_hw, frame_hw=(h, w)), plan.stage_runs
    )
    out["run_ms"], outputs = timed(lambda: onnx.run(tensor), plan.stage_runs)
    kw = {"params": params, "input_hw": model.input_hw, "frame_hw": (h, w), "confidence": CONFIDENCE}
    out["post_sparse_ms"], sparse = timed(
        lambda: decode_yolov8_seg(*outputs, overlap=OVERLAP, **kw),
        plan.stage_runs,  # type: ignore[arg-type]
    )
    out["sparse_instances"] = len(sparse)
    lb = letterbox_params((h, w), model.input_hw)
    content = (round(h * lb.scale), round(w * lb.scale))
    synthetic = dense_outputs(
        DENSE_INSTANCES,
        model.input_hw,
        num_classes=model.num_classes,
        num_masks=model.num_masks,
        anchors=int(outputs[0].shape[2]),
        content_hw=content,
    )
    dense_kw = {**kw, "confidence": 0.25}
    out["post_dense_ms"], dense = timed(
        lambda: decode_yolov8_seg(*synthetic, overlap=0.45, **dense_kw),  # type: ignore[arg-type]
        plan.stage_runs * 3,  # ~10 ms each: more samples for a median that a noisy neighbour moves less
    )
    out["dense_instances"] = len(dense)
    names = onnx.class_names
    out["json_sparse_ms"], _ = timed(lambda: json_payload(sparse, names, (w, h)), plan.stage_runs)
    out["json_dense_ms"], dense_payload = timed(lambda: json_payload(dense, names, (w, h)), plan.stage_runs)
    out["json_dense_kb"] = len(dense_payload) / 1024
    out["dense_vertices"] = int(sum(len(p) for p in dense.polygons))
    j = itertools.count()
    out["detect_ms"], _ = timed(
        lambda: onnx.detect(frames[next(j) % len(frames)], confidence=CONFIDENCE, overlap=OVERLAP, frame_hw=(h, w)),
        plan.stage_runs,
    )
    return out


# --------------------------------------------------------------------------------------------- agent


@contextlib.contextmanager
def broker(work: Path) -> Iterator[Any]:
    from tests.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory(dir=work) as tmp, Mosquitto(Path(tmp)) as mq:
        yield mq


def agent_config(
    path: Path, port: int, model: ModelInfo, camera: dict[str, Any], state: Path, sessions: int = 1
) -> Path:
    config = {
        "device_id": "bench",
        "log_level": "warning",
        "cameras": [{"name": "cam0", **camera}],
        "inference": {
            "mode": "local",
            "confidence": CONFIDENCE * 100,
            "overlap": OVERLAP * 100,
            "local": (
                {"model": str(model.path), "threads": int(model.floor["best_threads"])}
                if sessions == 1
                else {"model": str(model.path), "threads": max(1, CORES // sessions), "sessions": sessions}
            ),
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
    mq: Any, work: Path, model: ModelInfo, video: Path, plan: Plan, sessions: int = 1
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        camera = {"source": str(video), "fps": 0, "realtime": False, "loop": True}
        config = agent_config(Path(tmp) / "agent.yaml", mq.port, model, camera, Path(tmp) / "state", sessions)
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


# --------------------------------------------------------------------------------------------- report


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN check


def mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


THREAD_ROLES = (
    ("worker-cam0", "worker (ONNX Runtime's calling thread, letterbox, postprocessing, API object, JSON, outbox put)"),
    ("infer-cam0", "inference pool thread (only with several frames in flight)"),
    ("native", "ONNX Runtime's pool threads"),
    ("capture-cam0#", "capture (grab, JPEG decode)"),
    ("paho", "paho network thread"),
    ("mqtt-feeder", "publisher feeder"),
)


def where_cpu_goes(m: dict[str, Any], floor: dict[str, Any]) -> str:
    """Per-thread CPU per result in the throughput runs (from ``/proc/self/task``)."""
    sizes = [s for s, row in m["sizes"].items() if row.get("throughput", {}).get("thread_cpu_ms_per_result")]
    if not sizes:
        return ""
    lines = [
        "Where the agent's CPU goes in the throughput runs, ms per result, by thread (the model alone: "
        f"{fmt(floor['agent_cpu_ms'])} ms per run in the floor):",
        "",
        "| thread | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    per_size = [m["sizes"][s]["throughput"]["thread_cpu_ms_per_result"] for s in sizes]
    used: set[str] = set()
    for prefix, role in THREAD_ROLES:
        cells = []
        for table in per_size:
            keys = [k for k in table if k.startswith(prefix)]
            used.update(keys)
            cells.append(fmt(sum(table[k] for k in keys), 2))
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    rest = [fmt(sum(v for k, v in table.items() if k not in used), 2) for table in per_size]
    lines.append("| everything else (health, watchdog, outbox flusher, main) | " + " | ".join(rest) + " |")
    total = [fmt(sum(table.values()), 2) for table in per_size]
    lines.append("| **total** | " + " | ".join(f"**{t}**" for t in total) + " |")
    return "\n".join(lines)


def sessions_cell(thr: dict[str, Any] | None, floor_ms: float) -> str:
    """The extra throughput run with several sessions side by side: frames/s, × floor, CPU ms per frame."""
    if not thr:
        return "n/a"
    fps = thr.get("fps", float("nan"))
    ratio = fps / (1000 / floor_ms)
    cpu = thr.get("cpu_ms_per_s", float("nan")) / fps
    return f"{fmt(fps)}, {fmt(ratio, 2)}{mark(ratio >= TARGET_THROUGHPUT)}, {fmt(cpu)} ms"


def build_tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for m in results["models"]:
        floor = m["floor"]
        fl_ms = floor["best_ms"]
        lines.append(f"### {m['key']} — input {m['input_hw'][1]}x{m['input_hw'][0]}, {m['num_classes']} classes")
        lines.append("")
        lines.append(f"{m['note']}.")
        lines.append("")
        hot = floor.get("hot_ms", fl_ms)
        lines.append(
            f"Floor over the whole run: **{fmt(fl_ms)} ms** per `session.run` after a pause, **{fmt(hot)} ms** "
            f"back to back = **{fmt(1000 / hot)} frames/s** (best of the grid: "
            f"{floor['best_threads'] or 'default'} thread(s), spinning {floor['best_spin']}; "
            f"p90 {fmt(floor['best_p90_ms'])} ms). The agent runs {floor['best_threads'] or 'default'} thread(s) "
            f"spinning during runs only: {fmt(floor['agent_ms'])} ms, {fmt(floor['agent_cpu_ms'])} ms of CPU per run."
        )
        lines.append("")
        lines.append(
            "Each row's ratios use the floor sampled around that row's measurements (the local floor, next "
            "column), as the machine's load drifts during a run: frames/s against its back-to-back runs (frames "
            "queue up there too), latency and CPU at 2 fps against its runs after a pause (each paced frame "
            "comes ~0.5 s after the last, to a cold cache and a parked pool, as the floor's paused runs do)."
        )
        lines.append("")
        lines.append(
            "| frame | detections per frame | local floor ms: paused / back to back | pipeline frames/s | × floor | "
            "agent CPU per frame × model's | "
            f"{SESSIONS} sessions: frames/s, × floor, CPU per frame | "
            "capture→PUBACK p50 (p90) ms | × floor | CPU at 2 fps | × model | peak RSS |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for size, row in m["sizes"].items():
            thr = row.get("throughput", {})
            paced = row.get("paced", {})
            local = row.get("floor", floor)
            row_ms = local["best_ms"]
            hot_ms = local.get("hot_ms", row_ms)  # runs before the back-to-back floor: the paused one
            ratio_fps = thr.get("fps", float("nan")) / (1000 / hot_ms)
            cpu_frame = thr.get("cpu_ms_per_s", float("nan")) / thr.get("fps", float("nan"))
            ratio_cpu_frame = cpu_frame / local["agent_cpu_ms"]
            ratio_lat = paced.get("latency_p50_ms", float("nan")) / row_ms
            model_cpu = local["agent_cpu_ms"] * PACED_FPS
            ratio_cpu = paced.get("cpu_ms_per_s", float("nan")) / model_cpu
            lat_target = TARGET_LATENCY if size in ("640x480", "1280x720") else None
            rss = paced.get("rss_peak_mb", float("nan"))
            rss_ok = rss <= TARGET_RSS_MB if (m["key"] == "demo" and size == "1920x1080") else None
            dets = f"{fmt(thr.get('dets_per_frame', float('nan')))} / {fmt(paced.get('dets_per_frame', float('nan')))}"
            lines.append(
                f"| {size} | {dets} | {fmt(row_ms)} / {fmt(hot_ms)} | {fmt(thr.get('fps', float('nan')))} | "
                f"{fmt(ratio_fps, 2)}"
                f"{mark(ratio_fps >= TARGET_THROUGHPUT)} | {fmt(cpu_frame)} ms, {fmt(ratio_cpu_frame, 2)} | "
                f"{sessions_cell(row.get('throughput_sessions'), hot_ms)} | "
                f"{fmt(paced.get('latency_p50_ms', float('nan')))} "
                f"({fmt(paced.get('latency_p90_ms', float('nan')))}) | {fmt(ratio_lat, 2)}"
                f"{mark(ratio_lat <= lat_target if lat_target else None)} | "
                f"{fmt(paced.get('cpu_ms_per_s', float('nan')), 0)} ms/s | {fmt(ratio_cpu, 2)}"
                f"{mark(ratio_cpu <= TARGET_CPU)} | {fmt(rss, 0)} MB{mark(rss_ok)} |"
            )
        lines.append("")
        lines.append(where_cpu_goes(m, floor))
        lines.append("")
        lines.append(
            "| frame | JPEG decode: full → as decoded | letterbox | session | post, sparse (n) | post, dense (n) | "
            "× model | JSON, dense | agent `detect` | Ultralytics `predict` + polygons | ratio |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for size, row in m["sizes"].items():
            st = row.get("stages", {})
            local = row.get("floor", floor)
            # both back to back: the stages are timed in a loop, as the floor's burst
            dense_ratio = st.get("post_dense_ms", float("nan")) / local.get("hot_ms", local["best_ms"])
            ul = row.get("ultralytics", {})
            ul_ms = ul.get("total_ms", float("nan"))
            ours_ms = ul.get("ours_ms", st.get("detect_ms", float("nan")))
            ratio = ours_ms / ul_ms if ul else float("nan")
            ul_text = f"{fmt(ul_ms)} ms" if ul else results.get("ultralytics_note", "n/a")
            nan = float("nan")
            lines.append(
                f"| {size} | {fmt(st.get('jpeg_full_ms', nan), 2)} → {fmt(st.get('jpeg_ms', nan), 2)} "
                f"(1/{st.get('decode_factor', 1)}) | {fmt(st.get('letterbox_ms', nan), 2)} "
                f"| {fmt(st.get('run_ms', float('nan')))} | {fmt(st.get('post_sparse_ms', float('nan')), 2)} "
                f"({st.get('sparse_instances', 0)}) | {fmt(st.get('post_dense_ms', float('nan')))} "
                f"({st.get('dense_instances', 0)}) | {fmt(dense_ratio, 3)}{mark(dense_ratio <= TARGET_DENSE)} | "
                f"{fmt(st.get('json_dense_ms', float('nan')))} ({fmt(st.get('json_dense_kb', float('nan')), 0)} kB) | "
                f"{fmt(ours_ms)} | {ul_text} | "
                f"{fmt(ratio, 2)}{mark(ratio < 1.0 if ul else None)} |"
            )
        lines.append("")
        if any("ultralytics" in row for row in m["sizes"].values()):
            lines.append(
                "At confidence 0 (every anchor is a candidate, at most 300 kept: a stress case for NMS and masks):"
            )
            lines.append("")
            lines.append("| frame | agent `detect` (n) | Ultralytics `predict` + polygons (n) | ratio |")
            lines.append("|---|---|---|---|")
            for size, row in m["sizes"].items():
                st = row.get("stages", {})
                low = row.get("ultralytics_low", {})
                if not low:
                    continue
                ratio = low["ours_ms"] / low["total_ms"]
                lines.append(
                    f"| {size} | {fmt(low['ours_ms'])} ({low['ours_instances']}) | "
                    f"{fmt(low['total_ms'])} ({low['instances']}) | {fmt(ratio, 2)}{mark(ratio < 1.0)} |"
                )
            lines.append("")
    return "\n".join(lines)


# Published per-model figures (see /work/shared/field-notes.md "Speed references" and the sources they cite).
PUBLISHED = {
    "ultralytics_cpu_onnx_ms": {"yolo11n": 56.1, "yolo11n-seg": 65.9, "yolov8n-seg": 96.1},
    "pi5_yolo11n_onnx_ms": 168.0,
    "orin_nano_super_yolo11n_onnx_ms": 7.9,
    "orin_nano_super_yolo11n_trt_fp16_ms": 4.9,
    "pi5_over_pi4_cpu": 2.5,  # Raspberry Pi's own "2-3x the CPU performance of Raspberry Pi 4"
}


def estimates(results: dict[str, Any]) -> str:
    """Raspberry Pi 4/5 and Jetson Orin Nano figures from published per-model numbers and this run's ratios."""
    by_key = {m["key"]: m for m in results["models"]}
    v8 = by_key.get("yolov8n-seg")
    if v8 is None:
        return "No estimates: the YOLOv8n-seg row (which anchors them) was not measured in this run."
    pub = PUBLISHED
    cpu = pub["ultralytics_cpu_onnx_ms"]
    seg_over_det = cpu["yolov8n-seg"] / cpu["yolo11n"]
    pi5_v8 = pub["pi5_yolo11n_onnx_ms"] * seg_over_det
    devices = {
        "Raspberry Pi 5 (ONNX Runtime, CPU)": pi5_v8,
        "Raspberry Pi 4 (ONNX Runtime, CPU)": pi5_v8 * pub["pi5_over_pi4_cpu"],
        "Jetson Orin Nano Super (ONNX Runtime, GPU)": pub["orin_nano_super_yolo11n_onnx_ms"] * seg_over_det,
        "Jetson Orin Nano Super (TensorRT FP16)": pub["orin_nano_super_yolo11n_trt_fp16_ms"] * seg_over_det,
    }
    here_v8 = v8["floor"]["best_ms"]
    pi5_factor = pi5_v8 / here_v8  # how much slower a Pi 5 core-set is than this machine, for the same model
    lines = [
        "## Estimates for a Raspberry Pi 4/5 and a Jetson Orin Nano",
        "",
        f"Anchors, published: Ultralytics' CPU ONNX figures (YOLO11n {cpu['yolo11n']} ms, YOLO11n-seg "
        f"{cpu['yolo11n-seg']} ms, YOLOv8n-seg {cpu['yolov8n-seg']} ms), YOLO11n on a Raspberry Pi 5 with ONNX "
        f"Runtime {pub['pi5_yolo11n_onnx_ms']:.0f} ms, on a Jetson Orin Nano Super "
        f"{pub['orin_nano_super_yolo11n_onnx_ms']} ms (ONNX Runtime) and "
        f"{pub['orin_nano_super_yolo11n_trt_fp16_ms']} ms (TensorRT FP16); a Pi 5 has 2-3x a Pi 4's CPU speed "
        f"(2.5 taken). YOLOv8n-seg is {seg_over_det:.2f}x YOLO11n in Ultralytics' table, so: "
        f"Pi 5 ≈ {pi5_v8:.0f} ms, Pi 4 ≈ {pi5_v8 * pub['pi5_over_pi4_cpu']:.0f} ms. This machine ran YOLOv8n-seg "
        f"in {here_v8:.0f} ms, so a Pi 5 is taken as {pi5_factor:.1f}x slower for everything the agent does on the "
        "CPU (JPEG, letterbox, postprocessing, JSON): pessimistic for NumPy/OpenCV code, which loses less to the "
        "Pi than ONNX Runtime's AVX2 convolutions do. The Jetson's agent work runs on its Cortex-A78AE cores, "
        "taken as fast as a Pi 5's. The demo model scales by its ratio to YOLOv8n-seg measured here.",
        "",
        "| device | model | model ms | agent work per frame, 640x480 / 1920x1080 (sparse) | "
        "pipeline ÷ model, 640x480 / 1920x1080 | dense postprocessing (150) ÷ model, 1920x1080 |",
        "|---|---|---|---|---|---|",
    ]
    for key, m in by_key.items():
        scale_model = m["floor"]["best_ms"] / here_v8
        sizes = m["sizes"]
        for device, v8_ms in devices.items():
            model_ms = v8_ms * scale_model
            cpu_scale = pi5_factor * (pub["pi5_over_pi4_cpu"] if "Pi 4" in device else 1.0)
            work, ratio = [], []
            for size in ("640x480", "1920x1080"):
                st = sizes.get(size, {}).get("stages")
                if not st:
                    work.append(float("nan"))
                    ratio.append(float("nan"))
                    continue
                serial = (st["letterbox_ms"] + st["post_sparse_ms"] + st["json_sparse_ms"]) * cpu_scale
                decode = st["jpeg_ms"] * cpu_scale  # on the capture thread, alongside the previous inference
                work.append(serial + decode)
                ratio.append((max(model_ms, decode) + serial) / model_ms)
            dense = sizes.get("1920x1080", {}).get("stages", {}).get("post_dense_ms", float("nan")) * cpu_scale
            lines.append(
                f"| {device} | {key} | {model_ms:.0f} | {fmt(work[0])} / {fmt(work[1])} ms | "
                f"{fmt(ratio[0], 2)} / {fmt(ratio[1], 2)} | {fmt(dense / model_ms, 2)} |"
            )
    lines += [
        "",
        "Reading it: on the Pis the model dominates and the agent's work stays a few percent (the JPEG decode of "
        "a 1080p frame runs on the capture thread while the previous frame is inferred). On the Jetson the model "
        "runs on the GPU in a few milliseconds while the agent's work stays on the ARM cores, so at 1080p the JPEG "
        "decode alone is as long as the model: there the pipeline is bound by the CPU side (see what is left).",
    ]
    return "\n".join(lines)


def int8_pipeline_table(results: dict[str, Any]) -> str:
    """The demo model's pipeline rows, fp32 against int8 (measured minutes apart in this run, not interleaved)."""
    by_key = {m["key"]: m for m in results["models"]}
    fp32, int8 = by_key.get("demo"), by_key.get("demo-int8")
    if fp32 is None or int8 is None:
        return ""
    nan = float("nan")
    lines = [
        "Through the whole agent (the pipeline rows above; fp32 and int8 runs of one size a few minutes apart, "
        "so the load may differ between them): frames/s and capture→PUBACK p50 and CPU at 2 fps, "
        "fp32 → int8, and the ratio (frames/s: int8 ÷ fp32; latency and CPU: fp32 ÷ int8, higher is better).",
        "",
        "| frame | detections per frame, fp32 / int8 | frames/s | × | capture→PUBACK p50 ms | × | CPU at 2 fps, "
        "ms/s | × |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, a in fp32["sizes"].items():
        b = int8["sizes"].get(size)
        if b is None:
            continue
        ta, tb = a.get("throughput", {}), b.get("throughput", {})
        pa, pb = a.get("paced", {}), b.get("paced", {})
        fa, fb = ta.get("fps", nan), tb.get("fps", nan)
        la, lb = pa.get("latency_p50_ms", nan), pb.get("latency_p50_ms", nan)
        ca, cb = pa.get("cpu_ms_per_s", nan), pb.get("cpu_ms_per_s", nan)
        lines.append(
            f"| {size} | {fmt(ta.get('dets_per_frame', nan))} / {fmt(tb.get('dets_per_frame', nan))} | "
            f"{fmt(fa)} → {fmt(fb)} | {fmt(fb / fa, 2)} | {fmt(la)} → {fmt(lb)} | {fmt(la / lb, 2)} | "
            f"{fmt(ca, 0)} → {fmt(cb, 0)} | {fmt(ca / cb, 2)} |"
        )
    return "\n".join([*lines, ""])


def int8_on_arm(results: dict[str, Any]) -> str:
    """What int8 should do on a Raspberry Pi 4 and 5: expectations, from the instruction sets and this run."""
    pub = PUBLISHED
    cpu = pub["ultralytics_cpu_onnx_ms"]
    pi5 = pub["pi5_yolo11n_onnx_ms"] * cpu["yolov8n-seg"] / cpu["yolo11n"]
    pi4 = pi5 * pub["pi5_over_pi4_cpu"]
    measured = ""
    if results.get("int8"):
        one = next((s for s in results["int8"]["session"] if s["threads"] == 1), None)
        if one is not None:
            measured = f" (here, with VNNI: {one['speedup']:.2f}x at 1 thread)"
    return "\n".join(
        [
            "### int8 on a Raspberry Pi 4 and 5 (expectations, not measured)",
            "",
            "`seg-agent quantize` picks int8 activations on ARM (S8S8, ONNX Runtime's recommendation there). Whether "
            "int8 pays depends on the dot-product instructions:",
            "",
            f"- **Pi 5** (Cortex-A76, Armv8.2-A, `asimddp` in /proc/cpuinfo: `sdot`/`udot`, 16 int8 multiply-adds "
            "per 128-bit instruction against 4 fp32 FMAs): ONNX Runtime's int8 GEMM kernels use them, so the "
            f"convolutions should gain at least what they gain here with VNNI{measured}: expect **1.5-2x** the "
            f"model's frames/s; YOLOv8n-seg ≈ {pi5:.0f} ms fp32 → ≈ {pi5 / 2:.0f}-{pi5 / 1.5:.0f} ms int8.",
            f"- **Pi 4** (Cortex-A72, Armv8.0-A, no dot product): int8 GEMMs fall back to widening multiplies "
            "(`smull`/`smlal`, 8 multiply-adds per instruction at best, plus the widening and requantisation), "
            "and the QuantizeLinear/DequantizeLinear and QLinear activation ops cost as much as before: expect "
            f"**1.0-1.3x** at most, possibly slower for small models (as S8S8 ran slower than fp32 on x86 here, "
            f"174 vs 99 ms); YOLOv8n-seg ≈ {pi4:.0f} ms fp32 → ≈ {pi4 / 1.3:.0f}-{pi4:.0f} ms int8. Keep fp32 on "
            "a Pi 4 unless `seg-agent quantize`'s speed line, run on the Pi itself, shows a clear gain.",
            "- Accuracy does not depend on the CPU: the AP check above holds on both (the same int8 arithmetic), "
            "but int8 against uint8 activations on ARM is still to be measured on the devices.",
        ]
    )


def render_markdown(results: dict[str, Any], command: str) -> str:
    mach = results["machine"]
    parts = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py` from one run on one machine; every ratio is against the floor measured "
        "in the same run. Reproduce:",
        "",
        "```sh",
        "bash benchmarks/setup_env.sh          # once: the separate Ultralytics/PyTorch environment (.venv-bench)",
        "python benchmarks/run.py              # about 7 minutes on 2 cores; --quick: about 4; --help: options",
        "```",
        "",
        f"This file came from: `{command}`",
        "",
        "## Machine",
        "",
        f"- CPU: {mach.get('cpu', '?')}, {mach.get('affinity')} core(s) usable, {mach.get('memory_gb', '?')} GB; "
        f"{mach['platform']}",
        f"- Python {mach['python']}, ONNX Runtime {mach['onnxruntime']}, OpenCV {mach['opencv']}, "
        f"NumPy {mach['numpy']}"
        + (f", Ultralytics {results['ultralytics_version']}" if results.get("ultralytics_version") else ""),
        f"- CPU flags for int8: {' '.join(mach.get('flags', [])) or 'none seen'} (VNNI: "
        f"{'yes' if {'avx512_vnni', 'avx_vnni'} & set(mach.get('flags', [])) else 'no'}, AVX-512: "
        f"{'yes' if 'avx512f' in mach.get('flags', []) else 'no'})",
        f"- Load average at the start {fmt(mach['load_start'][0], 2)}, at the end "
        f"{fmt(results['load_end'][0], 2)}; other busy processes: "
        + ("; ".join(results["busy"]) if results["busy"] else "none seen"),
        f"- Code: {mach.get('commit', '?')}; run took {fmt(results['took_s'] / 60, 1)} min"
        + (" (--quick)" if results["quick"] else ""),
        "",
        "## Results",
        "",
        "Targets (from the issue): pipeline frames/s ≥ 0.90 × floor; capture→PUBACK p50 ≤ 1.15 × floor "
        "latency at 640x480 and 1280x720; dense postprocessing ≤ 10 % of the model's time; faster per frame than "
        "Ultralytics' `predict` on the same ONNX; CPU at 2 fps from a 30 fps source ≤ 1.2 × the model's own CPU "
        "per second; CPU near zero with the source stalled; peak RSS ≤ 300 MB with the demo model at 1920x1080. "
        "✓/✗ mark them.",
        "",
        build_tables(results),
    ]
    stalled = results.get("stalled")
    if stalled:
        parts += [
            f"**Idle**: with a live MJPEG source that stopped sending (the agent waits on it, detects the stall "
            f"and reopens it), the agent used **{fmt(stalled['cpu_ms_per_s'], 1)} ms of CPU per second** "
            f"({fmt(stalled['cpu_ms_per_s'] / 10, 2)} % of one core) over {fmt(stalled['window_s'], 0)} s.",
            "",
        ]
    if results.get("notes"):
        parts += ["Notes: " + " ".join(f"{n}." for n in results["notes"]), ""]
    if results.get("int8"):
        parts += [int8_bench.render(results["int8"]), int8_pipeline_table(results), ""]
    parts += [estimates(results), "", int8_on_arm(results), ""]
    explain = REPO / "benchmarks/NOTES.md"
    if explain.exists():
        parts += [explain.read_text().strip(), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter measurements (noisier)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="the report (default BENCHMARKS.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--work", type=Path, default=REPO / "runs/bench", help="models, clips, temporary state")
    p.add_argument("--bench-python", default=None, help="the benchmark environment's python (.venv-bench)")
    p.add_argument("--models", default="demo,yolov8n-seg", help="comma-separated: demo, yolov8n-seg")
    p.add_argument("--demo", type=Path, default=None, help="ONNX for the demo row (default models/demo-seg.onnx)")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES), help="frame sizes, WxH,...")
    p.add_argument("--no-ultralytics", action="store_true", help="skip the Ultralytics comparison")
    p.add_argument("--from-json", type=Path, default=None, help="only render --out from a saved --json file")
    p.add_argument(
        "--int8",
        default=None,
        help="add the demo model's int8 twin: an ONNX file, or 'auto' to make one with seg-agent quantize",
    )
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        args.out.write_text(render_markdown(saved, saved.get("command", "python benchmarks/run.py")))
        log(f"wrote {args.out} from {args.from_json}")
        return 0
    started = time.time()
    limit_helper_threads()  # the in-process stages run as the agent runs them: one OpenCV and OpenBLAS thread
    plan = Plan.make(args.quick)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    python = bench_python(args.bench_python)
    results: dict[str, Any] = {"machine": machine(), "busy": busy_processes(), "quick": args.quick, "models": []}
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    demo_path = args.demo.resolve() if args.demo else REPO / "models/demo-seg.onnx"
    int8_path = None
    if args.int8 == "auto":
        log("quantizing the demo model (seg-agent quantize)")
        int8_path, _ = int8_bench.quantize_demo(demo_path, work)
    elif args.int8:
        int8_path = Path(args.int8).resolve()
    models, notes = prepare_models(work, wanted, python, args.demo.resolve() if args.demo else None, int8_path)
    results["notes"] = notes
    if python is None:
        results["ultralytics_note"] = "no benchmark environment"
    elif args.no_ultralytics:
        results["ultralytics_note"] = "skipped (--no-ultralytics)"
    probe = np.zeros((480, 640, 3), np.uint8)
    floors: dict[str, Floor] = {}
    for m in models:
        log(f"{m.key}: floor")
        floors[m.key] = Floor(m, probe)
        floors[m.key].choose(plan.floor_runs)
        log(f"{m.key}: floor {m.floor['best_ms']:.1f} ms ({m.floor['best_threads']} threads)")
    videos = make_videos(work, sizes)
    packets = {size: read_packets(videos[size], max(plan.stage_runs, 8)) for size in sizes}
    with broker(work) as mq:
        for m in models:
            onnx = OnnxModel(m.path, threads=int(m.floor["best_threads"]))
            entry: dict[str, Any] = {
                "key": m.key,
                "note": m.note,
                "input_hw": list(m.input_hw),
                "num_classes": m.num_classes,
                "floor": m.floor,
                "sizes": {},
            }
            for w, h in sizes:
                size_key = f"{w}x{h}"
                row: dict[str, Any] = {}
                floor = floors[m.key]
                since = floor.mark()
                floor.sample(plan.floor_runs // 2)
                log(f"{m.key} {size_key}: stages")
                row["stages"] = measure_stages(m, onnx, packets[(w, h)], (w, h), plan)
                floor.sample(plan.floor_runs // 2)
                log(f"{m.key} {size_key}: pipeline, throughput")
                row["throughput"] = pipeline_throughput(mq, work, m, videos[(w, h)], plan)
                floor.sample(plan.floor_runs // 2)
                if CORES >= SESSIONS:
                    log(
                        f"{m.key} {size_key}: pipeline, throughput, {SESSIONS} sessions x {CORES // SESSIONS} thread(s)"
                    )
                    row["throughput_sessions"] = pipeline_throughput(
                        mq, work, m, videos[(w, h)], plan, sessions=SESSIONS
                    )
                    floor.sample(plan.floor_runs // 2)
                log(f"{m.key} {size_key}: pipeline, paced at {PACED_FPS:g} fps")
                row["paced"] = pipeline_paced(mq, work, m, videos[(w, h)], plan)
                floor.sample(plan.floor_runs // 2)
                row["floor"] = floor.local(since)
                entry["sizes"][size_key] = row
            if python is not None and not args.no_ultralytics:
                log(f"{m.key}: Ultralytics predict")
                try:
                    ul = ultralytics_predict(python, work, m, {s: packets[s] for s in sizes}, plan)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    results["ultralytics_note"] = f"failed: {exc}"
                else:
                    results["ultralytics_version"] = ul.get("ultralytics")
                    results["ultralytics_nms"] = ul.get("nms")
                    for key, value in ul["sizes"].items():
                        entry["sizes"].setdefault(key, {})["ultralytics"] = value
                    for key, value in ul["low_conf"].items():
                        entry["sizes"].setdefault(key, {})["ultralytics_low"] = value
            entry["floor"] = m.floor  # the median over every floor sample of the run
            results["models"].append(entry)
            del onnx
        if int8_path is not None:
            log("fp32 vs int8: session, detect, mask AP, side by side")
            results["int8"] = int8_bench.compare(
                demo_path, int8_path, work, heldout_n=100 if args.quick else 200, runs=20 if args.quick else 40
            )
        if models:
            demo = next((m for m in models if m.key == "demo"), models[0])
            log("idle: a stalled live source")
            results["stalled"] = pipeline_stalled(mq, work, demo, plan)
    results["load_end"] = os.getloadavg()
    results["took_s"] = time.time() - started
    command = "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    results["command"] = command.strip()
    report = render_markdown(results, command.strip())
    args.out.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(build_tables(results))
    log(f"wrote {args.out}")
    shutil.rmtree(work / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
