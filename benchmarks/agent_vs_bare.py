"""The agent's frames/s against the bare model's, interleaved: where the agent loses against ``session.run``.

    python benchmarks/agent_vs_bare.py MODEL VIDEO [--variant NAME:KEY=VALUE,...] [--reps 3] [--seconds 6]
                                       [--threads N] [--paced]

Each repetition runs, in turn and in alternating order: the bare model (a subprocess making back-to-back
``session.run`` calls on the clip's first frame, letterboxed, with ONNX Runtime's default spinning and the
given thread count: what issue 17's target compares with) before and after every agent run, each agent run's
ratio taken against the mean of the two around it, and the real agent (``benchmarks.pipeline``
``--mode throughput``: the looping MJPG file, ``fps: 0``, ``realtime: false``) once per variant. A variant is
a name and the ``inference.local`` keys it sets (``threads``, ``sessions``, ``frames_in_flight``, ``spin``),
e.g. ``--variant base: --variant fif2:frames_in_flight=2``. Printed: medians over the repetitions of
frames/s, the ratio to the bare runs of the same repetition, detections per frame, CPU per result by thread;
``--paced`` adds each variant's lone-frame latency (capture→PUBACK p50 at 2 fps from the file played in real
time), which an overlap must not cost.
"""

from __future__ import annotations

import argparse
import json
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

from tests.mosquitto import Mosquitto  # noqa: E402

_BARE = r"""
import sys, time, cv2, numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[4])
from agent.preprocess import letterbox
path, video, threads, _, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
o = ort.SessionOptions()
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
if threads > 0:
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
cap = cv2.VideoCapture(video)
ok, frame = cap.read()
h, w = s.get_inputs()[0].shape[2:]
tensor, _ = letterbox(frame, (int(h), int(w)))
feed = {s.get_inputs()[0].name: tensor}
t_end = time.perf_counter() + 1.0
while time.perf_counter() < t_end:
    s.run(None, feed)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    s.run(None, feed)
    n += 1
print(n / (time.perf_counter() - t0))
"""


def _bare_fps(model: Path, video: Path, threads: int, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _BARE, str(model), str(video), str(threads), str(REPO), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    keys: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        keys[key.strip()] = yaml.safe_load(value)
    return name, keys


def _agent(
    mq: Mosquitto, model: Path, video: Path, local: dict[str, Any], mode: str, seconds: float, warmup: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        camera = (
            {"source": str(video), "fps": 0, "realtime": False, "loop": True}
            if mode == "throughput"
            else {"source": str(video), "fps": 2, "realtime": True, "loop": True}
        )
        config = {
            "device_id": "bench",
            "log_level": "warning",
            "cameras": [{"name": "cam0", **camera}],
            "inference": {"mode": "local", "confidence": 40, "overlap": 30, "local": {"model": str(model), **local}},
            "mqtt": {"host": "127.0.0.1", "port": mq.port},
            "state_dir": str(Path(tmp) / "state"),
        }
        path = Path(tmp) / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        args = ["--config", str(path), "--mode", mode, "--seconds", str(seconds), "--warmup", str(warmup)]
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.pipeline", *args], capture_output=True, text=True, cwd=REPO
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmarks.pipeline failed ({proc.returncode}): {proc.stderr[-800:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    rows = [(row, n) for row, n in zip(r["rows"], r.get("detections", []), strict=False) if row[2] >= r["window_start"]]
    n = max(1, r["results_in_window"])
    return {
        "fps": r["results_in_window"] / r["window_s"],
        "dets": statistics.mean(c for _, c in rows) if rows else float("nan"),
        "latency_ms": statistics.median((row[2] - row[0]) * 1000 for row, _ in rows) if rows else float("nan"),
        "cpu_ms": r["cpu_s"] * 1000 / n,
        "threads": {k: v * 1000 / n for k, v in r.get("thread_cpu_s", {}).items()},
    }


def _med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/agent_vs_bare.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("video", type=Path)
    p.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (inference.local keys)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument(
        "--bare-seconds", type=float, default=3.0, help="each bare run (one before and after each agent run)"
    )
    p.add_argument("--threads", type=int, default=0, help="the bare runs' intra-op threads (0: ONNX Runtime's)")
    p.add_argument("--paced", action="store_true", help="also each variant's lone-frame latency at 2 fps")
    args = p.parse_args(argv)
    args.model, args.video = args.model.resolve(), args.video.resolve()
    variants = [_variant(v) for v in (args.variant or ["base:"])]
    bare: list[float] = []
    thr: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    paced: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as mq:
        for rep in range(args.reps):
            # B V1 B V2 B ...: each agent run between two bare runs, its ratio against their mean
            order = variants if rep % 2 == 0 else variants[::-1]
            before = _bare_fps(args.model, args.video, args.threads, args.bare_seconds)
            bare.append(before)
            for name, local in order:
                r = _agent(mq, args.model, args.video, local, "throughput", args.seconds, args.warmup)
                after = _bare_fps(args.model, args.video, args.threads, args.bare_seconds)
                bare.append(after)
                r["ratio"] = r["fps"] / ((before + after) / 2)
                thr[name].append(r)
                before = after
                if args.paced:
                    paced[name].append(_agent(mq, args.model, args.video, local, "paced", args.seconds, args.warmup))
            print(f"[{time.strftime('%H:%M:%S')}] rep {rep + 1}: bare {bare[-len(variants) - 1 :]}", file=sys.stderr)
    bare_fps = _med(bare)
    print(f"bare session.run back to back: {bare_fps:.2f} frames/s (median of {len(bare)}: {bare})")
    print("| variant | frames/s | x bare (per rep) | dets/frame | CPU ms/result | lone-frame p50 ms |")
    print("|---|---|---|---|---|---|")
    for name, _ in variants:
        rs = thr[name]
        per_rep = [r["ratio"] for r in rs]
        lone = _med([r["latency_ms"] for r in paced[name]]) if paced[name] else float("nan")
        print(
            f"| {name} | {_med([r['fps'] for r in rs]):.2f} | {_med(per_rep):.3f} "
            f"({', '.join(f'{x:.3f}' for x in per_rep)}) | {_med([r['dets'] for r in rs]):.1f} | "
            f"{_med([r['cpu_ms'] for r in rs]):.1f} | {lone:.1f} |"
        )
    print()
    for name, _ in variants:
        keys = sorted({k for r in thr[name] for k in r["threads"]})
        shown = ", ".join(f"{k} {_med([r['threads'].get(k, 0.0) for r in thr[name]]):.2f}" for k in keys)
        print(f"{name} CPU ms per result by thread: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
