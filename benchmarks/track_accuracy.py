"""The tracker's accuracy on synthetic clips, replayed from cached detections, with a breakdown of the loss.

    python benchmarks/track_accuracy.py --seeds 1 2 3 4 5 6 7 8 --objects 5 7 [--cache /tmp/track-cache]

Each clip (``agent/synth_tracks.py``, 20 s at 10 fps) is detected once by the demo model as ``seg-agent eval
--tracks`` detects it (confidence 0.4, overlap 0.3), and every detection's mean colour measured
(:func:`agent.appearance.mean_bgr_n3`); the cache keeps them, so the tracker is replayed in well under a
second a clip. The replay feeds :class:`agent.tracking.Tracker` exactly what ``CameraTracks.apply`` feeds it
(the colours on demand, through a function over the cached ones), so its figures are ``seg-agent eval``'s.

Printed per object count: IDF1, MOTA and id switches (the headline's ground truth, ``evaluate_tracks``'s own
frame update); the detector's bound (every detection given the id of the object it covers at IoU >= 0.5, so
identities are perfect: what no tracker can beat); and where the expected track-frames went: covered by a
confirmed track, by a detection of a tentative track (no id yet), by no detection at all (the detector's),
and the distinct ids per object beyond the first (fragments) and the switches between live objects.
Tune on dev seeds (1-8); held-out seeds (100-104) are for the final figures only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.evaluate_tracks import _bound_update, _frame_update, truth_ids  # noqa: E402
from agent.tracking import Tracker, TrackingSettings  # noqa: E402


def detect_clip(truth_path: Path) -> dict[str, Any]:
    """Every frame's detections (boxes, classes, scores, colours) of the demo model, as eval detects them."""
    from agent.appearance import mean_bgr_n3, polygons_of
    from agent.model import OnnxModel
    from agent.track_boxes import read_predictions
    from benchmarks.clips import api_frames, read_truth

    model = OnnxModel(REPO / "models" / "demo-seg.onnx")
    doc = read_truth(truth_path)
    frames = []
    for _, frame, api in api_frames(model, truth_path, doc):
        preds = api["predictions"]
        boxes, classes, scores = read_predictions(preds)
        colours = mean_bgr_n3(frame, polygons_of(preds), boxes) if preds else np.zeros((0, 3))
        frames.append({"boxes": boxes.tolist(), "classes": classes, "scores": scores.tolist(), "bgr": colours.tolist()})
    if len(frames) < len(doc["frames"]):
        raise ValueError(f"{truth_path}: the clip ends early")
    return {"fps": doc["fps"], "min_visibility": doc.get("min_visibility", 0.0), "truth": doc["frames"], "det": frames}


def load_clip(seed: int, objects: int, cache: Path) -> dict[str, Any]:
    from agent.synth_tracks import render_track_clip

    path = cache / f"s{seed}-o{objects}.json"
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            truth = render_track_clip(Path(tmp) / "c.avi", seed=seed, n_objects=objects)
            path.write_text(json.dumps(detect_clip(truth)))
    clip: dict[str, Any] = json.loads(path.read_text())
    for f in clip["det"]:
        f["boxes"] = np.asarray(f["boxes"], dtype=np.float64).reshape(-1, 4)
        f["scores"] = np.asarray(f["scores"], dtype=np.float64)
        f["bgr"] = np.asarray(f["bgr"], dtype=np.float64).reshape(-1, 3)
    return clip


def replay(clip: dict[str, Any], settings: TrackingSettings) -> list[np.ndarray]:
    """Each frame's tracker ids (-1: unconfirmed), fed as ``CameraTracks.apply`` feeds the tracker."""
    tracker = Tracker(settings)
    out = []
    for i, f in enumerate(clip["det"]):
        bgr = f["bgr"]
        colours = (lambda index, bgr=bgr: bgr[index]) if len(bgr) and settings.appearance_gate > 0 else None
        out.append(tracker.update(i / float(clip["fps"]), f["boxes"], f["classes"], f["scores"], colours))
    return out


def score(clips: list[dict[str, Any]], settings: TrackingSettings) -> dict[str, float]:
    import motmetrics as mm

    accs, bound_accs, ceiling_accs = [], [], []
    counts = {"confirmed": 0, "tentative": 0, "undetected": 0, "fragments": 0}
    for clip in clips:
        ids = replay(clip, settings)
        acc, bound = mm.MOTAccumulator(auto_id=True), mm.MOTAccumulator(auto_id=True)
        ceiling = mm.MOTAccumulator(auto_id=True)
        min_vis = float(clip["min_visibility"])
        seen: dict[int, set[int]] = {}
        for i, (truth, f, frame_ids) in enumerate(zip(clip["truth"], clip["det"], ids, strict=True)):
            keep = frame_ids >= 0
            _frame_update(acc, truth, min_vis, frame_ids[keep].tolist(), f["boxes"][keep])
            _bound_update((bound, ceiling), i, truth, min_vis, f["boxes"])
            gt_of = truth_ids(truth, min_vis, f["boxes"])
            for g, tid in zip(gt_of.tolist(), frame_ids.tolist(), strict=True):
                if g >= 0:
                    counts["confirmed" if tid >= 0 else "tentative"] += 1
                    if tid >= 0:
                        seen.setdefault(g, set()).add(tid)
            expected = {int(o["id"]) for o in truth if float(o["visibility"]) >= min_vis}
            counts["undetected"] += len(expected - set(gt_of.tolist()))
        counts["fragments"] += sum(len(v) - 1 for v in seen.values())
        accs.append(acc)
        bound_accs.append(bound)
        ceiling_accs.append(ceiling)
    metrics = ["idf1", "mota", "num_switches", "num_objects", "idfp", "idfn", "num_false_positives"]
    mh = mm.metrics.create()
    overall = mh.compute_many(accs, metrics=metrics, generate_overall=True).loc["OVERALL"]
    best = mh.compute_many(bound_accs, metrics=metrics, generate_overall=True).loc["OVERALL"]
    top = mh.compute_many(ceiling_accs, metrics=["idf1"], generate_overall=True).loc["OVERALL"]
    return {
        "idf1": float(overall["idf1"]),
        "mota": float(overall["mota"]),
        "switches": int(overall["num_switches"]),
        "per_100": 100.0 * float(overall["num_switches"]) / max(float(overall["num_objects"]), 1.0),
        "bound_idf1": float(best["idf1"]),
        "ceiling_idf1": float(top["idf1"]),
        "idfp": int(overall["idfp"]),
        "idfn": int(overall["idfn"]),
        "fp": int(overall["num_false_positives"]),
        "det_fp": int(best["num_false_positives"]),
        **counts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--objects", type=int, nargs="+", default=[5, 7])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "seg-agent-track-cache")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    settings = TrackingSettings(enabled=True)
    for n in args.objects:
        clips = [load_clip(s, n, args.cache) for s in args.seeds]
        r = score(clips, settings)
        print(
            f"{n} shapes, seeds {args.seeds}: IDF1 {r['idf1']:.3f} MOTA {r['mota']:.3f} switches {r['switches']}"
            f" ({r['per_100']:.2f}/100)  IDFP {r['idfp']} IDFN {r['idfn']} FP {r['fp']}\n  bound IDF1"
            f" {r['bound_idf1']:.3f} (detections' FP {r['det_fp']}; without them {r['ceiling_idf1']:.3f})"
            "  track-frames covered: confirmed"
            f" {r['confirmed']} tentative {r['tentative']} undetected {r['undetected']}  fragments {r['fragments']}"
        )


if __name__ == "__main__":
    main()
