"""seg-agent benchmarks: the agent's local pipeline against the model's own speed, on this machine, in one run.

    python benchmarks/run.py [--quick] [--out BENCHMARKS.md] [--json results.json]
                             [--bench-python .venv-bench/bin/python] [--models demo,yolov8n-seg,yolov8n-synth]
                             [--model-path yolov8n-synth=PATH] [--int8 auto]

Run from the repository root with the project's environment (the one the agent runs in). For each model and
each frame size (640x480, 1280x720, 1920x1080), side by side, measured in this one run:

* floor: a bare ``InferenceSession.run`` on an already letterboxed tensor, with the best of a grid of thread
  counts (1 .. cores, and ONNX Runtime's default) and spinning on/off. Everything else is compared with it:
  frames/s and dense postprocessing with its back-to-back runs, latency and CPU at 2 fps with its runs after
  a pause (a run after an idle gap is ~1.1x slower: cold caches, a parked pool).
* pipeline: the real ``agent.daemon.Agent`` in a subprocess (``benchmarks/pipeline.py``) reading a looping
  MJPG video file (``agent.synth`` shapes, 30 fps) through a throwaway Mosquitto: frames/s with ``fps: 0,
  realtime: false`` (results acknowledged within a window after a warm-up); capture-to-PUBACK latency, CPU
  use and peak memory at 2 frames/s sampled from the 30 fps file played in real time.
* stages, in process: JPEG decode, letterbox, session, postprocessing on the model's own outputs (sparse)
  and on synthetic outputs with 150 instances (dense, ``benchmarks/synthetic.py``), JSON.
* Ultralytics: ``YOLO(model.onnx).predict`` + polygons on the same frames and ONNX file, with the same
  ONNX Runtime session options, in a separate environment (``benchmarks/ultra.py``; set it up with
  ``bash benchmarks/setup_env.sh``). Without it that column says why it is missing.
* idle: CPU use while a live source has stalled.

Models (``--models``): ``demo`` is ``models/demo-seg.onnx``, or, before that file exists, the same network
untrained (exported by the benchmark environment from ``training/net.py``; same graph, same cost).
``yolov8n-seg`` is Ultralytics' YOLOv8n-seg built from its YAML (random weights, nothing downloaded) and
exported to ONNX at 640 by the benchmark environment: the model's cost only, it finds nothing; skipped, with a
note, when that environment is missing. ``yolov8n-synth`` is the trained 640 model
(``models/yolov8n-seg-synth.onnx``, YOLOv8n-seg trained on ``seg-agent synth`` shapes; skipped with a note when
it is not there): it finds objects on every frame, and it anchors the Raspberry Pi / Jetson estimates when it
is in the run. ``--model-path KEY=PATH`` says where a model is, or adds another trained YOLOv8-seg ONNX as a
model block of its own. ``--int8 auto`` quantizes every trained model of the run with ``seg-agent quantize``
and measures each int8 twin as a model of its own and side by side with its fp32 model
(``benchmarks/int8.py``). Everything is written under ``--work`` (default ``runs/bench/``, not committed).

``--quick`` shortens every measurement (the figures are noisier). A full run of every model with ``--int8
auto`` (demo, its int8 twin, yolov8n-seg, yolov8n-synth and its int8 twin, 3 frame sizes) takes ~40 minutes
on 2 quiet cores and ~15 GB of free memory for the 640 model's calibration; ``--quick --models demo --sizes
640x480 --no-ultralytics`` about 1-2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.model import OnnxModel, limit_helper_threads  # noqa: E402
from benchmarks import int8 as int8_bench  # noqa: E402
from benchmarks.bench_agent import (  # noqa: E402
    broker,
    pipeline_paced,
    pipeline_stalled,
    pipeline_throughput,
    ultralytics_predict,
)
from benchmarks.bench_base import CORES, OVERLAP_LOCAL, PACED_FPS, SESSIONS, SIZES, ModelInfo, Plan, log  # noqa: E402
from benchmarks.bench_floor import Floor  # noqa: E402
from benchmarks.bench_machine import busy_processes, machine  # noqa: E402
from benchmarks.bench_models import (  # noqa: E402
    TRAINED_640,
    TRAINED_640_FILE,
    add_int8_twins,
    bench_python,
    make_videos,
    prepare_models,
    quantize,
    read_packets,
)
from benchmarks.bench_stages import measure_stages  # noqa: E402
from benchmarks.report import render_markdown  # noqa: E402
from benchmarks.report_model import build_tables  # noqa: E402


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter measurements (noisier)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="the report (default BENCHMARKS.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--work", type=Path, default=REPO / "runs/bench", help="models, clips, temporary state")
    p.add_argument("--bench-python", default=None, help="the benchmark environment's python (.venv-bench)")
    p.add_argument(
        "--models",
        default=f"demo,yolov8n-seg,{TRAINED_640}",
        help=f"comma-separated: demo, yolov8n-seg (random weights: the model's cost only), {TRAINED_640} "
        f"(the trained 640 model, {TRAINED_640_FILE}; skipped with a note when it is not there)",
    )
    p.add_argument(
        "--model-path",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help=f"where a model of --models is (e.g. {TRAINED_640}=/path/model.onnx), or another trained "
        "YOLOv8-seg ONNX as a model block of its own; repeatable",
    )
    p.add_argument("--demo", type=Path, default=None, help="ONNX for the demo row (default models/demo-seg.onnx)")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES), help="frame sizes, WxH,...")
    p.add_argument("--no-ultralytics", action="store_true", help="skip the Ultralytics comparison")
    p.add_argument("--from-json", type=Path, default=None, help="only render --out from a saved --json file")
    p.add_argument(
        "--int8",
        default=None,
        help="int8 twins, each measured as a model of its own and against its fp32 model side by side: 'auto' "
        "makes one with seg-agent quantize for every trained model of the run; KEY=PATH,... gives them; a "
        "lone PATH is the demo model's",
    )
    return p.parse_args(argv)


def _pairs(text: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=PATH, got {item!r}")
        out[key.strip()] = Path(path.strip()).resolve()
    return out


def _int8_files(spec: str | None, models: list[ModelInfo], work: Path) -> dict[str, Path]:
    """fp32 key -> its int8 file, from ``--int8`` (``auto`` quantizes every trained model now)."""
    if not spec:
        return {}
    if spec == "auto":
        files = {}
        for m in models:
            if m.trained and m.int8_of is None:
                log(f"{m.key}: quantizing (seg-agent quantize)")
                files[m.key] = quantize(m, work)
        return files
    if "=" in spec:
        return _pairs(spec)
    return {"demo": Path(spec).resolve()}


def _measure_model(
    m: ModelInfo, floor: Floor, mq: Any, work: Path, videos: dict, packets: dict, plan: Plan
) -> dict[str, Any]:
    """One model's block: per frame size the stages, the throughput runs and the paced run, with the floor
    sampled between them."""
    onnx = OnnxModel(m.path, threads=int(m.floor["best_threads"]))
    entry: dict[str, Any] = {
        "key": m.key,
        "note": m.note,
        "input_hw": list(m.input_hw),
        "num_classes": m.num_classes,
        "trained": m.trained,
        "int8_of": m.int8_of,
        "floor": m.floor,
        "sizes": {},
    }
    for w, h in videos:
        size_key = f"{w}x{h}"
        row: dict[str, Any] = {}
        since = floor.mark()
        floor.sample(plan.floor_runs // 2)
        log(f"{m.key} {size_key}: stages")
        row["stages"] = measure_stages(m, onnx, packets[(w, h)], (w, h), plan)
        floor.sample(plan.floor_runs // 2)
        log(f"{m.key} {size_key}: pipeline, throughput")
        row["throughput"] = pipeline_throughput(mq, work, m, videos[(w, h)], plan)
        floor.sample(plan.floor_runs // 2)
        if CORES >= SESSIONS:
            log(f"{m.key} {size_key}: pipeline, throughput, {SESSIONS} sessions x {CORES // SESSIONS} thread(s)")
            row["throughput_sessions"] = pipeline_throughput(mq, work, m, videos[(w, h)], plan, sessions=SESSIONS)
            floor.sample(plan.floor_runs // 2)
        log(f"{m.key} {size_key}: pipeline, throughput, 2 frames in flight, spinning on")
        row["throughput_overlap"] = pipeline_throughput(mq, work, m, videos[(w, h)], plan, local=OVERLAP_LOCAL)
        floor.sample(plan.floor_runs // 2)
        log(f"{m.key} {size_key}: pipeline, paced at {PACED_FPS:g} fps")
        row["paced"] = pipeline_paced(mq, work, m, videos[(w, h)], plan)
        floor.sample(plan.floor_runs // 2)
        row["floor"] = floor.local(since)
        entry["sizes"][size_key] = row
    return entry


def _ultralytics(
    results: dict[str, Any], entry: dict[str, Any], python: Path, work: Path, m: ModelInfo, packets: dict, plan: Plan
) -> None:
    log(f"{m.key}: Ultralytics predict")
    try:
        ul = ultralytics_predict(python, work, m, packets, plan)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        results["ultralytics_note"] = f"failed: {exc}"
        return
    results["ultralytics_version"] = ul.get("ultralytics")
    results["ultralytics_nms"] = ul.get("nms")
    for key, value in ul["sizes"].items():
        entry["sizes"].setdefault(key, {})["ultralytics"] = value
    for key, value in ul["low_conf"].items():
        entry["sizes"].setdefault(key, {})["ultralytics_low"] = value


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        args.out.write_text(render_markdown(saved, saved.get("command", "python benchmarks/run.py")))
        log(f"wrote {args.out} from {args.from_json}")
        return 0
    started = time.time()
    limit_helper_threads()  # the in-process stages run as the agent runs them: one OpenCV and OpenBLAS thread
    plan = Plan.make(args.quick)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    python = bench_python(args.bench_python)
    results: dict[str, Any] = {"machine": machine(), "busy": busy_processes(), "quick": args.quick, "models": []}
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    paths = _pairs(",".join(args.model_path))
    models, notes = prepare_models(work, wanted, python, args.demo.resolve() if args.demo else None, paths)
    twins = _int8_files(args.int8, models, work)
    add_int8_twins(models, twins, notes)
    results["notes"] = notes
    if python is None:
        results["ultralytics_note"] = "no benchmark environment"
    elif args.no_ultralytics:
        results["ultralytics_note"] = "skipped (--no-ultralytics)"
    probe = np.zeros((480, 640, 3), np.uint8)
    floors: dict[str, Floor] = {}
    for m in models:
        log(f"{m.key}: floor")
        floors[m.key] = Floor(m, probe)
        floors[m.key].choose(plan.floor_runs)
        log(f"{m.key}: floor {m.floor['best_ms']:.1f} ms ({m.floor['best_threads']} threads)")
    videos = make_videos(work, sizes)
    packets = {size: read_packets(videos[size], max(plan.stage_runs, 8)) for size in sizes}
    with broker(work) as mq:
        for m in models:
            entry = _measure_model(m, floors[m.key], mq, work, videos, packets, plan)
            if python is not None and not args.no_ultralytics and not m.split_head:  # Ultralytics cannot decode it
                _ultralytics(results, entry, python, work, m, {s: packets[s] for s in sizes}, plan)
            entry["floor"] = m.floor  # the median over every floor sample of the run
            results["models"].append(entry)
        by_key = {m.key: m for m in models}
        results["int8"] = []
        for fp32_key, int8_path in twins.items():
            if fp32_key not in by_key:
                continue
            log(f"{fp32_key} fp32 vs int8: session, detect, mask AP, side by side")
            heldout, runs = (100, 20) if args.quick else (200, 40)
            pair = int8_bench.compare(by_key[fp32_key].path, int8_path, work, heldout_n=heldout, runs=runs)
            results["int8"].append({"key": fp32_key, **pair})
        if models:
            demo = next((m for m in models if m.key == "demo"), models[0])
            log("idle: a stalled live source")
            results["stalled"] = pipeline_stalled(mq, work, demo, plan)
    results["load_end"] = os.getloadavg()
    results["took_s"] = time.time() - started
    command = "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    results["command"] = command.strip()
    args.out.write_text(render_markdown(results, command.strip()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(build_tables(results))
    log(f"wrote {args.out}")
    shutil.rmtree(work / "tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
