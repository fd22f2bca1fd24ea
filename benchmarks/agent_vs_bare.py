"""The agent's frames/s against the bare model's, interleaved: where the agent loses against ``session.run``.

    python benchmarks/agent_vs_bare.py MODEL [VIDEO] [--variant NAME:KEY=VALUE,...] [--preset issue17]
                                       [--sizes 640x480,1920x1080] [--int8 auto|PATH] [--reps 3] [--seconds 6]
                                       [--threads N] [--paced]

Each repetition runs, in turn and in alternating order: the bare model (a subprocess making back-to-back
``session.run`` calls on the clip's first frame, letterboxed, with ONNX Runtime's default spinning and the
given thread count: what issue 17's target compares with) before and after every agent run, each agent run's
ratio taken against the mean of the two around it, and the real agent (``benchmarks.pipeline``
``--mode throughput``: the looping MJPG file, ``fps: 0``, ``realtime: false``) once per variant. A variant is
a name and the ``inference.local`` keys it sets (``threads``, ``sessions``, ``frames_in_flight``, ``spin``,
``spin_us``; ``sessions`` is 1 unless set, ``sessions=auto`` is the agent's default), e.g. ``--variant base:
--variant fif2:frames_in_flight=2``; the key ``input=uint8`` runs the int8 model's uint8-input file
(``agent.quantize_input``; int8 blocks only). Printed: medians over the repetitions of frames/s, the ratio to
the bare runs of the same repetition, detections per frame, CPU per result by thread; ``--paced`` adds each
variant's lone-frame latency (capture→PUBACK p50 at 2 fps from the file played in real time), which an
overlap must not cost.

Without VIDEO, one synth clip per ``--sizes`` entry (``benchmarks/bench_models.make_videos``). ``--int8``
adds the int8 twin's blocks: ``auto`` makes it as ``benchmarks/run.py --int8 auto`` does
(``bench_models.quantize``: ``seg-agent quantize``, 48 calibration frames for a 640 input, its 60-frame gate;
kept in ``--work`` and reused), or PATH gives one. Its bare floor is the float-input file's (the int8 model as
it ran before the uint8 input); the uint8 file's own bare floor is printed beside it. ``--preset issue17`` is
issue 17's quiet-machine A/B (the lead's one command; ~13 min with the trained 640 model, 3 repetitions of
4 s windows after 2 s warm-ups, 1.5 s bare runs, plus ~3 min for ``--int8 auto``'s quantization; ``--reps 2``
saves 4)::

    python benchmarks/agent_vs_bare.py models/yolov8n-seg-synth.onnx --preset issue17 --int8 auto

defaults (one session); ``sessions: auto``; ``spin_us`` 20 / 50 / 100; 2 frames in flight spinning with
``spin_us: 50``; the uint8 input (int8).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from tests.mosquitto import Mosquitto  # noqa: E402

_BARE = r"""
import sys, time, cv2, numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[4])
from agent.preprocess import letterbox, letterbox_uint8
path, video, threads, _, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
o = ort.SessionOptions()
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
if threads > 0:
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
if "quantization" in s.get_modelmeta().custom_metadata_map:  # opened as the agent opens it (agent.runtime)
    from agent.runtime import INT8_CPU_DISABLED_OPTIMIZERS
    s = ort.InferenceSession(path, o, ["CPUExecutionProvider"], disabled_optimizers=list(INT8_CPU_DISABLED_OPTIMIZERS))
cap = cv2.VideoCapture(video)
ok, frame = cap.read()
h, w = s.get_inputs()[0].shape[2:]
box = letterbox_uint8 if s.get_inputs()[0].type == "tensor(uint8)" else letterbox  # agent.quantize_input
tensor, _ = box(frame, (int(h), int(w)))
feed = {s.get_inputs()[0].name: tensor}
t_end = time.perf_counter() + 1.0
while time.perf_counter() < t_end:
    s.run(None, feed)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    s.run(None, feed)
    n += 1
