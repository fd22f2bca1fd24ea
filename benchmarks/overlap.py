"""Overlap for accelerators, measured with a simulated one: frames/s and latency against frames in flight.

    python benchmarks/overlap.py [--ms 4 8] [--in-flight 1 2 3 4] [--seconds 10] [--reps 3]

The real agent (``benchmarks.pipeline``: capture of an MJPG file, letterbox, decode, masks, polygons, JSON,
SQLite outbox, MQTT to a throwaway Mosquitto) runs with the demo model, except that ``session.run`` is a
simulated accelerator: it sleeps ``T`` ms (no CPU) and returns the outputs the real model gave on the clip's
first frame (precomputed once, so every frame's decode finds the same objects a real run finds). Each row
is ``inference.local.frames_in_flight`` = 1 (no overlap: one frame at a time) up to 4 (frame N's CPU work
beside frame N+1's run, and capture beside both). The target is frames/s >= 0.9 x min(1000 / T, cores x
1000 / CPU-ms-per-frame), where CPU-ms-per-frame is the agent's whole process CPU per result in that row.

``--cpu`` adds the CPU path (the real model, no simulation): throughput, and a lone frame's latency (2 fps
paced, so frames never overlap) with 1 and 2 frames in flight: the overlap must not cost a lone frame.
Rows are repeated ``--reps`` times, interleaved (every setting once, then again), and medians are printed:
the machine is shared, so single runs swing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

MODEL = REPO / "models" / "demo-seg.onnx"
VIDEO = REPO / "models" / "sample.avi"


class SimulatedSession:
    """An ONNX Runtime session whose ``run`` takes ``ms`` of wall time and no CPU, returning ``outputs``."""

    def __init__(self, real: Any, ms: float, outputs: list[Any]) -> None:
        self._real = real
        self._s = ms / 1000.0
        self._outputs = outputs

    def __getattr__(self, name: str) -> Any:  # inputs, outputs, metadata, providers: the real session's
        return getattr(self._real, name)

    def run(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
        time.sleep(self._s)
        by_name = dict(zip([o.name for o in self._real.get_outputs()], self._outputs, strict=True))
        return [by_name[n] for n in names]


def _real_outputs(session: Any) -> list[Any]:
    """The model's outputs on the clip's first frame, letterboxed as the agent does."""
    import cv2

    from agent.preprocess import letterbox

    capture = cv2.VideoCapture(str(VIDEO))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read {VIDEO}")
    shape = session.get_inputs()[0].shape
    tensor, _ = letterbox(frame, (int(shape[2]), int(shape[3])))
    return list(session.run(None, {session.get_inputs()[0].name: tensor}))


def child(ms: float, argv: list[str]) -> int:
    """``benchmarks.pipeline`` with every session opened by the agent simulated (``ms`` > 0)."""
    import agent.model
    from benchmarks import pipeline

    if ms > 0:
        real_open = agent.model.open_session

        def open_simulated(*args: Any, **kwargs: Any) -> Any:
            real = real_open(*args, **kwargs)
            return SimulatedSession(real, ms, _real_outputs(real))

        agent.model.open_session = open_simulated  # type: ignore[assignment]
    return pipeline.main(argv)


def _config(path: Path, port: int, camera: dict[str, Any], in_flight: int, state: Path, threads: int) -> Path:
    config = {
        "device_id": "bench",
        "log_level": "warning",
        "cameras": [{"name": "cam0", **camera}],
        "inference": {
            "mode": "local",
            "confidence": 40,
            "overlap": 30,
            "local": {"model": str(MODEL), "threads": threads, "frames_in_flight": in_flight},
        },
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(state),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _run(port: int, ms: float, in_flight: int, mode: str, seconds: float, threads: int) -> dict[str, Any]:
    camera: dict[str, Any] = (
        {"source": str(VIDEO), "fps": 0, "realtime": False, "loop": True}
        if mode == "throughput"
        else {"source": str(VIDEO), "fps": 2, "realtime": True, "loop": True}
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp) / "agent.yaml", port, camera, in_flight, Path(tmp) / "state", threads)
        args = ["--config", str(config), "--mode", mode, "--seconds", str(seconds), "--warmup", "3"]
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(ms), *args],
            capture_output=True,
            text=True,
            timeout=seconds * 4 + 120,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr[-800:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    rows = [row for row in r["rows"] if row[2] >= r["window_start"]]
    results = max(1, r["results_in_window"])
    return {
        "fps": r["results_in_window"] / r["window_s"],
        "cpu_ms_per_frame": r["cpu_s"] * 1000 / results,
        "latency_ms": statistics.median([(ack - cap) * 1000 for cap, _, ack in rows]) if rows else float("nan"),
    }


def _median_rows(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(float(argv[1]), argv[2:])
    p = argparse.ArgumentParser(prog="python benchmarks/overlap.py", description=__doc__.split("\n")[0])
    p.add_argument("--ms", type=float, nargs="+", default=[4.0, 8.0], help="simulated session.run times")
    p.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 3, 4], help="frames_in_flight values")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cpu", action="store_true", help="also the CPU path: throughput and a lone frame's latency")
    args = p.parse_args(argv)
    from tests.mosquitto import Mosquitto

    cores = os.cpu_count() or 1
    print(f"{cores} cores; load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    settings = [("sim", ms, n) for ms in args.ms for n in args.in_flight]
    if args.cpu:
        settings += [("cpu", 0.0, n) for n in (1, 2)] + [("lone", 0.0, n) for n in (1, 2)]
    runs: dict[tuple[str, float, int], list[dict[str, Any]]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        for _ in range(args.reps):
            for kind, ms, n in settings:
                mode = "paced" if kind == "lone" else "throughput"
                runs[(kind, ms, n)].append(_run(broker.port, ms, n, mode, args.seconds, threads=cores))
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; medians of {args.reps} runs")
    for (kind, ms, n), done in runs.items():
        m = _median_rows(done)
        if kind == "sim":
            bound = min(1000.0 / ms, cores * 1000.0 / m["cpu_ms_per_frame"])
            print(
                f"  simulated T={ms:g} ms, frames_in_flight {n}: {m['fps']:6.1f} frames/s, "
                f"CPU {m['cpu_ms_per_frame']:5.2f} ms/frame, bound {bound:6.1f} -> {m['fps'] / bound:.2f}x "
                f"(target 0.90x), latency p50 {m['latency_ms']:.1f} ms"
            )
        elif kind == "cpu":
            print(
                f"  CPU path (real model), frames_in_flight {n}: {m['fps']:6.1f} frames/s, "
                f"CPU {m['cpu_ms_per_frame']:5.1f} ms/frame, latency p50 {m['latency_ms']:.1f} ms"
            )
        else:
            print(f"  CPU path, a lone frame (2 fps paced), frames_in_flight {n}: latency p50 {m['latency_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
