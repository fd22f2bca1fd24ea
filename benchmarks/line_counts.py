"""Line counts on held-out synthetic clips with ground-truth tracks (``agent/synth_tracks.py``), measured.

    python benchmarks/line_counts.py [--seeds 300 301 302] [--seconds 20] [--inertia 1] [--band B | --share S]

Each clip goes the daemon's way: ``OnnxModel.detect`` (the demo model) → the published API object →
``CameraTracks`` → ``CameraEvents`` with two lines, one across the middle of the frame each way. The truth is
counted from the clip's ground-truth boxes (bottom centres of the objects' boxes, frames where they are at
least ``min_visibility`` visible), by a plain scalar rule written here apart from agent/zones.py, the one
README documents: an object is on a side of a line when its anchor is more than the line's ``band`` from it
(within the band: on neither; it keeps its last side), and a crossing is a change of side whose step, from
the last anchor on the old side to the first on the new one, passes through the segment; an object unseen
for longer than the tracker's ``lost_s`` starts afresh (the tracker gives it a new track). ``--band`` is in
the lines' units (fractions of the frame, distance measured in x / width, y / height); left out, the lines
have the agent's default band (``agent.line_band.DEFAULT_BAND_SHARE`` of the frame's longer side, in
pixels) and so has the truth; ``--band 0``: no band; ``--share S`` sets that default share for both (the
sweep that chose it, on dev seeds). Prints, per clip and line, the truth and the agent's
in/out counts.
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

from agent import line_band  # noqa: E402
from agent.events import CameraEvents  # noqa: E402
from agent.model import OnnxModel  # noqa: E402
from agent.synth_tracks import render_track_clip  # noqa: E402
from agent.tracking import CameraTracks, TrackingSettings, predictions_xyxy  # noqa: E402
from agent.zones import LineDef  # noqa: E402
from benchmarks.clips import api_frames, read_truth  # noqa: E402


# The clips' pillar (a full-height occluder) stands somewhere in x 0.30-0.76 of the width: the vertical lines
# are left and right of it. A line behind the pillar (x 0.5) missed 1-2 crossings a clip on seeds 300-302:
# objects cross it unseen, and one that comes out as a new track has no side to change from.
def make_lines(inertia: int, band: float | None) -> list[LineDef]:
    return [
        LineDef("across", (0.0, 0.5), (1.0, 0.5), "fraction", inertia, band),
        LineDef("left", (0.2, 1.0), (0.2, 0.0), "fraction", inertia, band),
        LineDef("right", (0.85, 0.0), (0.85, 1.0), "fraction", inertia, band),
    ]


def _cross(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


def _through(p: tuple[float, float], q: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> bool:
    """The step p -> q (on opposite sides of the line a-b) passes through the segment a-b."""
    return _sign(_cross(a, p, q)) * _sign(_cross(b, p, q)) <= 0


def banded_side(p_px: tuple[float, float], ln: LineDef, wh: tuple[int, int]) -> int:
    """+1 / -1: more than the line's band on its right / left (looking from start to end), 0 within it."""
    w, h = wh
    if ln.band is None:  # the default: a share of the longer side, in pixels
        a, b, p, band = (
            (ln.start[0] * w, ln.start[1] * h),
            (ln.end[0] * w, ln.end[1] * h),
            p_px,
            line_band.DEFAULT_BAND_SHARE * max(w, h),
        )
    else:  # in the line's units, fractions of the frame
        a, b, p, band = ln.start, ln.end, (p_px[0] / w, p_px[1] / h), ln.band
    dist = _cross(p, a, b) / ((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5
    return 0 if abs(dist) <= band else _sign(dist)


def truth_counts(doc: dict, lost_frames: int, lines: list[LineDef]) -> dict[str, int]:
    wh = (doc["width"], doc["height"])
    min_vis = float(doc.get("min_visibility", 0.5))
    out = {f"{ln.name}/{d}/all": 0 for ln in lines for d in ("in", "out")}
    seen: dict[int, int] = {}  # object -> the last frame it was seen
    last: dict[tuple[int, str], tuple[int, tuple[float, float]]] = {}  # (object, line) -> (side, anchor)
    for f, objs in enumerate(doc["frames"]):
        for o in objs:
            if o["visibility"] < min_vis:
                continue
            if f - seen.get(o["id"], f) > lost_frames:  # a new track: no side on any line
                for ln in lines:
                    last.pop((o["id"], ln.name), None)
            seen[o["id"]] = f
            x0, _, x1, y1 = o["box_xyxy"]
            p = (min(max((x0 + x1) / 2, 0.0), wh[0]), min(max(y1, 0.0), wh[1]))  # anchors inside the frame
            for ln in lines:
                side = banded_side(p, ln, wh)
                if side == 0:
                    continue  # within the band: the side it had
                key = (o["id"], ln.name)
                prev = last.get(key)
                a, b = (ln.start[0] * wh[0], ln.start[1] * wh[1]), (ln.end[0] * wh[0], ln.end[1] * wh[1])
                if prev is not None and prev[0] != side and _through(prev[1], p, a, b):
                    out[f"{ln.name}/{'in' if side > 0 else 'out'}/all"] += 1
                last[key] = (side, p)
    return out


Observation = tuple[Any, ...]  # the arguments of one CameraEvents.observe call


def track_clip(model: OnnxModel, truth_path: Path, settings: TrackingSettings) -> list[Observation]:
    """The clip through the demo model and the tracker: each frame's CameraEvents.observe arguments (the
    tracks do not depend on the lines, so one pass serves every band and inertia)."""
    doc = read_truth(truth_path)
    tracks = CameraTracks(settings, ["cam"])
    out: list[Observation] = []
    for i, frame, api in api_frames(model, truth_path, doc):
        t = i / float(doc["fps"])
        tracked = tracks.apply("cam", t, api, frame)  # the pixels: the appearance gate
        preds = tracked.api["predictions"]
        out.append(
            (
                t,
                i,
                (frame.shape[1], frame.shape[0]),
                tracked.ids,
                predictions_xyxy(preds),
                [p["class"] for p in preds],
                np.array([p["confidence"] for p in preds]),
                [e.tracker_id for e in tracked.ended],
                tracked.born,
            )
        )
    return out


def agent_counts(observations: list[Observation], lines: list[LineDef]) -> dict[str, int]:
    events = CameraEvents("cam", device_id="bench", lines=lines, update_interval_s=1.0)
    for obs in observations:
        events.observe(*obs)
    counts = events.counts()
    return {f"{ln.name}/{d}/all": counts.get(f"{ln.name}/{d}/all", 0) for ln in lines for d in ("in", "out")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[300, 301, 302])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--inertia", type=int, nargs="+", default=[1], help="the lines' inertia (one run each)")
    ap.add_argument("--band", type=float, default=None, help="the lines' band, a fraction (default: the agent's)")
    ap.add_argument("--share", type=float, nargs="+", default=[None], help="the default band's share (each)")
    args = ap.parse_args()
    model = OnnxModel(REPO / "models" / "demo-seg.onnx")
    settings = TrackingSettings(enabled=True)
    runs = [(inertia, share) for share in args.share for inertia in args.inertia]
    tally = {run: [0, 0, 0] for run in runs}  # exact clips, counts off, true crossings
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            truth_path = render_track_clip(Path(tmp) / f"clip{seed}.avi", seconds=args.seconds, seed=seed)
            doc = json.loads(truth_path.read_text())
            observations = track_clip(model, truth_path, settings)
            for inertia, share in runs:
                if share is not None:
                    line_band.DEFAULT_BAND_SHARE = share  # read by the agent's band_tolerance and by the truth
                lines = make_lines(inertia, args.band)
                truth = truth_counts(doc, round(settings.lost_s * float(doc["fps"])), lines)
                got = agent_counts(observations, lines)
                t = tally[(inertia, share)]
                t[0] += got == truth
                t[1] += sum(abs(got[k] - truth[k]) for k in truth)
                t[2] += sum(truth.values())
                print(f"seed {seed} inertia {inertia} share {share}: truth {truth}")
                print(f"{'':9} agent {got}{'' if got == truth else '   <- differs'}")
    for (inertia, share), (exact, off, total) in tally.items():
        if args.band is not None:
            band = f"band {args.band:g}"
        else:
            band = f"default band, share {share if share is not None else line_band.DEFAULT_BAND_SHARE:g}"
        print(f"inertia {inertia}, {band}: exact on {exact} of {len(args.seeds)} clips; ", end="")
        print(f"{off} count(s) off of {total} true crossings")


if __name__ == "__main__":
    main()