print(n / (time.perf_counter() - t0))
"""


def _bare_fps(model: Path, video: Path, threads: int, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _BARE, str(model), str(video), str(threads), str(REPO), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    keys: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        keys[key.strip()] = yaml.safe_load(value)
    return name, keys


def _agent(
    mq: Mosquitto, model: Path, video: Path, local: dict[str, Any], mode: str, seconds: float, warmup: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        camera = (
            {"source": str(video), "fps": 0, "realtime": False, "loop": True}
            if mode == "throughput"
            else {"source": str(video), "fps": 2, "realtime": True, "loop": True}
        )
        config = {
            "device_id": "bench",
            "log_level": "warning",
            "cameras": [{"name": "cam0", **camera}],
            "inference": {
                "mode": "local",
                "confidence": 40,
                "overlap": 30,
                "local": {"model": str(model), "sessions": 1, **local},
            },
            "mqtt": {"host": "127.0.0.1", "port": mq.port},
            "state_dir": str(Path(tmp) / "state"),
        }
        path = Path(tmp) / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        args = ["--config", str(path), "--mode", mode, "--seconds", str(seconds), "--warmup", str(warmup)]
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.pipeline", *args], capture_output=True, text=True, cwd=REPO
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmarks.pipeline failed ({proc.returncode}): {proc.stderr[-800:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    rows = [(row, n) for row, n in zip(r["rows"], r.get("detections", []), strict=False) if row[2] >= r["window_start"]]
    n = max(1, r["results_in_window"])
    return {
        "fps": r["results_in_window"] / r["window_s"],
        "dets": statistics.mean(c for _, c in rows) if rows else float("nan"),
        "latency_ms": statistics.median((row[2] - row[0]) * 1000 for row, _ in rows) if rows else float("nan"),
        "cpu_ms": r["cpu_s"] * 1000 / n,
        "threads": {k: v * 1000 / n for k, v in r.get("thread_cpu_s", {}).items()},
    }


def _med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


PRESETS = {
    "issue17": [
        "defaults:",
        "auto:sessions=auto",
        "spin_us20:spin_us=20",
        "spin_us50:spin_us=50",
        "spin_us100:spin_us=100",
        "fif2-spin50:frames_in_flight=2,spin=on,spin_us=50",
        "uint8:input=uint8",
    ]
}
"""Named variant lists (``--preset``). Defaults spin (``spin: auto`` is on for one session, one frame at a
time), so ``spin_us`` alone shortens that spin; two frames in flight need ``spin: on`` to spin at all. Every
variant runs one session unless it sets ``sessions`` (the agent's own default is ``auto``, which for this
``fps: 0`` file opens a session per core: the ``auto`` variant)."""


@dataclass
class Block:
    """One model at one frame size: its files by input type (``float``; ``uint8`` for an int8 twin)."""

    label: str
    files: dict[str, Path]
    video: Path
    bare: list[float] = field(default_factory=list)
    bare_uint8: list[float] = field(default_factory=list)
    thr: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    paced: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _int8_twins(model: Path, spec: str, work: Path) -> dict[str, Path]:
    """The int8 file of ``--int8`` (``auto``: made as ``run.py --int8 auto`` makes it) with and without the
    uint8 input: ``{"float": ..., "uint8": ...}`` (no ``uint8`` when its input scale is not 1/255)."""
    import onnx

    from agent.quantize_input import to_float_input, to_uint8_input
    from benchmarks.bench_base import ModelInfo
    from benchmarks.bench_models import quantize, read_shapes

    path = work / f"{model.stem}-int8.onnx"
    if spec != "auto":
        path = Path(spec).resolve()
    elif path.exists():
        print(f"int8: reusing {path} (delete it to quantize again)", file=sys.stderr)
    else:
        info = ModelInfo(model.stem, model, "fp32")
        read_shapes(info)
        print(f"[{time.strftime('%H:%M:%S')}] int8: seg-agent quantize of {model.name}", file=sys.stderr)
        path = quantize(info, work)
    proto = onnx.load(str(path))
    if proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8:
        files = {"uint8": path, "float": work / f"{path.stem}-float-input.onnx"}
        assert to_float_input(proto)
        onnx.save(proto, str(files["float"]))
        return files
    if not to_uint8_input(proto):
        print(f"int8: {path.name}'s input scale is not 1/255: no uint8-input variant", file=sys.stderr)
        return {"float": path}
    files = {"float": path, "uint8": work / f"{path.stem}-uint8-input.onnx"}
    onnx.save(proto, str(files["uint8"]))
    return files


def _blocks(args: argparse.Namespace, work: Path) -> list[Block]:
    if args.video is not None:
        videos = {"": args.video.resolve()}
    else:
        from benchmarks.bench_models import make_videos

        sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
        made = make_videos(work, [(w, h) for w, h in sizes])
        videos = {f" at {w}x{h}": path for (w, h), path in made.items()}
    models = {"fp32": {"float": args.model}}
    if args.int8:
        models["int8"] = _int8_twins(args.model, args.int8, work)
    return [
        Block(f"{args.model.name} {kind}{size}", files, video)
        for kind, files in models.items()
        for size, video in videos.items()
    ]


def _run_block(
    block: Block, variants: list[tuple[str, dict[str, Any]]], mq: Mosquitto, args: argparse.Namespace
) -> None:
    runnable = [(n, lo) for n, lo in variants if lo.get("input", "float") in block.files]
    block.thr = {name: [] for name, _ in runnable}
    block.paced = {name: [] for name, _ in runnable}
    bare_path = block.files["float"]
    for rep in range(args.reps):
        # B V1 B V2 B ...: each agent run between two bare runs, its ratio against their mean
        order = runnable if rep % 2 == 0 else runnable[::-1]
        before = _bare_fps(bare_path, block.video, args.threads, args.bare_seconds)
        block.bare.append(before)
        if "uint8" in block.files:
            block.bare_uint8.append(_bare_fps(block.files["uint8"], block.video, args.threads, args.bare_seconds))
        for name, keys in order:
            local = {k: v for k, v in keys.items() if k != "input"}
            model = block.files[keys.get("input", "float")]
            r = _agent(mq, model, block.video, local, "throughput", args.seconds, args.warmup)
            after = _bare_fps(bare_path, block.video, args.threads, args.bare_seconds)
            block.bare.append(after)
            r["ratio"] = r["fps"] / ((before + after) / 2)
            block.thr[name].append(r)
            before = after
            if args.paced:
                block.paced[name].append(_agent(mq, model, block.video, local, "paced", args.seconds, args.warmup))
        shown = ", ".join(f"{x:.2f}" for x in block.bare[-len(runnable) - 1 :])
        print(f"[{time.strftime('%H:%M:%S')}] {block.label} rep {rep + 1}: bare {shown}", file=sys.stderr)


def _print_block(block: Block) -> None:
    print(f"\n### {block.label}\n")
    print(f"bare session.run back to back: {_med(block.bare):.2f} frames/s (median of {len(block.bare)})")
    if block.bare_uint8:
        print(
            f"bare session.run of the uint8-input file: {_med(block.bare_uint8):.2f} frames/s "
            f"(median of {len(block.bare_uint8)})"
        )
    print("\n| variant | frames/s | x bare (per rep) | dets/frame | CPU ms/result | lone-frame p50 ms |")
    print("|---|---|---|---|---|---|")
    for name, rs in block.thr.items():
        per_rep = [r["ratio"] for r in rs]
        paced = [r["latency_ms"] for r in block.paced[name]]
        lone = f"{_med(paced):.1f}" if paced else "-"  # --paced only
        print(
            f"| {name} | {_med([r['fps'] for r in rs]):.2f} | {_med(per_rep):.3f} "
            f"({', '.join(f'{x:.3f}' for x in per_rep)}) | {_med([r['dets'] for r in rs]):.1f} | "
            f"{_med([r['cpu_ms'] for r in rs]):.1f} | {lone} |"
        )
    print()
    for name, rs in block.thr.items():
        keys = sorted({k for r in rs for k in r["threads"]})
        shown = ", ".join(f"{k} {_med([r['threads'].get(k, 0.0) for r in rs]):.2f}" for k in keys)
        print(f"{name} CPU ms per result by thread: {shown}")


def _print_summary(blocks: list[Block], variants: list[tuple[str, dict[str, Any]]]) -> None:
    print("\n### frames/s x bare, medians over the repetitions\n")
    print("| variant | " + " | ".join(b.label for b in blocks) + " |")
    print("|---|" + "---|" * len(blocks))
    for name, _ in variants:
        cells = [f"{_med([r['ratio'] for r in b.thr[name]]):.3f}" if name in b.thr else "" for b in blocks]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/agent_vs_bare.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("video", type=Path, nargs="?", default=None, help="default: synth clips of --sizes")
    p.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (inference.local keys)")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="a named list of variants (before --variant's)"
    )
    p.add_argument("--sizes", default="640x480,1920x1080", help="WxH,... of the synth clips when no VIDEO")
    p.add_argument("--int8", default=None, help="'auto' (seg-agent quantize, as run.py --int8 auto) or an int8 file")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "agent_vs_bare", help="clips and int8 files")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=None, help="each agent run's window (6; 4 with --preset)")
    p.add_argument("--warmup", type=float, default=None, help="before each window (3; 2 with --preset)")
    p.add_argument(
        "--bare-seconds",
        type=float,
        default=None,
        help="each bare run, one before and after each agent run (3; 1.5 with --preset)",
    )
    p.add_argument("--threads", type=int, default=0, help="the bare runs' intra-op threads (0: ONNX Runtime's)")
    p.add_argument("--paced", action="store_true", help="also each variant's lone-frame latency at 2 fps")
    args = p.parse_args(argv)
    args.model = args.model.resolve()
    short = args.preset is not None  # a preset's many runs, each shorter, to fit ~13 minutes
    args.seconds = args.seconds if args.seconds is not None else (4.0 if short else 6.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if short else 3.0)
    args.bare_seconds = args.bare_seconds if args.bare_seconds is not None else (1.5 if short else 3.0)
    texts = [*PRESETS.get(args.preset or "", []), *args.variant] or ["base:"]
    variants = [_variant(v) for v in texts]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    blocks = _blocks(args, work)
    slots = sum(1 for b in blocks for _, lo in variants if lo.get("input", "float") in b.files)
    estimate = args.reps * slots * (args.seconds + args.warmup + args.bare_seconds + 4.5) / 60  # ~4.5 s starts
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"{args.reps} x {slots} agent runs, each between bare runs: ~{estimate:.0f} min", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as mq:
        for block in blocks:
            _run_block(block, variants, mq, args)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for block in blocks:
        _print_block(block)
    _print_summary(blocks, variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
