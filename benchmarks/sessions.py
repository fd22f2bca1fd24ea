"""Whole local frames per second under two thread layouts: one session with ``cores`` threads, or ``n`` sessions
side by side (``inference.local.sessions``) with ``cores / n`` threads each. Picks nothing; prints the figures
to choose ``sessions`` and ``threads`` for a device.

``python benchmarks/sessions.py MODEL.onnx VIDEO.avi [--sessions 2] [--frames 120]``

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
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.jpeg import decode_jpeg, reduction_factor
from agent.model import OnnxModel, limit_helper_threads


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
    models: list[OnnxModel], packets: list[np.ndarray], frame_hw: tuple[int, int], n: int
) -> tuple[float, float]:
    """Frames/s and CPU ms per frame with one caller thread per model."""
    factor = reduction_factor(frame_hw, models[0].needed_hw(frame_hw))
    counter = iter(range(n))
    lock = threading.Lock()

    def work(model: OnnxModel) -> None:
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


def _lone_frame_ms(model: OnnxModel, packets: list[np.ndarray], frame_hw: tuple[int, int], n: int = 15) -> float:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/sessions.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("video", type=Path, help="an MJPG video file (benchmarks/run.py writes some under runs/bench)")
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--frames", type=int, default=120)
    args = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit_helper_threads()  # one thread for OpenCV and OpenBLAS, as the daemon runs
    packets = _packets(args.video)
    first = cv2.imdecode(packets[0], cv2.IMREAD_COLOR)
    frame_hw = (int(first.shape[0]), int(first.shape[1]))
    one = OnnxModel(args.model, threads=cores)
    many = [OnnxModel(args.model, threads=max(1, cores // args.sessions)) for _ in range(args.sessions)]
    for m in [one, *many]:
        _throughput([m], packets, frame_hw, 5)  # warm-up
    label_one = f"1 session x {cores} threads"
    label_many = f"{args.sessions} sessions x {max(1, cores // args.sessions)} thread(s)"
    rows: dict[str, list[tuple[float, float, float]]] = {label_one: [], label_many: []}
    for _ in range(2):
        rows[label_one].append(
            (*_throughput([one], packets, frame_hw, args.frames), _lone_frame_ms(one, packets, frame_hw))
        )
        rows[label_many].append(
            (*_throughput(many, packets, frame_hw, args.frames), _lone_frame_ms(many[0], packets, frame_hw))
        )
    print(f"{args.model.name}, {frame_hw[1]}x{frame_hw[0]} frames, {cores} cores")
    base = statistics.median(r[0] for r in rows[label_one])
    for label, runs in rows.items():
        fps = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        lone = statistics.median(r[2] for r in runs)
        print(
            f"  {label:28s} {fps:6.1f} frames/s ({fps / base:.2f}x)  {cpu:5.1f} ms CPU/frame  lone frame {lone:5.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
