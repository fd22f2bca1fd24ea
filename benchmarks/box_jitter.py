"""How far the demo model's box bottom centres (a line's anchor) stray from the truth's, on synthetic clips.

    python benchmarks/box_jitter.py [--seeds 200 201 ...] [--seconds 20]

Each frame of a clip (``agent/synth_tracks.py``) goes through ``OnnxModel.detect`` and the published API
object, as the agent's lines see it (``predictions_xyxy``); each detection is paired with the truth box it
overlaps most (IoU >= 0.5; objects at least ``min_visibility`` visible and in one piece). Per pair, the
anchor's residual (detection minus truth) in y (what a level line sees) and in x (an upright line). Prints,
in pixels: the residuals' std, their std about each object's own mean (the wobble round a steady bias),
(and 1.4826 x its median absolute value, the std the bulk of them would have without the tails: boxes of
objects half behind another), the std of their change from one frame to the next (what flips a side), and
percentiles and the largest of |residual - object's mean|: what a line's dead band (``band``) must hold.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.model import OnnxModel  # noqa: E402
from agent.nms import box_iou_xyxy  # noqa: E402
from agent.synth_tracks import render_track_clip  # noqa: E402
from agent.tracking import predictions_xyxy  # noqa: E402
from benchmarks.clips import api_frames, read_truth  # noqa: E402


def residuals(model: OnnxModel, truth_path: Path) -> list[tuple[int, int, float, float]]:
    """(frame, object id, dx, dy) of each paired detection's anchor."""
    doc = read_truth(truth_path)
    min_vis = float(doc.get("min_visibility", 0.5))
    out: list[tuple[int, int, float, float]] = []
    for f, _frame, api in api_frames(model, truth_path, doc):
        objs = doc["frames"][f]
        boxes = predictions_xyxy(api["predictions"])
        keep = [o for o in objs if o["visibility"] >= min_vis and not o.get("split")]
        if not keep or len(boxes) == 0:
            continue
        truth = np.array([o["box_xyxy"] for o in keep], dtype=np.float64)
        iou = box_iou_xyxy(boxes, truth)
        for d in range(len(boxes)):
            t = int(np.argmax(iou[d]))
            if iou[d, t] < 0.5 or np.argmax(iou[:, t]) != d:  # each truth box its best detection only
                continue
            dx = (boxes[d, 0] + boxes[d, 2]) / 2 - (truth[t, 0] + truth[t, 2]) / 2
            out.append((f, int(keep[t]["id"]), float(dx), float(boxes[d, 3] - truth[t, 3])))
    return out


def _summary(rows: list[tuple[int, int, float, float]], col: int, clip_of: list[int]) -> str:
    v = np.array([r[col] for r in rows])
    key = [(c, r[1]) for c, r in zip(clip_of, rows, strict=True)]
    means: dict[tuple[int, int], float] = {}
    for k in set(key):
        means[k] = float(np.mean([x for kk, x in zip(key, v, strict=True) if kk == k]))
    about = np.array([x - means[k] for k, x in zip(key, v, strict=True)])
    steps = [v[i] - v[i - 1] for i in range(1, len(rows)) if key[i] == key[i - 1] and rows[i][0] == rows[i - 1][0] + 1]
    a = np.abs(about)
    return (
        f"std {v.std():.2f}, about the object's mean {about.std():.2f} (robust {1.4826 * np.median(a):.2f}), "
        f"frame to frame {np.std(steps):.2f}; |about| p50 {np.median(a):.2f} p90 {np.percentile(a, 90):.2f} "
        f"p95 {np.percentile(a, 95):.2f} p99 {np.percentile(a, 99):.2f} max {a.max():.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(200, 210)))
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    model = OnnxModel(REPO / "models" / "demo-seg.onnx")
    rows: list[tuple[int, int, float, float]] = []
    clip_of: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            got = residuals(model, render_track_clip(Path(tmp) / f"clip{seed}.avi", seconds=args.seconds, seed=seed))
            rows += got
            clip_of += [seed] * len(got)
    print(f"{len(rows)} paired detections on seeds {args.seeds}, anchor residual in px (640x480 frames):")
    print(f"  y (a level line): {_summary(rows, 3, clip_of)}")
    print(f"  x (an upright line): {_summary(rows, 2, clip_of)}")


if __name__ == "__main__":
    main()
