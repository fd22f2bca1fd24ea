"""Tracking + zones + events per frame at 50 objects, against the demo model's ``session.run``, in one run;
optionally against another checkout (the baseline), interleaved.

    PYTHONPATH=$PWD python benchmarks/objects.py [--baseline /path/to/other/checkout] [--rounds 5] \
        [--image] [--model PATH.onnx ...]

What a frame costs the Sink with tracking and events on: ``CameraTracks.apply`` (the predictions read, the
association, the tagged copy of the API object) then ``EventStage.deliver`` (zones, lines, events, counts, the
retained count board, line counts kept in a file where the checkout does that; events encoded for the
outbox), on 1280x720 frames with ``--objects`` moving boxes
(``benchmarks/tracking.py``'s scene: crossing, 5 % missed, scores 0.4-1.0), 3 zones and 2 lines. Each round
runs one child process per checkout (this file, with that checkout's ``agent`` on ``PYTHONPATH``), in turn, so a
busy machine slows both alike; a child reports medians over ``--frames`` frames (after 20 of warm-up) and the
median of the demo model's bare ``OnnxModel.run`` (ONNX Runtime's ``session.run`` on a 640x640 tensor) and
of its whole ``detect`` on a 640x480 frame, measured in the same process before and after. The figures are
medians over the rounds; the CPU time of both stages (``time.thread_time``) is shown too, the figure other
processes' load stretches least, and against it the CPU time of a 1-thread ``session.run`` of each model
(the ratio to trust on a busy machine; the agent runs the model on 2 threads, whose wall time idle is less).

``--image`` measures each checkout a second time with each frame's pixels passed to ``CameraTracks.apply``
(the appearance gate's colours, as the Sink does for frames it has decoded): a 1280x720 frame rendered per
frame outside the timed part, each box filled with its object's own colour, each prediction's ``points`` a
32-vertex ellipse in its box as the local model gives. Those runs' ids may differ from the runs without
pixels (the gate refuses matches), so their digests are compared among themselves.

``--model`` (repeatable) adds other ONNX models' ``session.run`` (and ``detect``) as further references, for
instance a 640 YOLOv8n-seg export; each percentage is tracking + events over that model's median time.

Identity: each child also writes what the frames produced (every frame's tracker ids and tagged API object
as published, its events without the random ``message_id``, the retained counts it published, sorted within
the frame, and the final line counts file) as one SHA-256; the parent refuses to report if two checkouts
differ, so a faster stage can't be a different one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

ZONES = [
    {"name": "left", "points": [[0, 0], [0.4, 0], [0.4, 1], [0, 1]], "units": "fraction"},
    {"name": "dock", "points": [[760, 400], [1220, 400], [1220, 700], [760, 700]]},
    {"name": "wedge", "points": [[640, 60], [1200, 300], [680, 390], [900, 220]]},
]
LINES = [
    {"name": "gate", "start": [80, 360], "end": [1200, 360]},
    {"name": "door", "start": [0.5, 0], "end": [0.5, 1], "units": "fraction"},
]


def _settings(tmp: Path) -> Any:
    from agent.config import parse_settings

    (tmp / "m.onnx").write_bytes(b"x")
    (tmp / "x.avi").write_bytes(b"")
    doc = {
        "device_id": "bench",
        "cameras": [{"name": "cam", "source": "x.avi", "zones": ZONES, "lines": LINES}],
        "inference": {"mode": "local", "local": {"model": "m.onnx"}},
        "mqtt": {"host": "127.0.0.1"},
        "state_dir": "state",
        "tracking": {"enabled": True},
        "events": {"enabled": True, "update_interval_s": 1.0},
    }
    return parse_settings(doc, base_dir=tmp, env={})


DEMO = ROOT / "models" / "demo-seg.onnx"


def _model_cpu_ms(path: Path, runs: int = 7) -> float:
    """Median CPU time of a 1-thread session.run (``time.thread_time``: the load of other processes does not
    stretch it, as it stretches the wall time of a multi-threaded run)."""
    from agent.model import OnnxModel

    model = OnnxModel(path, threads=1)
    tensor = np.random.default_rng(0).random((1, 3, *model.input_hw), dtype=np.float32)
    cpu = []
    for i in range(runs + 2):
        t0 = time.thread_time()
        model.run(tensor)
        if i >= 2:
            cpu.append(time.thread_time() - t0)
    return 1000 * statistics.median(cpu)


def _model_ms(path: Path = DEMO, runs: int = 15) -> tuple[float, float]:
    """Medians of the bare session.run and of the whole detect (letterbox to polygons) of a 640x480 frame."""
    from agent.model import OnnxModel
    from agent.synth import render_sample

    model = OnnxModel(path)
    tensor = np.random.default_rng(0).random((1, 3, *model.input_hw), dtype=np.float32)
    image, _ = render_sample(np.random.default_rng([5, 0]), (480, 640), n_shapes=8)
    run, detect = [], []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        model.run(tensor)
        t1 = time.perf_counter()
        model.detect(image, confidence=0.4, overlap=0.3)
        if i >= 3:
            run.append(t1 - t0)
            detect.append(time.perf_counter() - t1)
    return 1000 * statistics.median(run), 1000 * statistics.median(detect)


def _digest(frames: list[tuple[list[int], bytes, list[bytes], list[tuple[str, bytes]]]], counts: bytes) -> str:
    """One hash of everything the frames produced (see the module's docstring)."""
    h = hashlib.sha256()
    for ids, api, events, retained in frames:
        h.update(json.dumps(ids).encode())
        h.update(api)
        for payload in events:
            event = json.loads(payload)
            event.pop("message_id", None)
            h.update(json.dumps(event).encode())
        for topic, value in sorted(retained):
            h.update(topic.encode() + b"=" + value)
        h.update(b"|")
    h.update(counts)
    return h.hexdigest()


def _with_pixels(apis: list[dict[str, Any]], objects: int) -> Any:
    """Each API object with ellipse ``points`` on its predictions, and a function rendering frame i."""
    from agent.results import Points

    colours = np.random.default_rng(7).integers(0, 256, size=(objects, 3))
    angle = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    unit = np.stack([np.cos(angle), np.sin(angle)], axis=1) / 2
    for api in apis:
        for p in api["predictions"]:
            p["points"] = Points(unit * (p["width"], p["height"]) + (p["x"], p["y"]))

    def render(api: dict[str, Any]) -> np.ndarray:
        img = np.full((720, 1280, 3), 90, np.uint8)
        for p in api["predictions"]:
            k = int(p["detection_id"].split("-")[1])
            x0, y0 = max(0, int(p["x"] - p["width"] / 2)), max(0, int(p["y"] - p["height"] / 2))
            img[y0 : int(p["y"] + p["height"] / 2), x0 : int(p["x"] + p["width"] / 2)] = colours[k]
        return img

    return render


def child(objects: int, frames: int, models: list[Path], image: bool = False) -> dict[str, Any]:
    import agent
    import agent.config
    import agent.model
    from agent.events import EventStage
    from agent.results import encode
    from agent.tracking import CameraTracks

    # this checkout's scene, after the measured checkout's agent is imported (tracking.py puts ROOT on sys.path)
    sys.path.insert(1, str(ROOT / "benchmarks"))
    from tracking import scene

    apis = scene(objects, frames + 20)
    render = _with_pixels(apis, objects) if image else None
    refs = [DEMO, *models]
    before = [_model_ms(m) for m in refs]
    produced = []
    with tempfile.TemporaryDirectory() as d:
        settings = _settings(Path(d))
        tracks = CameraTracks(settings.tracking, ["cam"])
        retained: list[tuple[str, bytes]] = []
        events: list[bytes] = []
        # line counts kept in state_dir, as the daemon does, where the measured checkout has it
        extra = (
            {"counts_file": Path(d) / "line_counts.json"}
            if "counts_file" in EventStage.__init__.__code__.co_varnames
            else {}
        )
        stage = EventStage(
            settings,
            topic="bench/events",
            put=lambda topic, payload, created: events.append(payload),
            publish_retained=lambda topic, payload: retained.append((topic, payload)),
            connection=lambda: 1,
            **extra,
        )
        track_s, event_s, cpu_s = [], [], []  # cpu_s: both stages' CPU time (other processes' load aside)
        for i, api in enumerate(apis):
            t = 1_800_000_000.0 + i / 10.0
            pixels = None if render is None else render(api)
            c0, t0 = time.thread_time(), time.perf_counter()
            tracked = tracks.apply("cam", t, api) if pixels is None else tracks.apply("cam", t, api, pixels)
            t1 = time.perf_counter()
            stage.deliver("cam", t, i, tracked)
            c2, t2 = time.thread_time(), time.perf_counter()
            if i >= 20:
                track_s.append(t1 - t0)
                event_s.append(t2 - t1)
                cpu_s.append(c2 - c0)
            produced.append((tracked.ids.tolist(), encode(tracked.api), list(events), list(retained)))
            events.clear()
            retained.clear()
        stage.finish("cam", [e.tracker_id for e in tracks.finish("cam")])
        produced.append(([], b"", list(events), list(retained)))
        counts_file = Path(d) / "line_counts.json"
        counts = counts_file.read_bytes() if counts_file.exists() else b""
    after = [_model_ms(m) for m in refs]
    cpu = [_model_cpu_ms(m) for m in refs]
    both = [a + b for a, b in zip(track_s, event_s, strict=True)]
    out = {
        "tracking_ms": 1000 * statistics.median(track_s),
        "events_ms": 1000 * statistics.median(event_s),
        "both_ms": 1000 * statistics.median(both),
        "both_cpu_ms": 1000 * statistics.median(cpu_s),
        "agent": str(Path(agent.__file__).parent.parent),
        "digest": _digest(produced, counts),
    }
    for k, ((run0, det0), (run1, det1)) in enumerate(zip(before, after, strict=True)):
        out[f"run_ms_{k}"] = (run0 + run1) / 2
        out[f"detect_ms_{k}"] = (det0 + det1) / 2
        out[f"run_cpu_ms_{k}"] = cpu[k]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    p.add_argument("--baseline", type=Path, help="another checkout of seg-agent to measure alongside")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--objects", type=int, default=50)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--model", type=Path, action="append", default=[], help="another ONNX model to compare with")
    p.add_argument("--image", action="store_true", help="also this checkout with the frames' pixels")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    models = [m.resolve() for m in args.model]
    if args.child:
        print(json.dumps(child(args.objects, args.frames, models, args.image)))
        return 0
    this = Path(os.environ.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0] or ROOT)
    repos = {"this": this}
    if args.baseline:
        repos = {"baseline": args.baseline, **repos}
    if args.image:
        repos = {**repos, **{f"{name}+image": repo for name, repo in repos.items()}}
    got: dict[str, list[dict[str, Any]]] = {name: [] for name in repos}
    for _ in range(args.rounds):
        for name, repo in repos.items():
            cmd = [sys.executable, __file__, "--child", "--objects", str(args.objects), "--frames", str(args.frames)]
            cmd += [a for m in models for a in ("--model", str(m))] + (["--image"] if name.endswith("+image") else [])
            env = {**os.environ, "PYTHONPATH": str(repo)}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=repo)
            got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.objects} objects, 3 zones, 2 lines, {args.frames} frames, medians of {args.rounds} rounds")
    digests = {r["digest"] for name, rows in got.items() for r in rows if not name.endswith("+image")}
    with_pixels = {r["digest"] for name, rows in got.items() for r in rows if name.endswith("+image")}
    for name, rows in got.items():
        assert all(r["agent"] == str(repos[name].resolve()) for r in rows), [r["agent"] for r in rows]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k not in ("agent", "digest")}
        print(
            f"{name:14s} {repos[name]}: tracking {med['tracking_ms']:.3f} ms + events {med['events_ms']:.3f} ms"
            f" = {med['both_ms']:.3f} ms/frame (CPU time {med['both_cpu_ms']:.3f} ms)"
        )
        for k, ref in enumerate([DEMO, *models]):
            ratio = statistics.median(100 * r["both_ms"] / r[f"run_ms_{k}"] for r in rows)
            cpu_ratio = statistics.median(100 * r["both_cpu_ms"] / r[f"run_cpu_ms_{k}"] for r in rows)
            print(
                f"{'':14s} vs {ref.name}: session.run {med[f'run_ms_{k}']:.1f} ms ({ratio:.2f} %),"
                f" detect {med[f'detect_ms_{k}']:.1f} ms ({100 * med['both_ms'] / med[f'detect_ms_{k}']:.2f} %);"
                f" CPU time of a 1-thread session.run {med[f'run_cpu_ms_{k}']:.1f} ms ({cpu_ratio:.2f} %)"
            )
    if len(digests) != 1 or len(with_pixels) > 1:
        print(f"OUTPUTS DIFFER between checkouts or rounds: {sorted(digests)} {sorted(with_pixels)}")
        return 1
    if with_pixels:
        print(f"with pixels (appearance gate on), identical across checkouts and rounds: {with_pixels.pop()[:16]}")
    print(f"outputs identical across checkouts and rounds (ids, API objects, events, counts): {digests.pop()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
