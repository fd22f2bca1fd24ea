"""A/B timings of the postprocessing and capture changes: this working tree against an earlier revision.

    python benchmarks/ab.py [--baseline def1af5] [--reps 15] [--only nms|decode|capture]

The whole ``agent/`` package of ``--baseline`` (any git revision; default: the commit before issue 7's
changes) is unpacked with ``git archive`` into a temporary directory, and each side runs in its own process
(``benchmarks/ab_worker.py``) that imports ``agent`` from its tree: the baseline's modules import the
baseline's modules, so A and B compare the real code of both (``agent/postprocess.py`` became a facade over
``placement``/``masks``/``nms``/``polygons``/``decoders``: loading that one file of a revision ran today's
code on both sides). The calls are interleaved (A, B, B, A, ...), so that a busy machine slows both alike;
medians are printed with the ratio new / old, and every case first checks that both give the same
detections (boxes, scores, classes and polygons, exactly). Inputs are made here once and sent to both.
Cases: NMS on synthetic candidate sets, the whole decode on synthetic outputs with 20 and 150 instances
at three frame sizes (``benchmarks/synthetic.py``), and the CPU cost of reading an MJPG clip the way the
capture thread does: decoding in ``grab()`` (OpenCV's FFmpeg backend) versus raw packets with
``cv2.imdecode`` for the sampled frames only.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import pickle
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from agent.nms import xywh_to_xyxy  # noqa: E402
from agent.placement import letterbox_params  # noqa: E402
from agent.synth import render_video  # noqa: E402
from benchmarks.synthetic import dense_outputs  # noqa: E402

DEFAULT_BASELINE = "def1af5"  # the last commit before issue 7 (the daemon wiring)
WORKER = Path(__file__).resolve().with_name("ab_worker.py")


def unpack_baseline(rev: str, into: Path) -> Path:
    """``agent/`` of ``rev`` under ``into`` (``git archive REV agent | tar -x``); returns ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "agent"], cwd=REPO, capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


class Side:
    """A worker process whose ``agent`` is the package under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root
        )
        self._names = itertools.count()

    def _ask(self, *request: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        pickle.dump(request, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self._proc.stdin.flush()
        reply = pickle.load(self._proc.stdout)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def bind(self, target: str, *args: Any, **kwargs: Any) -> str:
        name = f"call{next(self._names)}"
        self._ask("set", name, target, args, kwargs)
        return name

    def check(self, name: str) -> Any:
        return self._ask("check", name)

    def time(self, name: str) -> float:
        return float(self._ask("time", name))

    def close(self) -> None:
        assert self._proc.stdin is not None
        try:
            pickle.dump(("quit",), self._proc.stdin)
            self._proc.stdin.close()
        finally:
            self._proc.wait(timeout=30)


def ab(
    old: Side, new: Side, target: str, args: tuple[Any, ...], kwargs: dict[str, Any], reps: int
) -> tuple[Any, Any, float, float]:
    """Both sides' results and their medians in ms, interleaved A B B A ... after a warm-up."""
    name_a, name_b = old.bind(target, *args, **kwargs), new.bind(target, *args, **kwargs)
    result_a, result_b = old.check(name_a), new.check(name_b)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(reps):
        if i % 2 == 0:
            ta.append(old.time(name_a))
            tb.append(new.time(name_b))
        else:
            tb.append(new.time(name_b))
            ta.append(old.time(name_a))
    return result_a, result_b, float(np.median(ta)), float(np.median(tb))


def made_by(target: str, *args: Any, **kwargs: Any) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """An argument that each side makes itself, ``target(*args, **kwargs)`` with its own code (its own classes;
    arguments may be ``made_by`` too)."""
    return ("__made_by__", target, args, kwargs)


def same_detections(a: Any, b: Any) -> bool:
    """``a`` and ``b`` as the worker returns Detections: ``(boxes, confidence, class_id, polygons)``."""
    return (
        len(a[1]) == len(b[1])
        and all(np.array_equal(p, q) for p, q in zip(a[:3], b[:3], strict=True))
        and all(np.array_equal(p, q) for p, q in zip(a[3], b[3], strict=True))
    )


