"""Line counts on held-out synthetic clips with ground-truth tracks (``agent/synth_tracks.py``), measured.

    python benchmarks/line_counts.py [--seeds 300 301 302] [--seconds 20]

Each clip goes the daemon's way: ``OnnxModel.detect`` (the demo model) → the published API object →
``CameraTracks`` → ``CameraEvents`` with two lines, one across the middle of the frame each way. The truth is
counted from the clip's ground-truth boxes (bottom centres of the objects' boxes, frames where they are at
least ``min_visibility`` visible), by a plain scalar rule written here apart from agent/zones.py: a crossing
is a change of side between two consecutive sightings of one object whose step passes through the segment;
an object unseen for longer than the tracker's ``lost_s`` starts afresh (the tracker gives it a new track).
Prints, per clip and line, the truth and the agent's in/out counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from agent.events import CameraEvents  # noqa: E402
from agent.model import OnnxModel  # noqa: E402
from agent.results import detections_to_api  # noqa: E402
from agent.synth_tracks import render_track_clip  # noqa: E402
from agent.tracking import CameraTracks, TrackingSettings, predictions_xyxy  # noqa: E402
from agent.zones import LineDef  # noqa: E402

# The clips' pillar (a full-height occluder) stands somewhere in x 0.30-0.76 of the width: the vertical lines
# are left and right of it. A line behind the pillar (x 0.5) missed 1-2 crossings a clip on seeds 300-302:
# objects cross it unseen, and one that comes out as a new track has no side to change from.
INERTIA = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--inertia=")), "1"))
LINES = [
    LineDef("across", (0.0, 0.5), (1.0, 0.5), "fraction", INERTIA),
    LineDef("left", (0.2, 1.0), (0.2, 0.0), "fraction", INERTIA),
    LineDef("right", (0.85, 0.0), (0.85, 1.0), "fraction", INERTIA),
]


def _side(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> int:
    c = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    return (c > 0) - (c < 0)


def _through(p: tuple[float, float], q: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    return _side(p, a, b) * _side(q, a, b) < 0 and _side(a, p, q) * _side(b, p, q) <= 0


def truth_counts(doc: dict, lost_frames: int) -> dict[str, int]:
    w, h = doc["width"], doc["height"]
    min_vis = float(doc.get("min_visibility", 0.5))
    out = {f"{ln.name}/{d}/all": 0 for ln in LINES for d in ("in", "out")}
    last: dict[tuple[int, str], tuple[int, tuple[float, float]]] = {}  # (object, line) -> (frame, anchor)
    for f, objs in enumerate(doc["frames"]):
        for o in objs:
            if o["visibility"] < min_vis:
                continue
            x0, _, x1, y1 = o["box_xyxy"]
            p = ((x0 + x1) / 2, y1)
            for ln in LINES:
                a = (ln.start[0] * w, ln.start[1] * h)
                b = (ln.end[0] * w, ln.end[1] * h)
                key = (o["id"], ln.name)
                prev = last.get(key)
                if _side(p, a, b) == 0:
                    continue
                if prev is not None and f - prev[0] <= lost_frames and _through(prev[1], p, a, b):
                    out[f"{ln.name}/{'in' if _side(p, a, b) > 0 else 'out'}/all"] += 1
                last[key] = (f, p)
    return out


def agent_counts(model: OnnxModel, truth_path: Path, settings: TrackingSettings) -> dict[str, int]:
    doc = json.loads(truth_path.read_text())
    cap = cv2.VideoCapture(str(truth_path.parent / doc["video"]))
    tracks = CameraTracks(settings, ["cam"])
    events = CameraEvents("cam", device_id="bench", lines=LINES, update_interval_s=1.0)
    try:
        for i in range(len(doc["frames"])):
            ok, frame = cap.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            det = model.detect(frame, confidence=0.4, overlap=0.3)
            api = detections_to_api(det, model.class_names, image_wh=(w, h), time_s=0.0)
            t = i / float(doc["fps"])
            tracked = tracks.apply("cam", t, api, frame)  # the pixels: the appearance gate
            preds = tracked.api["predictions"]
            events.observe(
                t,
                i,
                (w, h),
                tracked.ids,
                predictions_xyxy(preds),
                [p["class"] for p in preds],
                np.array([p["confidence"] for p in preds]),
                [e.tracker_id for e in tracked.ended],
                tracked.born,
            )
    finally:
        cap.release()
    counts = events.counts()
    return {k: counts[k] for k in truth_counts(doc, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[300, 301, 302])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--inertia", type=int, default=1, help="the lines' inertia (give it as --inertia=N)")
    args = ap.parse_args()
    model = OnnxModel(REPO / "models" / "demo-seg.onnx")
    settings = TrackingSettings(enabled=True)
    exact = off = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            truth_path = render_track_clip(Path(tmp) / f"clip{seed}.avi", seconds=args.seconds, seed=seed)
            doc = json.loads(truth_path.read_text())
            truth = truth_counts(doc, round(settings.lost_s * float(doc["fps"])))
            got = agent_counts(model, truth_path, settings)
            exact += got == truth
            off += sum(abs(got[k] - truth[k]) for k in truth)
            total += sum(truth.values())
            print(f"seed {seed}: truth {truth}")
            print(f"{'':9} agent {got}{'' if got == truth else '   <- differs'}")
    print(f"exact on {exact} of {len(args.seeds)} clips; {off} count(s) off of {total} true crossings")


if __name__ == "__main__":
    main()
