"""Frames/s of the real pipeline with snapshots and Prometheus metrics on against both off, in one run.

    python benchmarks/features.py [--model models/demo-seg.onnx] [--size 1280x720] [--pairs 3]
                                  [--seconds 8] [--warmup 3] [--snapshot-interval 1] [--scrape-interval 1]

Each measurement is ``benchmarks/pipeline.py --mode throughput`` (the real ``agent.daemon.Agent`` in a
subprocess, a looping MJPG clip of ``agent.synth`` shapes read with ``fps: 0, realtime: false``, every result
through a throwaway Mosquitto): results acknowledged per second in the window after the warm-up. Runs
alternate off, on, on, off, ... (``--pairs`` of each) so that a machine whose load drifts slows both alike;
the figure is the ratio of the medians, on / off (issue 16's target: >= 0.97).

"On" is harsher than a deployment: a snapshot every ``--snapshot-interval`` seconds (the default
configuration says 10) and ``/metrics`` scraped every ``--scrape-interval`` seconds by this process over
HTTP (Prometheus scrapes every 15-60 s), so the cost of both is visible at all. The CPU seconds of the
``snapshots`` and ``metrics`` threads (request threads included) per window are reported too, and results
per CPU second of the agent (on / off), which a machine shared with other work disturbs less than frames/s.
In process: the snapshot's render time (decode, draw, encode: on the snapshot thread) and each Sink tap's
time per result (on the camera's worker thread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from agent.config import SnapshotSettings  # noqa: E402
from agent.frames import Frame  # noqa: E402
from agent.metrics import ResultTally  # noqa: E402
from agent.router import Outcome  # noqa: E402
from agent.snapshots import Snapshots, render  # noqa: E402
from agent.synth import render_video  # noqa: E402
from tests.mosquitto import Mosquitto, free_port  # noqa: E402

TARGET = 0.97


def config(path: Path, broker_port: int, model: Path, video: Path, threads: int, on: dict[str, Any] | None) -> Path:
    doc: dict[str, Any] = {
        "device_id": "bench",
        "log_level": "warning",
        "cameras": [{"name": "cam0", "source": str(video), "fps": 0, "realtime": False, "loop": True}],
        "inference": {"mode": "local", "local": {"model": str(model), "threads": threads, "sessions": 1}},
        "mqtt": {"host": "127.0.0.1", "port": broker_port},
        "state_dir": str(path.parent / "state"),
    }
    if on is not None:
        doc["snapshots"] = {"enabled": True, "interval_s": on["snapshot_interval"]}
        doc["metrics"] = {"enabled": True, "port": on["metrics_port"]}
    path.write_text(yaml.safe_dump(doc))
    return path


class Scraper:
    """GETs /metrics every ``interval`` seconds while the run lasts; counts the good answers."""

    def __init__(self, port: int, interval: float) -> None:
        self.port, self.interval = port, interval
        self.ok = self.failed = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                    r.read()
                self.ok += 1
            except OSError:
                self.failed += 1  # before the server is up, and after it stopped


def measure(args: argparse.Namespace, broker_port: int, video: Path, work: Path, on: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        port = free_port()
        extra = {"snapshot_interval": args.snapshot_interval, "metrics_port": port} if on else None
        cfg = config(Path(tmp) / "agent.yaml", broker_port, args.model, video, args.threads, extra)
        scraper = Scraper(port, args.scrape_interval) if on else None
        if scraper is not None:
            scraper.thread.start()
        cmd = [sys.executable, "-m", "benchmarks.pipeline", "--config", str(cfg), "--mode", "throughput"]
        cmd += ["--seconds", str(args.seconds), "--warmup", str(args.warmup)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
        if scraper is not None:
            scraper.stopping.set()
            scraper.thread.join(10)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmarks.pipeline failed ({proc.returncode}): {proc.stderr[-800:]}")
    r = json.loads(lines[-1])
    threads = r.get("thread_cpu_s", {})
    extra_cpu = sum(v for k, v in threads.items() if k in ("snapshots", "metrics") or "process_request" in k)
    return {
        "on": on,
        "fps": r["results_in_window"] / r["window_s"],
        "results_per_cpu_s": r["results_in_window"] / max(1e-9, r["cpu_s"]),  # less sensitive to others' load
        "cpu_s": r["cpu_s"],
        "feature_thread_cpu_s": extra_cpu,
        "scrapes": None if scraper is None else scraper.ok,
    }


def render_ms(size: tuple[int, int], instances: int = 20, reps: int = 15) -> float:
    """Median ms of one snapshot (decode of an undecoded JPEG frame at the reduction that covers 480 px, the
    drawing of ``instances`` polygons and boxes, the JPEG encode), on the snapshot thread's work alone."""
    w, h = size
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    pixels = cv2.GaussianBlur(pixels, (0, 0), 3)  # camera-like: compresses like a picture, not like noise
    jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    preds = []
    for _ in range(instances):
        cx, cy, r = float(rng.uniform(0, w)), float(rng.uniform(0, h)), float(rng.uniform(20, h / 6))
        angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = [{"x": cx + r * np.cos(a), "y": cy + r * np.sin(a)} for a in angles]
        preds.append(
            {"x": cx, "y": cy, "width": 2 * r, "height": 2 * r, "confidence": 0.8, "class": "c", "points": pts}
        )
    times = []
    for _ in range(reps):
        frame = Frame("cam0", 1, 0.0, None, 0, jpeg=jpeg)
        t0 = time.perf_counter()
        render(frame, {"predictions": preds}, SnapshotSettings())
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def tap_us(reps: int = 20000) -> dict[str, float]:
    """Median µs per result on the camera's worker thread of each Sink tap (20 predictions, snapshot not due)."""
    frame = Frame("cam0", 1, 0.0, np.zeros((8, 8, 3), np.uint8), 0)
    preds = [{"class": f"c{i % 3}", "points": []} for i in range(20)]
    outcome = Outcome({"predictions": preds}, "local", 12.0, None)
    snaps = Snapshots(SnapshotSettings(enabled=True, interval_s=1e9), lambda t, b: None, "b")
    snaps.deliver(frame, 1, outcome)  # the first is due; every later one is not
    out: dict[str, float] = {}
    for name, tap in (("snapshots", snaps.deliver), ("metrics", ResultTally().deliver)):
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(reps):
                tap(frame, i, outcome)
            samples.append((time.perf_counter() - t0) / reps * 1e6)
        out[name] = round(statistics.median(samples), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "demo-seg.onnx")
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the clip")
    p.add_argument("--threads", type=int, default=1, help="inference.local.threads")
    p.add_argument("--pairs", type=int, default=3, help="runs of each, interleaved off, on, on, off, ...")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--snapshot-interval", type=float, default=1.0)
    p.add_argument("--scrape-interval", type=float, default=1.0)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = render_video(work / "clip.avi", seconds=3.0, fps=30.0, size=(w, h), seed=7, quality=80)
        with Mosquitto(work / "broker") as mq:
            order = [i % 4 in (1, 2) for i in range(2 * args.pairs)]  # off, on, on, off, off, on, ...
            for on in order:
                runs.append(measure(args, mq.port, video, work, on))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    off = statistics.median(r["fps"] for r in runs if not r["on"])
    on = statistics.median(r["fps"] for r in runs if r["on"])
    summary = {
        "tap_us_per_result": tap_us(),
        "render_ms_median": {f"{sw}x{sh}": round(render_ms((sw, sh)), 2) for sw, sh in ((1280, 720), (1920, 1080))},
        "size": args.size,
        "model": str(args.model.name),
        "fps_off_median": round(off, 2),
        "fps_on_median": round(on, 2),
        "ratio": round(on / off, 3),
        "results_per_cpu_s_ratio": round(
            statistics.median(r["results_per_cpu_s"] for r in runs if r["on"])
            / statistics.median(r["results_per_cpu_s"] for r in runs if not r["on"]),
            3,
        ),
        "target": TARGET,
        "feature_thread_cpu_s_per_window": statistics.median(r["feature_thread_cpu_s"] for r in runs if r["on"]),
        "load_1min": os.getloadavg()[0],
        "cores": len(os.sched_getaffinity(0)),
        "runs": runs,
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
