"""A/B timings of the postprocessing and capture changes: this working tree against an earlier revision.

    python benchmarks/ab.py [--baseline def1af5] [--reps 15]

``agent/postprocess.py`` of ``--baseline`` (any git revision; default: the commit before issue 7's changes)
is loaded next to the current one, and both run on the same inputs in the same process, interleaved (A, B,
B, A, ...), so that a busy machine slows both alike; medians are printed with the ratio new / old, and every
case first checks that both give the same detections (boxes, scores, classes and polygons, exactly).
Cases: NMS on synthetic candidate sets, the whole decode on synthetic outputs with 20 and 150 instances
at three frame sizes (``benchmarks/synthetic.py``), and the CPU cost of reading an MJPG clip the way the
capture thread does: decoding in ``grab()`` (OpenCV's FFmpeg backend) versus raw packets with
``cv2.imdecode`` for the sampled frames only.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import agent.postprocess as new  # noqa: E402
from agent.model import limit_helper_threads  # noqa: E402
from agent.synth import render_video  # noqa: E402
from benchmarks.synthetic import dense_outputs  # noqa: E402

DEFAULT_BASELINE = "def1af5"  # the last commit before issue 7 (the daemon wiring)


def load_baseline(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:agent/postprocess.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "postprocess_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("postprocess_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ab(fa: Callable[[], Any], fb: Callable[[], Any], reps: int) -> tuple[float, float]:
    """Medians in ms of ``fa`` and ``fb``, interleaved A B B A ... after a warm-up."""
    fa()
    fb()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(reps):
        pairs = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for fn, acc in pairs:
            t0 = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - t0) * 1000)
    return float(np.median(ta)), float(np.median(tb))


def same_detections(a: Any, b: Any) -> bool:
    return (
        len(a) == len(b)
        and np.array_equal(a.boxes_xyxy, b.boxes_xyxy)
        and np.array_equal(a.confidence, b.confidence)
        and np.array_equal(a.class_id, b.class_id)
        and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=True))
    )


def nms_cases(old: ModuleType, reps: int) -> None:
    print("NMS (candidates from synthetic outputs at confidence 0.25, IoU 0.45)")
    for instances, dup, classes in ((20, 3, 80), (150, 3, 80), (150, 10, 80), (150, 10, 1), (300, 20, 5)):
        output0, _ = dense_outputs(instances, dup=dup, num_classes=classes)
        pred = output0[0]
        scores_all = pred[4 : 4 + classes]
        best = scores_all.max(axis=0)
        cand = np.flatnonzero(best > 0.25)
        boxes = new.xywh_to_xyxy(pred[0:4, cand].T)
        scores, cls = best[cand], scores_all[:, cand].argmax(axis=0)
        a = old.nms_xyxy(boxes, scores, cls, 0.45, max_keep=300)
        b = new.nms_xyxy(boxes, scores, cls, 0.45, max_keep=300)
        assert a.tolist() == b.tolist(), "NMS results differ"
        ta, tb = ab(
            partial(old.nms_xyxy, boxes, scores, cls, 0.45, max_keep=300),
            partial(new.nms_xyxy, boxes, scores, cls, 0.45, max_keep=300),
            reps,
        )
        print(
            f"  {instances:3d} objects x {dup:2d} anchors, {classes:2d} classes, {cand.size:4d} candidates: "
            f"{ta:6.2f} -> {tb:6.2f} ms  ({tb / ta:.2f}x)  same: yes"
        )


def decode_cases(old: ModuleType, reps: int, side: int = 640) -> None:
    print(f"decode_yolov8_seg ({side}x{side} input, 80 classes, confidence 0.25, IoU 0.45)")
    for instances in (20, 150):
        for w, h in ((640, 480), (1280, 720), (1920, 1080)):
            params = new.letterbox_params((h, w), (side, side))
            content = (round(h * params.scale), round(w * params.scale))
            outputs = dense_outputs(instances, (side, side), content_hw=content)
            kw: dict[str, Any] = {
                "params": params,
                "input_hw": (side, side),
                "frame_hw": (h, w),
                "confidence": 0.25,
                "overlap": 0.45,
            }
            a = old.decode_yolov8_seg(*outputs, **kw)
            b = new.decode_yolov8_seg(*outputs, **kw)
            same = "yes"
            if not same_detections(a, b):  # say how far apart: float rounding flips a pixel now and then
                changed = sum(not np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=False))
                same = f"NO ({changed} of {len(a)} polygons)"
            ta, tb = ab(
                partial(old.decode_yolov8_seg, *outputs, **kw), partial(new.decode_yolov8_seg, *outputs, **kw), reps
            )
            print(f"  {instances:3d} instances, {w}x{h}: {ta:6.1f} -> {tb:6.1f} ms  ({tb / ta:.2f}x)  same: {same}")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def capture_cases() -> None:
    print("Reading an MJPG clip (30 fps, 3 s): CPU per frame, as the capture thread reads it")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 480), (1280, 720), (1920, 1080)):
            path = Path(tmp) / f"clip-{w}x{h}.avi"
            render_video(path, seconds=3, fps=30, size=(w, h), quality=80)
            costs = {}
            for mode in ("grab (FFmpeg decodes)", "raw grab", "grab + retrieve", "raw grab + imdecode"):
                cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
                if mode.startswith("raw"):
                    cap.set(cv2.CAP_PROP_FORMAT, -1)
                n, c0 = 0, _cpu()
                while cap.grab():
                    n += 1
                    if mode == "grab + retrieve":
                        cap.retrieve()
                    elif mode == "raw grab + imdecode":
                        _, packet = cap.retrieve()
                        cv2.imdecode(packet, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                costs[mode] = (_cpu() - c0) / max(n, 1) * 1000
                cap.release()
            skipped_old, skipped_new = costs["grab (FFmpeg decodes)"], costs["raw grab"]
            print(
                f"  {w}x{h}: skipped frame {skipped_old:.2f} -> {skipped_new:.3f} ms; sampled frame "
                f"{costs['grab + retrieve']:.2f} -> {costs['raw grab + imdecode']:.2f} ms; at 2 of 30 fps: "
                f"{(28 * skipped_old + 2 * costs['grab + retrieve']):.0f} -> "
                f"{(28 * skipped_new + 2 * costs['raw grab + imdecode']):.0f} ms of CPU per second"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/ab.py", description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the old agent/postprocess.py")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument(
        "--only", choices=("nms", "decode", "capture"), action="append", help="run only these cases (repeatable)"
    )
    args = p.parse_args(argv)
    only = set(args.only or ("nms", "decode", "capture"))
    old = load_baseline(args.baseline)
    limit_helper_threads()  # one thread for OpenCV and OpenBLAS, as the agent runs
    print(f"baseline: agent/postprocess.py at {args.baseline}; new: the working tree")
    if "nms" in only:
        nms_cases(old, args.reps)
    if "decode" in only:
        decode_cases(old, args.reps)
        decode_cases(old, args.reps, side=416)  # the demo model's input: prototype cells aren't whole pixels
    if "capture" in only:
        capture_cases()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
