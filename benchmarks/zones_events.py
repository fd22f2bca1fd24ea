"""Cost of zones, lines and events per frame at many objects, against the demo model's time on one frame.

    python benchmarks/zones_events.py [--objects 50] [--frames 300] [--reps 7]

``CameraEvents.observe`` (agent/events.py: zone membership, line crossings, the class vote, events) runs on
``--objects`` tracks walking across a 640 x 480 frame with 3 zones and 2 lines, every track confirmed; the
demo model (models/demo-seg.onnx) runs ``OnnxModel.detect`` on a rendered 640 x 480 frame in the same run.
Medians of ``--reps`` repetitions; the ratio is what matters (the issue's bound: tracking and zones together
at most 2 % of the model's time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.events import CameraEvents  # noqa: E402
from agent.model import OnnxModel  # noqa: E402
from agent.synth import render_sample  # noqa: E402
from agent.zones import LineDef, ZoneDef  # noqa: E402

ZONES = [
    ZoneDef("left", ((0.0, 0.0), (0.4, 0.0), (0.4, 1.0), (0.0, 1.0)), "fraction"),
    ZoneDef("dock", ((380.0, 300.0), (610.0, 300.0), (610.0, 470.0), (380.0, 470.0))),
    ZoneDef("wedge", ((320.0, 40.0), (600.0, 200.0), (340.0, 260.0), (450.0, 150.0))),
]
LINES = [LineDef("gate", (40.0, 240.0), (600.0, 240.0)), LineDef("door", (0.5, 0.0), (0.5, 1.0), "fraction")]


def _walk(n: int, frames: int) -> np.ndarray:
    """(frames, n, 4) boxes bouncing around the frame."""
    rng = np.random.default_rng(5)
    pos = rng.uniform([30, 60], [610, 470], size=(n, 2))
    vel = rng.uniform(-15, 15, size=(n, 2))
    out = np.zeros((frames, n, 4))
    for f in range(frames):
        out[f, :, 0], out[f, :, 1] = pos[:, 0] - 20, pos[:, 1] - 40
        out[f, :, 2], out[f, :, 3] = pos[:, 0] + 20, pos[:, 1]
        pos += vel
        vel[(pos[:, 0] < 30) | (pos[:, 0] > 610), 0] *= -1
        vel[(pos[:, 1] < 60) | (pos[:, 1] > 470), 1] *= -1
    return out


def events_ms(n: int, frames: int) -> float:
    boxes = _walk(n, frames)
    ids = np.arange(1, n + 1, dtype=np.int64)
    classes = ["circle", "rectangle", "triangle"] * (n // 3 + 1)
    scores = np.full(n, 0.8)
    ev = CameraEvents("cam0", device_id="bench", zones=ZONES, lines=LINES, update_interval_s=1.0)
    start = time.perf_counter()
    for f in range(frames):
        ev.observe(1000.0 + f * 0.2, f, (640, 480), ids, boxes[f], classes[:n], scores)
        ev.counts()
    return (time.perf_counter() - start) * 1000.0 / frames


def model_ms(model: OnnxModel, image: np.ndarray, runs: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        model.detect(image, confidence=0.4, overlap=0.3)
    return (time.perf_counter() - start) * 1000.0 / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=50)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    model = OnnxModel(REPO / "models" / "demo-seg.onnx")
    image, _ = render_sample(np.random.default_rng(3), (480, 640))
    model_ms(model, image, 2)  # warm-up
    events_ms(args.objects, 20)
    ev, mo = [], []
    for _ in range(args.reps):  # interleaved, so a busy machine slows both alike
        ev.append(events_ms(args.objects, args.frames))
        mo.append(model_ms(model, image))
    e, m = statistics.median(ev), statistics.median(mo)
    print(f"zones+lines+events, {args.objects} objects, 3 zones, 2 lines: {e:.3f} ms/frame (median of {args.reps})")
    print(f"demo model detect on 640x480: {m:.1f} ms/frame")
    print(f"ratio: {100 * e / m:.2f} % of the model's time")


if __name__ == "__main__":
    main()
