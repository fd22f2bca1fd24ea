"""Overlap for accelerators, measured with a simulated one: frames/s and latency against frames in flight.

    python benchmarks/overlap.py [--ms 4 8] [--in-flight 1 2 3 4] [--seconds 10] [--reps 3] [--cpu]
                                 [--spin on off] [--threads]

The real agent (``benchmarks.pipeline``: capture of an MJPG file, letterbox, decode, masks, polygons, JSON,
SQLite outbox, MQTT to a throwaway Mosquitto) runs with the demo model, except that ``session.run`` is a
simulated accelerator: it sleeps ``T`` ms (no CPU) and returns the outputs the real model gave on the clip's
first frame (precomputed once, so every frame's decode finds the same objects a real run finds). Each row
is ``inference.local.frames_in_flight`` = 1 (no overlap: one frame at a time) up to 4 (frame N's CPU work
beside frame N+1's run, and capture beside both). The target is frames/s >= 0.9 x min(1000 / T, cores x
1000 / CPU-ms-per-frame), where CPU-ms-per-frame is the agent's whole process CPU per result in that row.

``--cpu`` adds the CPU path (the real model, no simulation): throughput, and a lone frame's latency (2 fps
paced, so frames never overlap) with 1 and 2 frames in flight: the overlap must not cost a lone frame.
Rows are repeated ``--reps`` times, interleaved (every setting once, then again), and medians are printed:
the machine is shared, so single runs swing. ``--spin on off`` measures every row with ONNX Runtime's
pool threads spinning and not (``inference.local.spin``) and prints the off / on ratios of the same run;
the CPU path then also has one session of ``cores`` threads with 2 frames in flight, and ``cores`` sessions
of one thread. ``--threads`` prints each row's CPU per frame by thread (capture, worker, inference pool,
ONNX Runtime's own threads as ``native``, paho, the outbox).
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

MODEL = REPO / "models" / "demo-seg.onnx"
VIDEO = REPO / "models" / "sample.avi"


class SimulatedSession:
    """An ONNX Runtime session whose ``run`` takes ``ms`` of wall time and no CPU, returning ``outputs``."""

    def __init__(self, real: Any, ms: float, outputs: list[Any]) -> None:
        self._real = real
        self._s = ms / 1000.0
        self._outputs = outputs

    def __getattr__(self, name: str) -> Any:  # inputs, outputs, metadata, providers: the real session's
        return getattr(self._real, name)

    def run(self, names: list[str], feed: dict[str, Any]) -> list[Any]:
        time.sleep(self._s)
        by_name = dict(zip([o.name for o in self._real.get_outputs()], self._outputs, strict=True))
        return [by_name[n] for n in names]


def _real_outputs(session: Any) -> list[Any]:
    """The model's outputs on the clip's first frame, letterboxed as the agent does."""
    import cv2

    from agent.preprocess import letterbox, letterbox_uint8

    capture = cv2.VideoCapture(str(VIDEO))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read {VIDEO}")
    shape = session.get_inputs()[0].shape
    box = letterbox_uint8 if session.get_inputs()[0].type == "tensor(uint8)" else letterbox  # quantize_input
    tensor, _ = box(frame, (int(shape[2]), int(shape[3])))
    return list(session.run(None, {session.get_inputs()[0].name: tensor}))


def child(ms: float, argv: list[str]) -> int:
    """``benchmarks.pipeline`` with every session opened by the agent simulated (``ms`` > 0); ``--no-own-threads``
    first: a session pool's runs made by the frames' threads (the agent before session threads)."""
    import agent.model
    import agent.pipeline
    from agent.session_pool import SessionPool
    from benchmarks import pipeline

    if argv[:1] == ["--no-own-threads"]:
        argv = argv[1:]

        def pool(models: Any, own_threads: bool = False) -> SessionPool:
            return SessionPool(models, own_threads=False)

        agent.pipeline.SessionPool = pool  # type: ignore[attr-defined,assignment]

    if os.environ.get("OVERLAP_SWITCH_S"):  # experiments: the GIL's switch interval
        sys.setswitchinterval(float(os.environ["OVERLAP_SWITCH_S"]))
    if ms > 0:
        real_open = agent.model.open_session

        def open_simulated(*args: Any, **kwargs: Any) -> Any:
            real = real_open(*args, **kwargs)
            return SimulatedSession(real, ms, _real_outputs(real))

        agent.model.open_session = open_simulated  # type: ignore[assignment]
    return pipeline.main(argv)


Setting = tuple[str, float, int, str, int, int, bool]
"""(kind, simulated ms, frames_in_flight, spin, sessions, threads, session threads); kind: sim, cpu (throughput)
or lone (paced); session threads False: runs made by the frames' own threads as before (``--before``)."""


