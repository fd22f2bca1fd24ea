"""fp32 against int8 (``seg-agent quantize``) for one model, measured side by side in one process.

    python benchmarks/int8.py [--model models/demo-seg.onnx] [--int8 OUT.onnx] [--work runs/int8]
                              [--heldout 200] [--runs 40] [--size WxH] [--profile] [--json results.json]
                              [--quantize-args "--head-convs int8"]

Without ``--int8`` the model is quantized first, with ``seg-agent quantize`` on ``agent.synth`` frames (seed
3000, 160 frames, a quarter held out for its own gate; ``--quantize-args`` are passed on). ``--size 640x480``
makes the calibration and held-out frames that size (default: synth's varied sizes). Then, the two models
interleaved run by run so that both see the same background load (this machine is shared):

* ``session.run`` on a letterboxed 640x480 synth frame, back to back, at 1 and 2 ONNX Runtime threads (and
  ONNX Runtime's default): medians, frames/s = 1000 / median, and the int8 ÷ fp32 ratio; and once more at 1
  thread timed by the calling thread's CPU time (``time.thread_time``), which the machine's load does not
  stretch: the steadiest comparison of two graphs on a shared machine;
* ``OnnxModel.detect`` (letterbox, session, decode, masks, polygons) on 640x480 synth frames at the agent's
  thresholds (confidence 0.4, overlap 0.3): median latency and the detections per frame each model finds;
* mask and box AP (``agent.evaluate``, the published polygons scored with pycocotools) on a held-out synth
  set (seed 1000, which the demo model never saw in training), at ``seg-agent eval``'s thresholds;
* with ``--profile``: ONNX Runtime's per-op profile of both models at 1 and 2 threads
  (:mod:`benchmarks.int8_profile`), the op types that take most of the int8 run.

``benchmarks/run.py --int8`` calls :func:`compare` and puts :func:`render` into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
from agent.evaluate import evaluate  # noqa: E402
from agent.model import OnnxModel, limit_helper_threads  # noqa: E402
from agent.quantize import main_quantize  # noqa: E402
from agent.quantize_graph import cpu_flags, pick_activations  # noqa: E402

__all__ = ["compare", "quantize_demo", "render"]

CONFIDENCE, OVERLAP = 0.40, 0.30  # the agent's defaults (config.yaml)
FRAME_HW = (480, 640)
TARGET_SPEEDUP = 1.5
TARGET_DROP_POINTS = 1.0
HEADS = {
    "float": "decode head in float",
    "cut": "box/class decode out of the graph (decoded on the candidates in NumPy), the head's last convolutions "
    "in float",
}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def shown_flags() -> list[str]:
    """The CPU flags that decide int8 speed (x86 VNNI / AVX-512 / AMX, ARM dot product / i8mm)."""
    keep = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")
    flags = cpu_flags()
    return [f for f in keep if f in flags]


def _size_tag(frame_size: tuple[int, int] | None) -> str:
    return "" if frame_size is None else f"-{frame_size[1]}x{frame_size[0]}"


def quantize_demo(
    model: Path,
    work: Path,
    *,
    frame_size: tuple[int, int] | None = None,
    extra: list[str] | None = None,
    out: Path | None = None,
) -> tuple[Path, str]:
    """``seg-agent quantize`` of ``model`` on 160 synth frames (seed 3000; ``frame_size`` (h, w), default
    synth's varied sizes): the int8 path and its report. ``extra``: more ``seg-agent quantize`` arguments;
    ``out``: the int8 file (default ``work/<stem>-int8.onnx``)."""
    data = work / f"calibration{_size_tag(frame_size)}"
    if not (data / "annotations.json").exists():
        synth.write_coco_dataset(data, 160, seed=3000, frame_size=frame_size)
    out = out or work / f"{model.stem}-int8.onnx"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        ann = str(data / "annotations.json")
        argv = [str(model), "--images", str(data / "images"), "--annotations", ann, "--out", str(out), *(extra or [])]
        rc = main_quantize(argv)
    if rc != 0:
        raise RuntimeError(f"seg-agent quantize refused or failed ({rc}):\n{text.getvalue()}")
    return out, text.getvalue()


def _frames(n: int) -> list[np.ndarray]:
    return [synth.render_sample(np.random.default_rng([4040, i]), FRAME_HW)[0] for i in range(n)]


def _session_runs(
    fp32: Path, int8: Path, threads: int, tensor: np.ndarray, runs: int, clock: str = "wall"
) -> dict[str, Any]:
    """Interleaved medians of ``session.run``. ``clock="cpu"`` (1 thread only: ONNX Runtime then runs every
    kernel on the calling thread) times the calling thread's CPU time instead of the wall clock: the work
    itself, which the other engineers' load does not stretch (wall-clock ratios moved ±7 % between two
    identical int8 files in one run at load 5, CPU-time ratios by under 1 %)."""
    if clock not in ("wall", "cpu") or (clock == "cpu" and threads != 1):
        raise ValueError(f"clock must be wall, or cpu at 1 thread; got {clock!r} at {threads}")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    models = [OnnxModel(fp32, threads=threads), OnnxModel(int8, threads=threads)]
    times: list[list[float]] = [[], []]
    feeds = [m.input_tensor(tensor) for m in models]  # a uint8-input int8 file gets its bytes, converted once
    for m, feed in zip(models, feeds, strict=True):
        m.run(feed)
    for rep in range(runs):
        order = (0, 1) if rep % 2 == 0 else (1, 0)
        for i in order:
            t0 = timer()
            models[i].run(feeds[i])
            times[i].append(1000 * (timer() - t0))
    fp32_ms, int8_ms = _median(times[0]), _median(times[1])
    return {"threads": threads, "clock": clock, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms}


def _detect_runs(fp32: Path, int8: Path, frames: list[np.ndarray], reps: int) -> dict[str, float]:
    models = [OnnxModel(fp32), OnnxModel(int8)]
    times: list[list[float]] = [[], []]
    found: list[list[int]] = [[], []]
    for rep in range(reps):
        for frame in frames:
            for i in (0, 1) if rep % 2 == 0 else (1, 0):
                t0 = time.perf_counter()
                det = models[i].detect(frame, confidence=CONFIDENCE, overlap=OVERLAP)
                times[i].append(1000 * (time.perf_counter() - t0))
                found[i].append(len(det))
    fp32_ms, int8_ms = _median(times[0]), _median(times[1])
    return {
        "fp32_ms": fp32_ms,
        "int8_ms": int8_ms,
        "speedup": fp32_ms / int8_ms,
        "fp32_dets": float(np.mean(found[0])),
        "int8_dets": float(np.mean(found[1])),
        "frames": len(frames),
    }


def _accuracy_one(path: Path, heldout: Path) -> dict[str, Any]:
    """Mask and box AP of one model on a held-out synth set, with the set's size."""
    r = evaluate(OnnxModel(path), heldout / "images", heldout / "annotations.json", progress=False)
    aps = {"mask_ap": r.mask_ap, "mask_ap50": r.mask_ap50, "box_ap": r.box_ap, "box_ap50": r.box_ap50}
    return {**aps, "images": r.images, "instances": r.instances}


