"""The worker's serial CPU per frame outside ``session.run``, by stage, in CPU time (load-robust).

    python benchmarks/worker_cpu.py MODEL [--int8 PATH] [--sizes 640x480,1920x1080] [--frames 12] [--reps 5]

What the inference thread does for each frame besides the model's run, timed with ``time.thread_time()``
(the calling thread's CPU: other processes' load does not stretch it): the letterbox; the decode's
candidates and NMS; the masks (``agent.masks.proto_masks_in_boxes``); the polygons and assembly
(``agent.decoders._assemble``); the API JSON (``benchmarks.bench_stages.json_payload``: ``detections_to_api``,
``to_message``, ``encode``). The masks and polygons are timed by wrapping those two functions in this process
(nothing of the agent is changed; the masks are a generator that ``_assemble`` drains, so each of its steps is
timed); the decode's rest is its total less them. Beside them, the model's own run at 1 thread (every kernel
on the calling thread, so its CPU time is the work). Not timed: the outbox's put (SQLite) and the MQTT publish.

``--int8 PATH``: an int8 file of ``seg-agent quantize``; measured twice, before and after issue 17's uint8
input (``agent.quantize_input``): its float-input twin with the float letterbox, and the uint8-input file with
:func:`agent.preprocess.letterbox_uint8`. Synth frames (``agent.synth.render_sample``, the shapes the trained
640 model knows) at each size; the configurations interleaved frame by frame; medians over frames x reps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import agent.decoders as decoders  # noqa: E402
from agent import synth  # noqa: E402
from agent.model import OnnxModel, limit_helper_threads  # noqa: E402
from agent.preprocess import letterbox, letterbox_uint8  # noqa: E402
from benchmarks.bench_base import CONFIDENCE  # noqa: E402  (the agent's defaults: confidence 40, overlap 30)
from benchmarks.bench_stages import decode_outputs, json_payload  # noqa: E402

STAGES = ("letterbox", "candidates+nms", "masks", "polygons", "json")

_spent: dict[str, float] = {}


def _wrapped(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[name] = _spent.get(name, 0.0) + time.thread_time() - t0

    return timed


def _timed_masks(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``proto_masks_in_boxes`` yields each mask as it is computed (in ``_assemble``'s loop): time each step."""

    def masks(*args: Any, **kwargs: Any) -> Iterator[Any]:
        it = fn(*args, **kwargs)
        while True:
            t0 = time.thread_time()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                _spent["masks"] = _spent.get("masks", 0.0) + time.thread_time() - t0
            yield item

    return masks


def _instrument() -> None:
    decoders.proto_masks_in_boxes = _timed_masks(decoders.proto_masks_in_boxes)  # type: ignore[assignment]
    decoders._assemble = _wrapped("assemble", decoders._assemble)  # type: ignore[assignment]


def _frame_stages(model: OnnxModel, frame: np.ndarray, uint8: bool) -> tuple[dict[str, float], int]:
    """One frame's stages in ms of this thread's CPU, and its detections."""
    box = letterbox_uint8 if uint8 else letterbox
    t0 = time.thread_time()
    tensor, params = box(frame, model.input_hw)
    t1 = time.thread_time()
    outputs = model.run(tensor)
    t2 = time.thread_time()
    _spent.clear()
    h, w = frame.shape[:2]
    kw = {"params": params, "input_hw": model.input_hw, "frame_hw": (h, w), "confidence": CONFIDENCE}
    det = decode_outputs(model, outputs, kw)  # the model's own decoder: the split one for a cut model
    t3 = time.thread_time()
    json_payload(det, model.class_names, (w, h))
    t4 = time.thread_time()
    masks = _spent.get("masks", 0.0)
    polygons = _spent.get("assemble", 0.0) - masks  # the masks are computed inside _assemble's loop
    ms = {
        "letterbox": t1 - t0,
        "run_1thread": t2 - t1,
        "candidates+nms": t3 - t2 - masks - polygons,
        "masks": masks,
        "polygons": polygons,
        "json": t4 - t3,
    }
    return {k: 1000 * v for k, v in ms.items()}, len(det)


def _configs(model: Path, int8: Path | None, work: Path) -> list[tuple[str, OnnxModel, bool]]:
    configs = [("fp32", OnnxModel(model, threads=1), False)]
    if int8 is None:
        return configs
    import onnx

    from agent.quantize_input import to_float_input, to_uint8_input

    proto = onnx.load(str(int8))
    if proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8:
        uint8_file, float_file = int8, work / "float-input.onnx"
        assert to_float_input(proto)
        onnx.save(proto, str(float_file))
    else:
        float_file, uint8_file = int8, work / "uint8-input.onnx"
        if not to_uint8_input(proto):
            raise SystemExit(f"{int8}: its input scale is not 1/255; quantize it again with this seg-agent")
        onnx.save(proto, str(uint8_file))
    configs.append(("int8 float input (before)", OnnxModel(float_file, threads=1), False))
    configs.append(("int8 uint8 input (after)", OnnxModel(uint8_file, threads=1), True))
    return configs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/worker_cpu.py", description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--int8", type=Path, default=None, help="an int8 file of seg-agent quantize (before/after)")
    p.add_argument("--sizes", default="640x480,1920x1080")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    limit_helper_threads()
    _instrument()
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        configs = _configs(args.model.resolve(), args.int8, Path(tmp))
        for size in args.sizes.split(","):
            w, h = (int(v) for v in size.split("x"))
            frames = [synth.render_sample(np.random.default_rng([4040, i]), (h, w))[0] for i in range(args.frames)]
            times: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in configs}
            dets: dict[str, list[int]] = {name: [] for name, _, _ in configs}
            for _, m, uint8 in configs:  # warm-up
                _frame_stages(m, frames[0], uint8)
            for rep in range(args.reps):
                for i, frame in enumerate(frames):
                    order = configs if (rep + i) % 2 == 0 else configs[::-1]
                    for name, m, uint8 in order:
                        ms, n = _frame_stages(m, frame, uint8)
                        for k, v in ms.items():
                            times[name].setdefault(k, []).append(v)
                        dets[name].append(n)
            _print(f"{w}x{h}", configs, times, dets)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def _print(
    size: str,
    configs: list[tuple[str, OnnxModel, bool]],
    times: dict[str, dict[str, list[float]]],
    dets: dict[str, list[int]],
) -> None:
    print(f"\n### {size}: CPU ms per frame (thread_time medians)\n")
    print("| configuration | dets/frame | " + " | ".join(STAGES) + " | outside run (sum of medians) | run, 1 thread |")
    print("|---|---|" + "---|" * len(STAGES) + "---|---|")
    for name, _, _ in configs:
        med = {k: statistics.median(v) for k, v in times[name].items()}
        outside = sum(med[k] for k in STAGES)
        cells = " | ".join(f"{med[k]:.3f}" for k in STAGES)
        print(f"| {name} | {statistics.mean(dets[name]):.1f} | {cells} | {outside:.2f} | {med['run_1thread']:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
