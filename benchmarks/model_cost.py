"""Bare ``session.run`` cost and detections per frame of one or more models, side by side in one process.

    python benchmarks/model_cost.py models/demo-seg.onnx models/yolov8n-seg-synth.onnx [--threads 2]
        [--frames 20] [--runs 30] [--seed 1000]

For each model, on 640x480 ``agent.synth`` frames (seed ``--seed``, never used in training): the median
``OnnxModel.run`` time on the letterboxed frames (each model at its own input size, ``--threads`` ONNX
Runtime threads), the models interleaved run by run so both see the same background load (this machine is
shared), and the median detections per frame of ``OnnxModel.detect`` at the agent's thresholds (confidence
0.4, overlap 0.3). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent import synth  # noqa: E402
from agent.model import OnnxModel  # noqa: E402
from agent.preprocess import letterbox  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/model_cost.py")
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--seed", type=int, default=1000)
    args = p.parse_args(argv)
    frames = [synth.render_sample(np.random.default_rng([args.seed, i]), (480, 640))[0] for i in range(args.frames)]
    models = [OnnxModel(m, threads=args.threads) for m in args.models]
    tensors = [[letterbox(f, m.input_hw)[0] for f in frames] for m in models]
    for m, ts in zip(models, tensors, strict=True):
        m.run(ts[0])  # warm-up
    run_ms: list[list[float]] = [[] for _ in models]
    for r in range(args.runs):
        for k in range(len(models)) if r % 2 == 0 else reversed(range(len(models))):
            t0 = time.perf_counter()
            models[k].run(tensors[k][r % len(frames)])
            run_ms[k].append((time.perf_counter() - t0) * 1000)
    out = {}
    for m, ms in zip(models, run_ms, strict=True):
        counts = [len(m.detect(f, confidence=0.4, overlap=0.3)) for f in frames]
        out[str(m.path)] = {
            "input_hw": list(m.input_hw),
            "session_run_ms": round(statistics.median(ms), 1),
            "detections_per_frame": statistics.median(counts),
            "detections_min_max": [min(counts), max(counts)],
            "threads": args.threads,
        }
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
