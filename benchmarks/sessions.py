"""Whole local frames per second under two thread layouts: one session with ``cores`` threads, or ``n`` sessions
side by side (``inference.local.sessions``) with ``cores / n`` threads each; with ``--auto-fps``, also what
``sessions: auto`` picks (:mod:`agent.session_plan`, through the pipeline's own loader) for a camera sampled at
each rate (0: as fast as possible), and that layout's figures measured the same way.

``python benchmarks/sessions.py MODEL.onnx VIDEO.avi [--sessions 2] [--frames 120] [--auto-fps 0 2]``

A frame is what the agent does with it locally: the MJPEG packet decoded at the reduction the model allows,
letterbox, ``session.run``, postprocessing and polygons (``OnnxModel.detect``). Each layout runs twice,
interleaved, with a lone-frame latency (frames 0.2 s apart) measured after it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import parse_settings
from agent.jpeg import decode_jpeg, reduction_factor
from agent.model import OnnxModel, SessionPool, limit_helper_threads
from agent.pipeline import open_local_model
from agent.session_plan import SessionPlan, usable_cores

Detector = OnnxModel | SessionPool


def _packets(video: Path, limit: int = 60) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not cap.set(cv2.CAP_PROP_FORMAT, -1):
        raise SystemExit(f"{video}: not readable as raw packets (an MJPG file is needed)")
    out = []
    while len(out) < limit and cap.grab():
        ok, packet = cap.retrieve()
        if ok:
            out.append(np.array(packet, copy=True))
    if not out:
        raise SystemExit(f"{video}: no frames")
    return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _throughput(
    models: Sequence[Detector], packets: list[np.ndarray], frame_hw: tuple[int, int], n: int
) -> tuple[float, float]:
    """Frames/s and CPU ms per frame with one caller thread per model."""
    factor = reduction_factor(frame_hw, models[0].needed_hw(frame_hw))
    counter = iter(range(n))
    lock = threading.Lock()

    def work(model: Detector) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            image = decode_jpeg(packets[i % len(packets)], factor)
            assert image is not None
            model.detect(image, confidence=0.4, overlap=0.3, frame_hw=frame_hw)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    cpu0, t0 = _cpu_s(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0), (_cpu_s() - cpu0) / n * 1000


def _lone_frame_ms(model: Detector, packets: list[np.ndarray], frame_hw: tuple[int, int], n: int = 15) -> float:
    factor = reduction_factor(frame_hw, model.needed_hw(frame_hw))
    times = []
    for i in range(n):
        time.sleep(0.2)
        t0 = time.perf_counter()
        image = decode_jpeg(packets[i % len(packets)], factor)
        assert image is not None
        model.detect(image, confidence=0.4, overlap=0.3, frame_hw=frame_hw)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _auto(model: Path, video: Path, fps: float) -> tuple[OnnxModel | SessionPool, SessionPlan]:
    """What ``sessions: auto`` opens for one camera reading ``video`` at ``fps`` (0: every frame, as fast as
    the model goes), through the pipeline's own loader (it measures the first session as the daemon does)."""
    doc = {
        "device_id": "bench",
        "cameras": [{"name": "cam0", "source": str(video.resolve()), "fps": fps, "realtime": fps > 0}],
        "inference": {"mode": "local", "local": {"model": str(model.resolve())}},
        "mqtt": {"host": "127.0.0.1"},
        "state_dir": str(Path(tempfile.gettempdir()) / "seg-agent-bench-sessions"),
    }
    detector, _, plan = open_local_model(parse_settings(doc, base_dir=Path.cwd(), env={}))
    return detector, plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/sessions.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("video", type=Path, help="an MJPG video file (models/sample.avi; benchmarks/run.py writes more)")
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions of every layout (medians)")
    p.add_argument(
        "--auto-fps", type=float, nargs="*", default=[], help="camera sample rates to show sessions: auto's pick for"
    )
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit_helper_threads()  # one thread for OpenCV and OpenBLAS, as the daemon runs
    packets = _packets(args.video)
    first = cv2.imdecode(packets[0], cv2.IMREAD_COLOR)
    frame_hw = (int(first.shape[0]), int(first.shape[1]))
    per = max(1, cores // args.sessions)
    one = OnnxModel(args.model, threads=cores)
    layouts: dict[str, list[Detector]] = {
        f"1 session x {cores} threads": [one],
        f"{args.sessions} sessions x {per} thread(s)": [
            OnnxModel(args.model, threads=per) for _ in range(args.sessions)
        ],
    }
    plans: list[tuple[float, SessionPlan]] = []
    for fps in args.auto_fps:
        detector, plan = _auto(args.model, args.video, fps)
        plans.append((fps, plan))
        size = detector.size if isinstance(detector, SessionPool) else 1
        layouts[f"auto @ {'fps 0' if fps <= 0 else f'{fps:g} fps'}: {size} x {plan.threads or cores}"] = [
            detector
        ] * size
    for callers in layouts.values():
        _throughput(callers, packets, frame_hw, 5)  # warm-up
    rows: dict[str, list[tuple[float, float, float]]] = {label: [] for label in layouts}
    load0 = os.getloadavg()[0]
    for _ in range(args.reps):
        for label, callers in layouts.items():
            rows[label].append(
                (*_throughput(callers, packets, frame_hw, args.frames), _lone_frame_ms(callers[0], packets, frame_hw))
            )
    print(
        f"{args.model.name}, {frame_hw[1]}x{frame_hw[0]} frames, {cores} cores ({usable_cores()} physical), "
        f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}, medians of {args.reps}"
    )
    for fps, plan in plans:
        print(f"  auto @ fps {fps:g}: {plan.describe()}")
    base = statistics.median(r[0] for r in rows[next(iter(rows))])
    base_lone = statistics.median(r[2] for r in rows[next(iter(rows))])
    for label, runs in rows.items():
        fps = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        lone = statistics.median(r[2] for r in runs)
        print(
            f"  {label:28s} {fps:6.1f} frames/s ({fps / base:.2f}x)  {cpu:5.1f} ms CPU/frame  "
            f"lone frame {lone:5.1f} ms ({lone / base_lone:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