def nms_cases(old: Side, new: Side, reps: int) -> None:
    print("NMS (candidates from synthetic outputs at confidence 0.25, IoU 0.45)")
    for instances, dup, classes in ((20, 3, 80), (150, 3, 80), (150, 10, 80), (150, 10, 1), (300, 20, 5)):
        output0, _ = dense_outputs(instances, dup=dup, num_classes=classes)
        pred = output0[0]
        scores_all = pred[4 : 4 + classes]
        best = scores_all.max(axis=0)
        cand = np.flatnonzero(best > 0.25)
        boxes = xywh_to_xyxy(pred[0:4, cand].T)
        scores, cls = best[cand], scores_all[:, cand].argmax(axis=0)
        a, b, ta, tb = ab(old, new, "agent.postprocess:nms_xyxy", (boxes, scores, cls, 0.45), {"max_keep": 300}, reps)
        assert np.asarray(a).tolist() == np.asarray(b).tolist(), "NMS results differ"
        print(
            f"  {instances:3d} objects x {dup:2d} anchors, {classes:2d} classes, {cand.size:4d} candidates: "
            f"{ta:6.2f} -> {tb:6.2f} ms  ({tb / ta:.2f}x)  same: yes"
        )


def decode_cases(old: Side, new: Side, reps: int, side: int = 640) -> None:
    print(f"decode_yolov8_seg ({side}x{side} input, 80 classes, confidence 0.25, IoU 0.45)")
    for instances in (20, 150):
        for w, h in ((640, 480), (1280, 720), (1920, 1080)):
            params = letterbox_params((h, w), (side, side))
            content = (round(h * params.scale), round(w * params.scale))
            outputs = dense_outputs(instances, (side, side), content_hw=content)
            kw: dict[str, Any] = {
                "params": made_by("agent.postprocess:letterbox_params", (h, w), (side, side)),  # each side's own class
                "input_hw": (side, side),
                "frame_hw": (h, w),
                "confidence": 0.25,
                "overlap": 0.45,
            }
            a, b, ta, tb = ab(old, new, "agent.postprocess:decode_yolov8_seg", outputs, kw, reps)
            same = "yes"
            if not same_detections(a, b):  # say how far apart: float rounding flips a pixel now and then
                changed = sum(not np.array_equal(p, q) for p, q in zip(a[3], b[3], strict=False))
                same = f"NO ({changed} of {len(a[1])} polygons; {len(a[1])} vs {len(b[1])} detections)"
            print(
                f"  {instances:3d} instances, {w}x{h}: {ta:6.1f} -> {tb:6.1f} ms  ({tb / ta:.2f}x)  "
                f"{len(b[1])} found, same: {same}"
            )


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


def json_cases(old: Side, new: Side, reps: int, side: int = 640) -> None:
    print(f"results JSON: encode(to_message(detections_to_api(decode))) of the decode above ({side}x{side} input)")
    for instances in (20, 150):
        for w, h in ((640, 480), (1920, 1080)):
            params = letterbox_params((h, w), (side, side))
            content = (round(h * params.scale), round(w * params.scale))
            output0, protos = dense_outputs(instances, (side, side), content_hw=content)
            det = made_by(
                "agent.postprocess:decode_yolov8_seg",
                output0,
                protos,
                params=made_by("agent.postprocess:letterbox_params", (h, w), (side, side)),
                input_hw=(side, side),
                frame_hw=(h, w),
                confidence=0.25,
                overlap=0.45,
            )
            api = made_by("agent.results:detections_to_api", det, ["c"] * 80, image_wh=(w, h), time_s=0.01)
            envelope = {"device_id": "d", "camera": "c", "frame_id": 1, "timestamp": 0.0, "source": "local"}
            message = made_by("agent.results:to_message", api, **envelope, model_id="m", latency_ms=1.0)
            a, b, ta, tb = ab(old, new, "agent.results:encode", (message,), {}, reps)
            points_a = [p["points"] for p in json.loads(a)["predictions"]]
            points_b = [p["points"] for p in json.loads(b)["predictions"]]
            same = "yes" if points_a == points_b else "NO"
            print(
                f"  {instances:3d} instances, {w}x{h}: {ta:6.2f} -> {tb:6.2f} ms  ({tb / ta:.2f}x)  "
                f"{len(b) / 1000:.0f} kB, same polygons: {same}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/ab.py", description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision whose agent/ package is A")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument(
        "--only",
        choices=("nms", "decode", "json", "capture"),
        action="append",
        help="run only these cases (repeatable)",
    )
    args = p.parse_args(argv)
    only = set(args.only or ("nms", "decode", "json", "capture"))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"baseline (A): agent/ at {args.baseline} ({commit}); new (B): the working tree; {args.reps} reps, medians")
    with tempfile.TemporaryDirectory(prefix="ab-baseline-") as tmp:
        old, new = Side(unpack_baseline(args.baseline, Path(tmp))), Side(REPO)
        try:
            if "nms" in only:
                nms_cases(old, new, args.reps)
            if "decode" in only:
                decode_cases(old, new, args.reps)
                decode_cases(old, new, args.reps, side=416)  # the demo model's input: cells aren't whole pixels
            if "json" in only:
                json_cases(old, new, args.reps)
        finally:
            old.close()
            new.close()
    if "capture" in only:
        cv2.setNumThreads(1)
        capture_cases()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
