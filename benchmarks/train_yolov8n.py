"""Train the benchmark anchor: YOLOv8n-seg (Ultralytics' ``yolov8n-seg.yaml``, random init) on ``agent.synth``.

Run with the benchmark environment's Python (``benchmarks/setup_env.sh``), never imported by the agent.
Nothing is downloaded (``YOLO_OFFLINE=1``; no plots, so no fonts; AMP off, so no AMP check model).

    nice -n 19 .venv-bench/bin/python benchmarks/train_yolov8n.py all --out models/yolov8n-seg-synth.onnx

Steps (each also a command of its own: ``render``, ``train``, ``polish``, ``export``; ``all`` runs them in turn):

``render``
    Frames of 640x480 from :func:`agent.synth.render_sample` (image ``i`` of seed ``s`` is
    ``default_rng([s, i])``, as ``agent.synth coco`` draws them), each cut into ``--crops`` random
    ``--crop`` x ``--crop`` windows at full resolution, written in Ultralytics' YOLO segmentation layout
    (``images/{train,val}``, ``labels/{train,val}``: ``class x1 y1 x2 y2 ...`` normalised, one instance a
    line; an instance seen in several pieces is joined by Ultralytics' own ``merge_multi_segment``). The
    shapes keep the pixel sizes they have in 640x480 frames, the frames the benchmarks run on, while a step
    costs a quarter of a 640x640 one. An instance cut by a window's edge is kept when at least
    ``MIN_KEPT`` of its visible pixels (and 40 px) stay inside, else dropped.
``train``
    ``YOLO("yolov8n-seg.yaml").train(...)`` on CPU at ``imgsz = --crop`` for ``--hours`` (Ultralytics' time
    mode: it re-fits the epoch count and the learning-rate curve to the time after the first epoch), one
    optimiser step per batch (``nbs = batch``). A progress line per ``--log-every`` steps goes to
    ``--log`` (and stderr).
``polish``
    From ``train``'s ``last.pt``: no mosaic, learning rate 2e-4 stepped down over three short epochs (a third
    of the windows each), stopped after ``--polish-minutes`` at the latest: ``train``'s time mode ends at a
    quarter of its starting rate.
``export``
    The EMA weights of ``polish``'s ``last.pt`` (``--weights`` for another) to ONNX, opset 17, simplified,
    at ``--imgsz`` (640): the network is fully convolutional, so the window size it was trained at does not
    bind the export. Ultralytics writes ``names`` (circle, rectangle, triangle), ``imgsz``, ``stride`` and
    ``task`` into the metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "True")

REPO = Path(__file__).resolve().parents[1]
FRAME_HW = (480, 640)
MIN_KEPT = 0.3
_MIN_PIXELS = 40


def _torchvision_or_stub() -> str:
    """benchmarks/ultra.py's stand-in: Ultralytics' TorchNMS where torchvision is unusable."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from ultra import _torchvision_or_stub as stub

    return str(stub())


def _agent_synth() -> Any:
    sys.path.insert(0, str(REPO))
    from agent import synth

    return synth


def _label_lines(instances: list[Any], y0: int, x0: int, crop: int) -> list[str]:
    import numpy as np
    from ultralytics.data.converter import merge_multi_segment

    synth = _agent_synth()
    lines = []
    for inst in instances:
        piece = np.ascontiguousarray(inst.mask[y0 : y0 + crop, x0 : x0 + crop])
        kept = int(piece.sum())
        if kept < max(_MIN_PIXELS, MIN_KEPT * inst.area):
            continue
        polys = synth.mask_polygons(piece)
        if not polys:
            continue
        if len(polys) == 1:
            xy = polys[0]
        else:
            xy = np.concatenate(merge_multi_segment([p.reshape(-1).tolist() for p in polys]), axis=0)
        xy = np.clip(xy.astype(np.float64) / crop, 0.0, 1.0)
        lines.append(" ".join([str(inst.class_id), *(f"{v:.5f}" for v in xy.reshape(-1))]))
    return lines