def _config(path: Path, port: int, camera: dict[str, Any], setting: Setting, state: Path) -> Path:
    _, _, in_flight, spin, sessions, threads, _ = setting
    config = {
        "device_id": "bench",
        "log_level": "warning",
        "cameras": [{"name": "cam0", **camera}],
        "inference": {
            "mode": "local",
            "confidence": 40,
            "overlap": 30,
            "local": {
                "model": str(MODEL),
                "threads": threads,
                "sessions": sessions,
                "frames_in_flight": in_flight,
                "spin": spin,
            },
        },
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(state),
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _run(port: int, setting: Setting, seconds: float) -> dict[str, Any]:
    mode = "paced" if setting[0] == "lone" else "throughput"
    camera: dict[str, Any] = (
        {"source": str(VIDEO), "fps": 0, "realtime": False, "loop": True}
        if mode == "throughput"
        else {"source": str(VIDEO), "fps": 2, "realtime": True, "loop": True}
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp) / "agent.yaml", port, camera, setting, Path(tmp) / "state")
        own = [] if setting[6] else ["--no-own-threads"]
        args = ["--config", str(config), "--mode", mode, "--seconds", str(seconds), "--warmup", "3"]
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(setting[1]), *own, *args],
            capture_output=True,
            text=True,
            timeout=seconds * 4 + 120,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"run failed ({proc.returncode}): {proc.stderr[-800:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    rows = [row for row in r["rows"] if row[2] >= r["window_start"]]
    results = max(1, r["results_in_window"])
    return {
        "fps": r["results_in_window"] / r["window_s"],
        "cpu_ms_per_frame": r["cpu_s"] * 1000 / results,
        "latency_ms": statistics.median([(ack - cap) * 1000 for cap, _, ack in rows]) if rows else float("nan"),
        **{f"thread:{k}": v * 1000 / results for k, v in r.get("thread_cpu_s", {}).items()},
    }


def _median_rows(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for run in runs for k in run}
    return {k: statistics.median(run.get(k, 0.0) for run in runs) for k in keys}


def _settings(args: argparse.Namespace, cores: int) -> list[Setting]:
    out: list[Setting] = []
    for ms in args.ms:
        for n in args.in_flight:
            out += [("sim", ms, n, spin, 1, cores, True) for spin in args.spin]
            if args.before and n > 1:
                out.append(("sim", ms, n, "auto", 1, cores, False))
    if args.cpu:
        for spin in args.spin:
            out += [("cpu", 0.0, 1, spin, 1, cores, True), ("cpu", 0.0, 2, spin, 1, cores, True)]
            out += [("lone", 0.0, 1, spin, 1, cores, True), ("lone", 0.0, 2, spin, 1, cores, True)]
        out += [("cpu", 0.0, cores, "auto", cores, 1, True)]  # one thread per session: no pool to spin
    return out


def _describe(setting: Setting, m: dict[str, float], cores: int) -> str:
    kind, ms, n, spin, sessions, threads, own = setting
    where = f"spin {spin:4s} {sessions} x {threads} thr, in flight {n}{'' if own else ', BEFORE (no session thread)'}"
    cpu = f"CPU {m['cpu_ms_per_frame']:5.2f} ms/frame"
    if kind == "sim":
        bound = min(1000.0 / ms, cores * 1000.0 / m["cpu_ms_per_frame"])
        return (
            f"  simulated T={ms:g} ms, {where}: {m['fps']:6.1f} frames/s, {cpu}, bound {bound:6.1f} -> "
            f"{m['fps'] / bound:.2f}x (target 0.90x), latency p50 {m['latency_ms']:.1f} ms"
        )
    if kind == "cpu":
        return (
            f"  CPU path (real model), {where}: {m['fps']:6.1f} frames/s, {cpu}, latency p50 {m['latency_ms']:.1f} ms"
        )
    return f"  CPU path, a lone frame (2 fps paced), {where}: latency p50 {m['latency_ms']:.1f} ms, {cpu}"


def _threads_line(m: dict[str, float]) -> str:
    parts = sorted(((k[7:], v) for k, v in m.items() if k.startswith("thread:")), key=lambda kv: -kv[1])
    return "      CPU ms/frame by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in parts[:8])


def _print_spin_ratios(runs: dict[Setting, list[dict[str, Any]]]) -> None:
    """Spin off / spin on for each setting measured both ways: the median of the per-repetition ratios (each
    repetition's two runs were taken minutes apart at most, so they saw similar load)."""
    for setting, done in runs.items():
        if setting[3] != "off":
            continue
        on = runs.get((*setting[:3], "on", *setting[4:]))
        if not on:
            continue
        key = "latency_ms" if setting[0] == "lone" else "fps"
        ratio = statistics.median(a[key] / b[key] for a, b in zip(done, on, strict=True))
        cpu = statistics.median(a["cpu_ms_per_frame"] / b["cpu_ms_per_frame"] for a, b in zip(done, on, strict=True))
        kind, ms, n = setting[:3]
        what = f"T={ms:g} ms" if kind == "sim" else kind
        print(f"  spin off / on, {what}, in flight {n}: {key} {ratio:.2f}x, CPU per frame {cpu:.2f}x")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(float(argv[1]), argv[2:])
    p = argparse.ArgumentParser(prog="python benchmarks/overlap.py", description=__doc__.split("\n")[0])
    p.add_argument("--ms", type=float, nargs="+", default=[4.0, 8.0], help="simulated session.run times")
    p.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 3, 4], help="frames_in_flight values")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cpu", action="store_true", help="also the CPU path: throughput and a lone frame's latency")
    p.add_argument("--spin", nargs="+", default=["auto"], choices=["auto", "on", "off"], help="inference.local.spin")
    p.add_argument("--threads", action="store_true", help="also each row's CPU per frame by thread")
    p.add_argument("--before", action="store_true", help="also each overlapped row without session threads")
    args = p.parse_args(argv)
    from tests.mosquitto import Mosquitto

    cores = os.cpu_count() or 1
    print(f"{cores} cores; load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    settings = _settings(args, cores)
    runs: dict[Setting, list[dict[str, Any]]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        for _ in range(args.reps):
            for setting in settings:
                runs[setting].append(_run(broker.port, setting, args.seconds))
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; medians of {args.reps} runs")
    medians = {s: _median_rows(done) for s, done in runs.items()}
    for setting, m in medians.items():
        print(_describe(setting, m, cores))
        if args.threads:
            print(_threads_line(m))
    _print_spin_ratios(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