def _accuracy(fp32: Path, int8: Path, heldout: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, path in (("fp32", fp32), ("int8", int8)):
        a = _accuracy_one(path, heldout)
        out["images"], out["instances"] = a.pop("images"), a.pop("instances")
        out[key] = a
    return out


def compare(
    fp32: Path,
    int8: Path,
    work: Path,
    *,
    heldout_n: int = 200,
    runs: int = 40,
    frame_size: tuple[int, int] | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """Every fp32 / int8 figure of one model pair (see the module doc)."""
    heldout = work / f"heldout-{heldout_n}{_size_tag(frame_size)}"
    if not (heldout / "annotations.json").exists():
        synth.write_coco_dataset(heldout, heldout_n, seed=1000, frame_size=frame_size)
    frames = _frames(8)
    probe = OnnxModel(fp32)
    tensor = model_tensor(probe, frames[0])
    act, reduce_range = pick_activations("auto", cpu_flags())
    result: dict[str, Any] = {
        "fp32": str(fp32),
        "int8": str(int8),
        "input_hw": list(probe.input_hw),
        "flags": shown_flags(),
        "activations": act + (" (reduce_range)" if reduce_range else ""),
        "int8_head": "float" if OnnxModel(int8).split_head is None else "cut",
        "load_start": os.getloadavg()[0],
        "session": [_session_runs(fp32, int8, t, tensor, runs) for t in (1, 2, 0)]
        + [_session_runs(fp32, int8, 1, tensor, runs, clock="cpu")],
        "detect": _detect_runs(fp32, int8, frames, max(1, runs // 8)),
        "accuracy": _accuracy(fp32, int8, heldout),
    }
    if profile:
        from benchmarks.int8_profile import profile_models

        result["profile"] = [s for t in (1, 2) for s in profile_models([fp32, int8], t, max(10, runs // 2))]
    result["load_end"] = os.getloadavg()[0]
    return result


def _mark(ok: bool) -> str:
    return " ✓" if ok else " ✗"


def render(r: dict[str, Any]) -> str:
    """The markdown section for BENCHMARKS.md."""
    acc = r["accuracy"]
    drop = 100 * (acc["fp32"]["mask_ap"] - acc["int8"]["mask_ap"])
    drop50 = 100 * (acc["fp32"]["mask_ap50"] - acc["int8"]["mask_ap50"])
    lines = [
        f"### fp32 vs int8 — {Path(r['fp32']).name} and {Path(r['int8']).name} "
        f"(input {r['input_hw'][1]}x{r['input_hw'][0]})",
        "",
        f"`seg-agent quantize` (static QDQ, {r['activations']} activations, per-channel int8 weights, "
        f"{HEADS[r.get('int8_head', 'float')]}). CPU flags: {' '.join(r['flags']) or 'none of the int8 ones'}. "
        f"Both models interleaved run by run in one process; load average {r['load_start']:.2f} at the start, "
        f"{r['load_end']:.2f} at the end (a shared machine: 7 other engineers' jobs; medians, and ratios of samples "
        "taken side by side).",
        "",
        "| `session.run`, 640x480 frame letterboxed | fp32 ms | int8 ms | fp32 frames/s | int8 frames/s | int8 ÷ fp32 "
        "frames/s |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["session"]:
        label = f"{s['threads'] or 'default'} thread(s)"
        if s.get("clock") == "cpu":
            label = "1 thread, CPU time of the calling thread (what the load does not stretch)"
        lines.append(
            f"| {label} | {s['fp32_ms']:.1f} | {s['int8_ms']:.1f} | "
            f"{1000 / s['fp32_ms']:.1f} | {1000 / s['int8_ms']:.1f} | {s['speedup']:.2f}"
            f"{_mark(s['speedup'] >= TARGET_SPEEDUP)} |"
        )
    d = r["detect"]
    lines += [
        "",
        f"Through the agent's `OnnxModel.detect` (letterbox, session, decode, masks, polygons; default threads; "
        f"{d['frames']} synth frames 640x480, confidence {CONFIDENCE}, overlap {OVERLAP}): fp32 **{d['fp32_ms']:.1f} "
        f"ms** ({d['fp32_dets']:.1f} detections per frame), int8 **{d['int8_ms']:.1f} ms** ({d['int8_dets']:.1f} "
        f"per frame): **{d['speedup']:.2f}x** frames/s{_mark(d['speedup'] >= TARGET_SPEEDUP)}.",
        "",
        f"Accuracy on {acc['images']} held-out synth frames ({acc['instances']} instances, seed 1000), "
        "`seg-agent eval` thresholds:",
        "",
        "| model | mask AP@[.5:.95] | mask AP@0.5 | box AP@[.5:.95] | box AP@0.5 |",
        "|---|---|---|---|---|",
    ]
    for key in ("fp32", "int8"):
        a = acc[key]
        lines.append(f"| {key} | {a['mask_ap']:.3f} | {a['mask_ap50']:.3f} | {a['box_ap']:.3f} | {a['box_ap50']:.3f} |")
    lines += [
        f"| int8 − fp32, points | {-drop:+.2f}{_mark(drop <= TARGET_DROP_POINTS)} | {-drop50:+.2f}"
        f"{_mark(drop50 <= TARGET_DROP_POINTS)} | "
        f"{100 * (acc['int8']['box_ap'] - acc['fp32']['box_ap']):+.2f} | "
        f"{100 * (acc['int8']['box_ap50'] - acc['fp32']['box_ap50']):+.2f} |",
        "",
    ]
    if r.get("profile"):
        lines += [
            "ONNX Runtime's profile (`benchmarks/int8_profile.py`: the optimized graph's kernels, median per run of "
            "each op type's summed time, its share of their sum; a loaded machine stretches the times, not the "
            "shares):",
            "",
        ]
        for prof in r["profile"]:
            ops = sorted(prof["ops"].items(), key=lambda kv: -kv[1]["ms"])[:8]
            total = prof["kernel_ms"] or 1.0
            shown = ", ".join(f"{op} ×{v['nodes']} {v['ms']:.2f} ({100 * v['ms'] / total:.0f} %)" for op, v in ops)
            lines.append(f"- {Path(prof['model']).name}, {prof['threads']} thread(s), {total:.2f} ms: {shown}")
        lines.append("")
    return "\n".join(lines)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``--size WxH`` as ``(height, width)``; None when not given (varied sizes)."""
    if not text:
        return None
    w, _, h = text.lower().partition("x")
    return (int(h), int(w))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/int8.py", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models/demo-seg.onnx")
    p.add_argument("--int8", type=Path, default=None, help="the int8 model (default: quantize --model first)")
    p.add_argument("--work", type=Path, default=REPO / "runs/int8")
    p.add_argument("--heldout", type=int, default=200, help="held-out synth frames for AP")
    p.add_argument("--runs", type=int, default=40, help="session runs per model and thread count")
    p.add_argument("--size", default=None, help="calibration and held-out frames WxH (default: varied sizes)")
    p.add_argument("--profile", action="store_true", help="add ONNX Runtime's per-op profile at 1 and 2 threads")
    p.add_argument("--quantize-args", default="", help="more seg-agent quantize arguments, one string")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    frame_size = parse_size(args.size)
    limit_helper_threads()
    args.work.mkdir(parents=True, exist_ok=True)
    int8 = args.int8
    if int8 is None:
        int8, report = quantize_demo(args.model, args.work, frame_size=frame_size, extra=args.quantize_args.split())
        print(report, file=sys.stderr)
    result = compare(
        args.model, int8, args.work, heldout_n=args.heldout, runs=args.runs, frame_size=frame_size, profile=args.profile
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
