"""Serverless throughput: processed frames per second against a hosted API with fixed latency, by max_in_flight.

The real daemon (``python -m agent run``, ``inference.mode: serverless``) reads a video file at its own pace
(``realtime: true``) sampled at ``--fps``, against the fake hosted API of the tests (a real HTTP server on
loopback, every answer delayed by ``--latency`` seconds) and a real Mosquitto. For each
``serverless.max_in_flight`` N the achieved rate is counted from the published results, by their capture
timestamps in a measurement window after a warm-up, and compared with the ideal ``min(fps, N / latency)``.

    python benchmarks/serverless_throughput.py                      # N = 1 2 4 8, 300 ms, 20 fps
    python benchmarks/serverless_throughput.py --in-flight 2 4 --seconds 5 --repeats 1

The fake answers with TCP_NODELAY set, as production HTTP servers do (see tests/fake_roboflow.py).

Needs Mosquitto (``mosquitto`` on PATH or /usr/sbin/mosquitto).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import yaml  # noqa: E402

from tests.fake_roboflow import FakeRoboflow, draw_scene  # noqa: E402
from tests.mosquitto import MOSQUITTO, Mosquitto, Subscriber  # noqa: E402

KEY = "bench-key"
MODEL_ID = "shapes/3"
DEVICE = "bench"
TOPIC = f"seg-agent/{DEVICE}/detections"


def write_video(path: Path, *, fps: float, seconds: float, width: int, height: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter could not open {path}")
    try:
        for i in range(round(fps * seconds)):
            writer.write(draw_scene(width, height, shift=(i * 5) % 120 - 60))
    finally:
        writer.release()
    return path


def write_config(directory: Path, *, video: Path, fps: float, in_flight: int, broker_port: int, api_url: str) -> Path:
    doc: dict[str, Any] = {
        "device_id": DEVICE,
        "log_level": "info",
        "cameras": [{"name": "cam0", "source": str(video), "fps": fps, "loop": True, "realtime": True}],
        "inference": {
            "mode": "serverless",
            "serverless": {
                "api_url": api_url,
                "model_id": MODEL_ID,
                "api_key": "${ROBOFLOW_API_KEY}",
                "max_in_flight": in_flight,
                "timeout_s": 10,
            },
        },
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "state_dir": str(directory / "state"),
        "health": {"interval_s": 5},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def results(sub: Subscriber) -> list[tuple[float, float]]:
    """(capture time, latency_ms) of every published result."""
    out = []
    for payload in sub.payloads(TOPIC):
        msg = json.loads(payload)
        out.append((datetime.fromisoformat(msg["timestamp"]).timestamp(), float(msg["latency_ms"])))
    return out


def measure(
    workdir: Path, *, video: Path, fps: float, in_flight: int, broker: Mosquitto, fake: FakeRoboflow, args: Any
) -> dict[str, Any]:
    """One daemon run; the processed-frame rate over the window, and the median of its 1 s bins."""
    config = write_config(workdir, video=video, fps=fps, in_flight=in_flight, broker_port=broker.port, api_url=fake.url)
    sub = Subscriber(broker.port, TOPIC)
    log = (workdir / "agent.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ROBOFLOW_API_KEY": KEY, "PYTHONUNBUFFERED": "1"},
    )
    try:
        if not sub.wait_until(lambda: len(sub.payloads(TOPIC)) > 0, 60):
            raise RuntimeError(f"no result within 60 s; see {workdir / 'agent.log'}")
        time.sleep(args.warmup)
        start = time.time()
        end = start + args.seconds
        # results of frames captured in the window arrive within a few call latencies after it
        time.sleep(max(0.0, end - time.time()) + 2 * args.latency + 1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        sub.close()
    window = [(t, ms) for t, ms in results(sub) if start <= t < end]
    times = [t for t, _ in window]
    bins = [0] * int(args.seconds)
    for t in times:
        k = int(t - start)
        if k < len(bins):
            bins[k] += 1
    requests = fake.calls()
    return {
        "rate": len(times) / args.seconds,
        "median_1s": statistics.median(bins) if bins else 0.0,
        "call_ms": statistics.median(ms for _, ms in window) if window else 0.0,
        "calls": requests,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4, 8], help="max_in_flight values")
    parser.add_argument("--latency", type=float, default=0.3, help="the endpoint's answer delay, s")
    parser.add_argument("--fps", type=float, default=20.0, help="camera sampling rate")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after the first result before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="runs per value; the median is reported")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    if MOSQUITTO is None:
        print("mosquitto is not installed", file=sys.stderr)
        return 2

    command = " ".join(["python benchmarks/serverless_throughput.py", shlex.join(sys.argv[1:])]).strip()
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        work = Path(tmp)
        video = write_video(
            work / "scene.avi", fps=2 * args.fps, seconds=4.0, width=args.width, height=args.height
        )  # the file runs at twice the sampling rate: every sample is a distinct frame
        fake = FakeRoboflow(api_key=KEY, model_id=MODEL_ID)
        fake.set_fault("slow", slow_s=args.latency)
        broker = Mosquitto(work / "broker").start()
        rows = []
        try:
            for n in args.in_flight:
                runs = []
                for r in range(args.repeats):
                    before = fake.calls()
                    result = measure(
                        work / f"n{n}-r{r}", video=video, fps=args.fps, in_flight=n, broker=broker, fake=fake, args=args
                    )
                    result["calls"] -= before
                    runs.append(result)
                    print(f"  max_in_flight {n} run {r + 1}: {result['rate']:.2f} frames/s", flush=True)
                ideal = min(args.fps, n / args.latency)
                rate = statistics.median(run["rate"] for run in runs)
                median_1s = statistics.median(run["median_1s"] for run in runs)
                call_ms = statistics.median(run["call_ms"] for run in runs)
                rows.append((n, ideal, rate, median_1s, call_ms, rate / ideal, [round(run["rate"], 2) for run in runs]))
        finally:
            broker.kill()
            fake.close()

    print()
    print(
        f"serverless throughput: endpoint latency {args.latency * 1000:.0f} ms, camera {args.fps:g} fps "
        f"({args.width}x{args.height} file, realtime), window {args.seconds:g} s, median of {args.repeats} run(s)"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end")
    print(
        f"{'max_in_flight':>13} {'ideal/s':>8} {'achieved/s':>10} {'median 1s bin':>13} {'ratio':>6}"
        f" {'call p50 ms':>11} {'N/call':>7}  runs"
    )
    for n, ideal, rate, median_1s, call_ms, ratio, per_run in rows:
        bound = min(args.fps, n * 1000 / call_ms) if call_ms else 0.0
        cells = f"{n:>13} {ideal:>8.2f} {rate:>10.2f} {median_1s:>13.1f} {ratio:>6.2f} {call_ms:>11.1f} {bound:>7.2f}"
        print(f"{cells}  {per_run}")
    print("ideal = min(fps, N / latency); call p50 = the daemon's own latency_ms per frame (encode + HTTP + answer);")
    print("N/call = min(fps, N / call p50): the rate the calls' real duration allows")
    print(f"\nreproduce: {command}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
