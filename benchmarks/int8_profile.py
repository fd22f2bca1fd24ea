"""Where a model's time goes, op type by op type: ONNX Runtime's own profiler around ``session.run``.

    python benchmarks/int8_profile.py MODEL.onnx [MODEL2.onnx ...] [--threads 2] [--runs 30]

Each model gets the agent's session (:func:`agent.runtime.open_session` with its ``session_options``,
ORT_ENABLE_ALL, an int8 file without the NCHWc pass) plus ``enable_profiling``; the models are run
interleaved (so that both see the same background load on this shared machine), on one letterboxed 640x480
synth frame, after a warm-up. For every op type of the
*optimized* graph (what ONNX Runtime actually runs: QLinearConv, QLinearSigmoid, the float head's Conv,
the remaining QuantizeLinear/DequantizeLinear, layout reorders) it prints the median per run of the summed
kernel time, the node count, and the share of the sum of those medians. On a loaded machine the sum of the
op medians is well below the median of the runs' kernel sums (a preempted run stretches a few kernels by
milliseconds; each op's median drops those), so the shares describe the work, the wall median the load; both
are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent import synth  # noqa: E402
from agent.calibration import model_tensor  # noqa: E402
from agent.model import OnnxModel, limit_helper_threads  # noqa: E402
from agent.runtime import open_session, session_options  # noqa: E402

__all__ = ["profile_models", "render_profile"]


def _kernel_events(trace: list[dict[str, Any]]) -> list[tuple[int, str, str, float]]:
    """(run index, op type, node name, microseconds) of every kernel in a profile, runs numbered by the
    ``model_run`` events they fall inside."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
    out = []
    for e in trace:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        index = next((i for i, (a, b) in enumerate(runs) if a <= e["ts"] <= b), -1)
        out.append((index, str(args.get("op_name", "?")), str(e["name"])[: -len("_kernel_time")], float(e["dur"])))
    return out


def _optimized_ops(model: Path, threads: int, work: Path) -> dict[str, int]:
    import onnx

    options = session_options(threads)
    options.optimized_model_filepath = str(work / f"{model.stem}.opt.onnx")
    open_session(model, options, "cpu", None)
    counts: dict[str, int] = defaultdict(int)
    for node in onnx.load(options.optimized_model_filepath).graph.node:
        counts[node.op_type] += 1
    return dict(counts)


def profile_models(models: list[Path], threads: int, runs: int) -> list[dict[str, Any]]:
    """One summary per model: wall median, kernel-sum median, and per op type (median us per run, nodes)."""
    frame = synth.render_sample(np.random.default_rng([4040, 0]), (480, 640))[0]
    tensor = model_tensor(OnnxModel(models[0]), frame)
    sessions, walls = [], [[] for _ in models]
    for m in models:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"ortprof-{m.stem}")
        s = open_session(m, options, "cpu", None)  # the agent's way: an int8 file without the NCHWc pass
        sessions.append((s, s.get_inputs()[0].name))
    feeds = [OnnxModel(m).input_tensor(tensor) for m in models]  # a uint8-input int8 file: its bytes
    for (s, name), feed in zip(sessions, feeds, strict=True):  # warm-up, then interleaved
        s.run(None, {name: feed})
    for rep in range(runs):
        for i in range(len(models)) if rep % 2 == 0 else reversed(range(len(models))):
            s, name = sessions[i]
            t0 = time.perf_counter()
            s.run(None, {name: feeds[i]})
            walls[i].append(1000 * (time.perf_counter() - t0))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (m, (s, _)) in enumerate(zip(models, sessions, strict=True)):
            trace = json.loads(Path(s.end_profiling()).read_text())
            per_run: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            names: dict[str, set[str]] = defaultdict(set)
            for run, op, node, us in _kernel_events(trace):
                if run > 0:  # run 0 is the warm-up
                    per_run[run][op] += us
                    names[op].add(node)
            ops = sorted(names)
            by_op = {op: statistics.median(per_run[r].get(op, 0.0) for r in per_run) for op in ops}
            totals = sorted(sum(v.values()) for v in per_run.values())
            out.append(
                {
                    "model": str(m),
                    "threads": threads,
                    "wall_ms": statistics.median(walls[i]),
                    "kernel_ms": sum(by_op.values()) / 1000,
                    "kernel_run_median_ms": statistics.median(totals) / 1000,
                    "ops": {op: {"ms": by_op[op] / 1000, "nodes": len(names[op])} for op in ops},
                    "optimized_graph": _optimized_ops(m, threads, Path(tmp)),
                }
            )
    return out


def render_profile(summary: list[dict[str, Any]]) -> str:
    lines = []
    for s in summary:
        lines.append(
            f"{Path(s['model']).name}, {s['threads']} thread(s): wall median {s['wall_ms']:.2f} ms, "
            f"sum of the op medians {s['kernel_ms']:.2f} ms (median of the runs' kernel sums "
            f"{s['kernel_run_median_ms']:.2f} ms)"
        )
        for op, v in sorted(s["ops"].items(), key=lambda kv: -kv[1]["ms"]):
            share = 100 * v["ms"] / s["kernel_ms"] if s["kernel_ms"] else 0.0
            lines.append(f"  {op:<28}{v['ms']:8.3f} ms {share:5.1f} %  {v['nodes']:4d} nodes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/int8_profile.py", description=__doc__.split("\n")[0])
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    limit_helper_threads()
    summary = profile_models(args.models, args.threads, args.runs)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    print(render_profile(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
