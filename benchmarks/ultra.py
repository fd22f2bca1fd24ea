"""The benchmark environment's side: Ultralytics and PyTorch, which the agent never depends on.

Run with the benchmark environment's Python (see ``benchmarks/setup_env.sh``), never imported by the agent.
Three commands, each printing one JSON object on stdout:

``export-yolov8n --out PATH [--imgsz 640]``
    YOLOv8n-seg built from Ultralytics' own ``yolov8n-seg.yaml`` (random weights: nothing is downloaded,
    ``YOLO_OFFLINE=1``) and exported to ONNX (opset 17, simplified): the real network's size and cost.
``export-standin --out PATH [--imgsz 320]``
    The demo model's network (``training/net.py``, untrained, seed 0) exported as ``training/train.py`` does:
    the same graph and cost as ``models/demo-seg.onnx``, for runs made before that file exists.
``predict --model PATH --frames NPZ --imgsz N --threads T --reps R [--conf C] [--iou I]``
    ``YOLO(PATH, task="segment").predict(frame, imgsz=N, conf=C, iou=I)`` on every frame of the ``.npz``
    (one array per frame size), then ``results[0].masks.xy`` (the polygons in frame pixels, which the agent
    also makes), interleaved with the agent's own ``OnnxModel.detect`` on the same frame (this repository's
    ``agent`` package, imported here: it needs only NumPy, OpenCV and ONNX Runtime). Ultralytics' ONNX Runtime
    session gets the agent's session options (``T`` intra-op threads, spinning during runs only) by wrapping
    ``onnxruntime.InferenceSession``, so both sides run the same session and the comparison is about
    everything around it.

Where torchvision has no build matching the installed CPU-only torch (its CUDA wheel fails to register its
C++ ops), Ultralytics' own ``TorchNMS.nms`` stands in for ``torchvision.ops.nms``: Ultralytics documents it
as matching torchvision exactly, and NMS is a small part of its time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")


def _torchvision_or_stub() -> str:
    try:
        import torch
        import torchvision

        torchvision.ops.nms(torch.zeros((1, 4)), torch.ones(1), 0.5)
        return "torchvision"
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        from ultralytics.utils.nms import TorchNMS

        stub = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.nms = TorchNMS.nms  # type: ignore[attr-defined]
        stub.ops = ops  # type: ignore[attr-defined]
        stub.__version__ = "0+stub"  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.ops"] = ops
        return "ultralytics TorchNMS (no usable torchvision)"


def export_yolov8n(out: Path, imgsz: int) -> dict[str, Any]:
    from ultralytics import YOLO

    out.parent.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(out.parent)  # Ultralytics writes the export beside the model's name
    try:
        model = YOLO("yolov8n-seg.yaml", task="segment")
        exported = Path(model.export(format="onnx", imgsz=imgsz, opset=17, simplify=True, dynamic=False))
    finally:
        os.chdir(cwd)
    exported = exported if exported.is_absolute() else out.parent / exported
    exported.replace(out)
    import ultralytics

    return {"path": str(out), "ultralytics": ultralytics.__version__}


def export_standin(out: Path, imgsz: int) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    import torch

    from training.net import SegNet
    from training.train import export_onnx

    torch.manual_seed(0)
    export_onnx(SegNet(), out, imgsz)
    return {"path": str(out), "torch": torch.__version__}


def _patch_session_options(threads: int) -> None:
    import onnxruntime as ort

    original = ort.InferenceSession

    class Session(original):  # type: ignore[misc,valid-type]
        def __init__(self, path: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
            if sess_options is None:
                sess_options = ort.SessionOptions()
                sess_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                if threads > 0:
                    sess_options.intra_op_num_threads = threads
                    sess_options.inter_op_num_threads = 1
                sess_options.add_session_config_entry("session.force_spinning_stop", "1")  # as agent/model.py
            super().__init__(path, sess_options, *args, **kwargs)

    ort.InferenceSession = Session


def predict(model_path: Path, frames_npz: Path, imgsz: int, threads: int, reps: int, conf: float, iou: float) -> dict:
    import numpy as np

    nms = _torchvision_or_stub()
    _patch_session_options(threads)
    import ultralytics
    from ultralytics import YOLO

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from agent.model import OnnxModel  # the agent's own local model, same ONNX file and session options

    ours = OnnxModel(model_path, threads=threads)
    model = YOLO(str(model_path), task="segment")
    frames = np.load(frames_npz)
    out: dict[str, Any] = {"ultralytics": ultralytics.__version__, "nms": nms, "sizes": {}}
    for key in frames.files:
        frame = frames[key]
        for _ in range(2):  # warm-up (the first call builds the predictor)
            model.predict(frame, imgsz=imgsz, conf=conf, iou=iou, verbose=False)
            ours.detect(frame, confidence=conf, overlap=iou)
        totals, polys, speeds, counts, ours_ms, ours_counts = [], [], [], [], [], []
        for rep in range(reps):
            for side in ("ultralytics", "ours") if rep % 2 == 0 else ("ours", "ultralytics"):
                t0 = time.perf_counter()
                if side == "ours":
                    ours_counts.append(len(ours.detect(frame, confidence=conf, overlap=iou)))
                    ours_ms.append((time.perf_counter() - t0) * 1000)
                    continue
                result = model.predict(frame, imgsz=imgsz, conf=conf, iou=iou, verbose=False)[0]
                t1 = time.perf_counter()
                if result.masks is not None:
                    _ = result.masks.xy
                t2 = time.perf_counter()
                totals.append((t2 - t0) * 1000)
                polys.append((t2 - t1) * 1000)
                speeds.append(dict(result.speed))
                counts.append(len(result))
        out["sizes"][key] = {
            "ours_ms": float(np.median(ours_ms)),
            "ours_instances": int(np.median(ours_counts)),
            "total_ms": float(np.median(totals)),
            "polygons_ms": float(np.median(polys)),
            "preprocess_ms": float(np.median([s["preprocess"] for s in speeds])),
            "inference_ms": float(np.median([s["inference"] for s in speeds])),
            "postprocess_ms": float(np.median([s["postprocess"] for s in speeds])),
            "instances": int(np.median(counts)),
            "samples": reps,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/ultra.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-yolov8n")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--imgsz", type=int, default=640)
    s = sub.add_parser("export-standin")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--imgsz", type=int, default=320)
    r = sub.add_parser("predict")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--frames", type=Path, required=True)
    r.add_argument("--imgsz", type=int, required=True)
    r.add_argument("--threads", type=int, default=0)
    r.add_argument("--reps", type=int, default=10)
    r.add_argument("--conf", type=float, default=0.4)
    r.add_argument("--iou", type=float, default=0.3)
    args = p.parse_args(argv)
    if args.cmd == "export-yolov8n":
        result = export_yolov8n(args.out.resolve(), args.imgsz)
    elif args.cmd == "export-standin":
        result = export_standin(args.out.resolve(), args.imgsz)
    else:
        result = predict(args.model, args.frames, args.imgsz, args.threads, args.reps, args.conf, args.iou)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