def _render_range(out: Path, split: str, seed: int, start: int, stop: int, crop: int, crops: int) -> int:
    import cv2
    import numpy as np

    synth = _agent_synth()
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    written = 0
    h, w = FRAME_HW
    for i in range(start, stop):
        image, instances = synth.render_sample(np.random.default_rng([seed, i]), FRAME_HW)
        windows = np.random.default_rng([seed, i, 1])  # the windows: a stream of their own
        for k in range(crops):
            y0, x0 = int(windows.integers(0, h - crop + 1)), int(windows.integers(0, w - crop + 1))
            name = f"{seed}_{i:06d}_{k}"
            cv2.imwrite(str(out / "images" / split / f"{name}.jpg"), image[y0 : y0 + crop, x0 : x0 + crop])
            lines = _label_lines(instances, y0, x0, crop)
            (out / "labels" / split / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
            written += 1
    return written


def render(out: Path, n: int, n_val: int, seed: int, val_seed: int, crop: int, crops: int, procs: int) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    synth = _agent_synth()
    t0 = time.perf_counter()
    jobs = [("train", seed, a, min(a + 100, n)) for a in range(0, n, 100)]
    jobs += [("val", val_seed, a, min(a + 100, n_val)) for a in range(0, n_val, 100)]
    with ProcessPoolExecutor(max_workers=procs) as pool:
        futures = [pool.submit(_render_range, out, s, sd, a, b, crop, crops) for s, sd, a, b in jobs]
        written = sum(f.result() for f in futures)
    names = {i: name for i, name in enumerate(synth.CLASS_NAMES)}
    data = out / "data.yaml"
    data.write_text(
        f"path: {out}\ntrain: images/train\nval: images/val\nnames:\n"
        + "".join(f"  {i}: {name}\n" for i, name in names.items())
    )
    return {"data": str(data), "windows": written, "render_s": round(time.perf_counter() - t0, 1)}


def _progress_callbacks(model: Any, log: Path, every: int, deadline: float | None = None) -> None:
    """A line per ``every`` steps (and per epoch) to ``log``; past ``deadline`` (epoch seconds) it stops
    the run between batches, with the weights saved as at an epoch's end."""
    start = time.time()
    state = {"step": 0}

    def write(line: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        with log.open("a") as f:
            f.write(f"{stamp} {line}\n")
        sys.stderr.write(f"{stamp} {line}\n")

    def on_batch_end(trainer: Any) -> None:
        state["step"] += 1
        if deadline is not None and time.time() > deadline and not trainer.stop:
            write(f"step {state['step']}: past the deadline, stopping")
            trainer.stop = True
        if state["step"] % every == 0 or state["step"] <= 3:
            loss = {k: round(float(v), 3) for k, v in trainer.label_loss_items(trainer.tloss).items()}
            elapsed = time.time() - start
            write(
                f"step {state['step']} epoch {trainer.epoch + 1}/{trainer.epochs} "
                f"{elapsed / state['step']:.2f} s/step elapsed {elapsed / 60:.1f} min "
                f"lr {trainer.optimizer.param_groups[0]['lr']:.5f} {loss}"
            )

    def on_epoch_end(trainer: Any) -> None:
        write(f"epoch {trainer.epoch + 1}/{trainer.epochs} done, metrics {dict(trainer.metrics or {})}")

    model.add_callback("on_train_batch_end", on_batch_end)
    model.add_callback("on_fit_epoch_end", on_epoch_end)


_TRAIN_COMMON: dict[str, Any] = {
    "device": "cpu",
    "workers": 0,
    "amp": False,
    "plots": False,
    "exist_ok": True,
    "optimizer": "AdamW",
    "scale": 0.25,
    "flipud": 0.5,
    "deterministic": False,
    "verbose": True,
}
"""What both training phases share: CPU only, no AMP, no plots (nothing fetched: fonts, AMP checks), AdamW,
the same augmentation of scale and flips."""


def train(data: Path, project: Path, crop: int, hours: float, epochs: int, batch: int, log: Path, every: int) -> dict:
    import torch

    _torchvision_or_stub()
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n-seg.yaml", task="segment")
    _progress_callbacks(model, log, every)
    t0 = time.perf_counter()
    model.train(
        **_TRAIN_COMMON,
        data=str(data),
        imgsz=crop,
        epochs=epochs,
        time=hours or None,
        batch=batch,
        nbs=batch,  # one optimiser step per batch: the run is short
        val=False,  # the final epoch still validates; the real measure is seg-agent eval at 640
        project=str(project),
        name="train",
        pretrained=False,
        lr0=0.0015,
        warmup_epochs=0.3,
        close_mosaic=1,
        mosaic=0.5,
        seed=0,
    )
    return {"weights": str(project / "train" / "weights" / "last.pt"), "train_s": round(time.perf_counter() - t0, 1)}


def polish(data: Path, project: Path, init: Path, crop: int, minutes: float, batch: int, log: Path, every: int) -> dict:
    """The second phase: from ``init`` (phase one's ``last.pt``), no mosaic, a low learning rate stepped down
    over three short epochs (a third of the windows each), stopped at ``minutes`` at the latest."""
    import torch

    _torchvision_or_stub()
    from ultralytics import YOLO

    torch.manual_seed(1)
    model = YOLO(str(init), task="segment")
    _progress_callbacks(model, log, every, deadline=time.time() + minutes * 60)
    t0 = time.perf_counter()
    model.train(
        **_TRAIN_COMMON,
        data=str(data),
        imgsz=crop,
        epochs=3,
        fraction=0.34,
        batch=batch,
        nbs=batch,
        val=False,
        project=str(project),
        name="polish",
        lr0=0.0002,
        lrf=0.1,
        warmup_epochs=0,
        close_mosaic=0,
        mosaic=0.0,
        seed=1,
    )
    return {"weights": str(project / "polish" / "weights" / "last.pt"), "polish_s": round(time.perf_counter() - t0, 1)}


def export(weights: Path, out: Path, imgsz: int) -> dict:
    _torchvision_or_stub()
    from ultralytics import YOLO

    model = YOLO(str(weights), task="segment")
    exported = Path(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False, device="cpu"))
    out.parent.mkdir(parents=True, exist_ok=True)
    exported.replace(out)
    return {"path": str(out), "bytes": out.stat().st_size, "names": dict(model.names)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/train_yolov8n.py", description=__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["render", "train", "polish", "export", "all"])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "yolov8n-synth", help="data, weights, log")
    p.add_argument("--n", type=int, default=1500, help="training frames (640x480), seed --seed")
    p.add_argument("--n-val", type=int, default=50, help="validation frames, seed --val-seed")
    p.add_argument("--seed", type=int, default=0, help="training seed (the held-out set is 1000)")
    p.add_argument("--val-seed", type=int, default=2000)
    p.add_argument("--crop", type=int, default=320, help="training window (px, square), also the train imgsz")
    p.add_argument("--crops", type=int, default=2, help="windows per frame")
    p.add_argument("--procs", type=int, default=2, help="rendering processes")
    p.add_argument("--hours", type=float, default=1.0, help="training time (Ultralytics time mode); 0: --epochs")
    p.add_argument("--epochs", type=int, default=10, help="epochs when --hours is 0 (else a first estimate)")
    p.add_argument("--polish-minutes", type=float, default=9.0, help="phase two's time limit (0: none)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument(
        "--weights", type=Path, default=None, help="polish: default WORK/train/weights/last.pt; export: .../polish/..."
    )
    p.add_argument("--imgsz", type=int, default=640, help="export size")
    p.add_argument("--out", type=Path, default=REPO / "models" / "yolov8n-seg-synth.onnx")
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if args.cmd in ("render", "all"):
        result["render"] = render(
            work / "data", args.n, args.n_val, args.seed, args.val_seed, args.crop, args.crops, args.procs
        )
    if args.cmd in ("train", "all"):
        result["train"] = train(
            work / "data" / "data.yaml",
            work,
            args.crop,
            args.hours,
            args.epochs,
            args.batch,
            work / "train.log",
            args.log_every,
        )
    if args.cmd in ("polish", "all"):
        result["polish"] = polish(
            work / "data" / "data.yaml",
            work,
            (args.weights or work / "train" / "weights" / "last.pt").resolve(),
            args.crop,
            args.polish_minutes or 1e9,
            args.batch,
            work / "train.log",
            args.log_every,
        )
    if args.cmd in ("export", "all"):
        weights = args.weights or work / "polish" / "weights" / "last.pt"
        result["export"] = export(weights.resolve(), args.out.resolve(), args.imgsz)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
