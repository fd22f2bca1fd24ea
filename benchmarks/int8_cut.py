"""The decode head out of the graph (``seg-agent optimize``, ``seg-agent quantize``'s default) against the
graph as exported, fp32 and int8, four models of one network side by side in one process.

    python benchmarks/int8_cut.py [--model models/demo-seg.onnx] [--work runs/int8-cut] [--size WxH]
                                  [--heldout 200] [--runs 40] [--json results.json]

The four: ``fp32`` (the file as it is), ``fp32-cut`` (``seg-agent optimize``), ``int8`` (``seg-agent quantize
--keep-head``: the recipe before the cut, decode head float in the graph) and ``int8-cut`` (``seg-agent
quantize``'s default, the head cut before calibration). Both int8 files are calibrated by
:func:`benchmarks.int8.quantize_demo` on the same 160 synth frames (seed 3000; ``--size`` as there), then,
round-robin run by run so that all four see the same background load:

* ``session.run`` of a letterboxed 640x480 synth frame: 1 thread timed by the calling thread's CPU time
  (``time.thread_time``, which the load does not stretch), and 2 threads by the wall clock; medians;
* ``OnnxModel.detect`` (letterbox, session, decode, masks, polygons; ORT's default threads) on 8 synth frames
  at the agent's thresholds (confidence 0.4, overlap 0.3): median latency and detections per frame; the cut
  fp32 model's detections are checked equal to the original's on those frames;
* mask and box AP (``agent.evaluate``) of all four on the held-out synth set (seed 1000).

Ratios are frames/s against ``fp32`` (the file as exported), and ``int8-cut ÷ fp32-cut``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent import synth  # noqa: E402
from agent.calibration import model_tensor  # noqa: E402
from agent.head_cut import cut_file, describe  # noqa: E402
from agent.model import OnnxModel, limit_helper_threads  # noqa: E402
from benchmarks.int8 import (  # noqa: E402
    CONFIDENCE,
    OVERLAP,
    _accuracy_one,
    _frames,
    _size_tag,
    parse_size,
    quantize_demo,
    shown_flags,
)

__all__ = ["compare_cut", "make_models", "render_cut"]

NAMES = ("fp32", "fp32-cut", "int8", "int8-cut")


def make_models(model: Path, work: Path, frame_size: tuple[int, int] | None) -> dict[str, Path]:
    """The four files (module doc), made once and reused from ``work``."""
    tag = _size_tag(frame_size)
    paths = {
        "fp32": model,
        "fp32-cut": work / f"{model.stem}-cut.onnx",
        "int8": work / f"{model.stem}-int8{tag}.onnx",
        "int8-cut": work / f"{model.stem}-cut-int8{tag}.onnx",
    }
    if not paths["fp32-cut"].exists():
        print(f"optimize: {describe(cut_file(model, paths['fp32-cut']))}", file=sys.stderr)
    for name, extra in (("int8", ["--keep-head"]), ("int8-cut", [])):
        if not paths[name].exists():
            _, report = quantize_demo(model, work, frame_size=frame_size, extra=extra, out=paths[name])
            print(f"quantize ({name}):\n{report}", file=sys.stderr)
    return paths


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _session_ms(paths: dict[str, Path], threads: int, frame: np.ndarray, runs: int, clock: str) -> dict[str, float]:
    """Round-robin medians of ``session.run`` (the order turns each round)."""
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    models = {k: OnnxModel(p, threads=threads) for k, p in paths.items()}
    tensors = {k: model_tensor(m, frame) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    keys = list(models)
    for k in keys:
        models[k].run(tensors[k])
    for rep in range(runs):
        for k in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
            t0 = timer()
            models[k].run(tensors[k])
            times[k].append(1000 * (timer() - t0))
    return {k: _median(v) for k, v in times.items()}


def _detect(paths: dict[str, Path], frames: list[np.ndarray], reps: int) -> dict[str, Any]:
    models = {k: OnnxModel(p) for k, p in paths.items()}
    keys = list(models)
    times: dict[str, list[float]] = {k: [] for k in keys}
    found: dict[str, list[int]] = {k: [] for k in keys}
    mismatches = 0
    for rep in range(reps):
        for frame in frames:
            dets = {}
            for k in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
                t0 = time.perf_counter()
                dets[k] = models[k].detect(frame, confidence=CONFIDENCE, overlap=OVERLAP)
                times[k].append(1000 * (time.perf_counter() - t0))
                found[k].append(len(dets[k]))
            a, b = dets["fp32"], dets["fp32-cut"]
            same = len(a) == len(b) and np.array_equal(a.class_id, b.class_id)
            same = same and bool(np.abs(a.boxes_xyxy - b.boxes_xyxy).max(initial=0.0) <= 1e-3)
            mismatches += 0 if same else 1
    return {
        "ms": {k: _median(v) for k, v in times.items()},
        "dets": {k: float(np.mean(v)) for k, v in found.items()},
        "frames": len(frames),
        "fp32_cut_mismatches": mismatches,
    }


def compare_cut(
    paths: dict[str, Path],
    work: Path,
    *,
    heldout_n: int = 200,
    runs: int = 40,
    frame_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    heldout = work / f"heldout-{heldout_n}{_size_tag(frame_size)}"
    if not (heldout / "annotations.json").exists():
        synth.write_coco_dataset(heldout, heldout_n, seed=1000, frame_size=frame_size)
    frames = _frames(8)
    result: dict[str, Any] = {
        "models": {k: str(p) for k, p in paths.items()},
        "input_hw": list(OnnxModel(paths["fp32"]).input_hw),
        "flags": shown_flags(),
        "load_start": os.getloadavg()[0],
        "cpu_1thread": _session_ms(paths, 1, frames[0], runs, "cpu"),
        "wall_2threads": _session_ms(paths, 2, frames[0], runs, "wall"),
        "detect": _detect(paths, frames, max(1, runs // 8)),
        "accuracy": {k: _accuracy_one(p, heldout) for k, p in paths.items()},
    }
    result["load_end"] = os.getloadavg()[0]
    return result


def render_cut(r: dict[str, Any]) -> str:
    """A markdown section: the four models' times, ratios and AP."""
    hw = r["input_hw"]
    rows = [
        ("`session.run`, 1 thread, CPU ms", r["cpu_1thread"]),
        ("`session.run`, 2 threads, wall ms", r["wall_2threads"]),
        ("`OnnxModel.detect`, default threads, wall ms", r["detect"]["ms"]),
    ]
    lines = [
        f"### decode head cut — {Path(r['models']['fp32']).name} (input {hw[1]}x{hw[0]})",
        "",
        f"`benchmarks/int8_cut.py`; CPU flags {' '.join(r['flags'])}; load average {r['load_start']:.2f} → "
        f"{r['load_end']:.2f}; round-robin medians. × = frames/s ÷ fp32's; last column int8-cut ÷ fp32-cut.",
        "",
        "| measure | fp32 | fp32-cut | int8 | int8-cut | ×fp32-cut | ×int8 | ×int8-cut | int8-cut ÷ fp32-cut |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, ms in rows:
        ratio = {k: ms["fp32"] / ms[k] for k in NAMES}
        lines.append(
            f"| {label} | {' | '.join(f'{ms[k]:.1f}' for k in NAMES)} | {ratio['fp32-cut']:.2f} | "
            f"{ratio['int8']:.2f} | {ratio['int8-cut']:.2f} | {ms['fp32-cut'] / ms['int8-cut']:.2f} |"
        )
    d = r["detect"]
    lines += [
        "",
        f"Detections per frame ({d['frames']} frames 640x480, confidence {CONFIDENCE}, overlap {OVERLAP}): "
        + ", ".join(f"{k} {d['dets'][k]:.1f}" for k in NAMES)
        + f"; fp32-cut differs from fp32 on {d['fp32_cut_mismatches']} frame runs.",
        "",
        "| model | mask AP@[.5:.95] | mask AP@0.5 | box AP@[.5:.95] | box AP@0.5 |",
        "|---|---|---|---|---|",
    ]
    acc = r["accuracy"]
    for k in NAMES:
        a = acc[k]
        lines.append(f"| {k} | {a['mask_ap']:.4f} | {a['mask_ap50']:.4f} | {a['box_ap']:.4f} | {a['box_ap50']:.4f} |")
    base, cut = acc["fp32"], acc["int8-cut"]
    lines += [
        f"| int8-cut − fp32, points | {100 * (cut['mask_ap'] - base['mask_ap']):+.2f} | "
        f"{100 * (cut['mask_ap50'] - base['mask_ap50']):+.2f} | {100 * (cut['box_ap'] - base['box_ap']):+.2f} | "
        f"{100 * (cut['box_ap50'] - base['box_ap50']):+.2f} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/int8_cut.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models/demo-seg.onnx")
    p.add_argument("--work", type=Path, default=REPO / "runs/int8-cut")
    p.add_argument("--heldout", type=int, default=200, help="held-out synth frames for AP")
    p.add_argument("--runs", type=int, default=40, help="session runs per model and measure")
    p.add_argument("--size", default=None, help="calibration and held-out frames WxH (default: varied sizes)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    frame_size = parse_size(args.size)
    limit_helper_threads()
    args.work.mkdir(parents=True, exist_ok=True)
    paths = make_models(args.model, args.work, frame_size)
    result = compare_cut(paths, args.work, heldout_n=args.heldout, runs=args.runs, frame_size=frame_size)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(render_cut(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
