"""The checks ``seg-agent quantize`` makes before it writes an int8 file: the held-out set (annotations, or the
fp32 model's own detections where there are none), the accuracy gate in points, and the speed of both models
run by run side by side. Split out of :mod:`agent.quantize`, which runs them; no side effects on import.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from agent.calibration import Sample

if TYPE_CHECKING:
    from agent.model import OnnxModel

__all__ = [
    "REFERENCE_CONFIDENCE",
    "EvalSet",
    "gate",
    "median_run_ms",
    "reference_set",
    "speed_line",
    "subset_annotations",
]

REFERENCE_CONFIDENCE = 0.4
"""With no annotations, the fp32 model's detections above this confidence are the reference instances."""


@dataclass(frozen=True)
class EvalSet:
    """Held-out frames as files with COCO annotations, and what the annotations are."""

    images: Path
    annotations: Path
    reference: str  # "annotations" or "fp32 detections"


def subset_annotations(annotations: Path, names: set[str], out: Path) -> Path:
    doc = json.loads(annotations.read_text(encoding="utf-8"))
    images = [im for im in doc["images"] if str(im["file_name"]) in names]
    keep = {int(im["id"]) for im in images}
    doc = {**doc, "images": images, "annotations": [a for a in doc["annotations"] if int(a["image_id"]) in keep]}
    out.write_text(json.dumps(doc), encoding="utf-8")
    return out


def reference_set(model: OnnxModel, held: Sequence[Sample], out_dir: Path) -> EvalSet:
    """A COCO set of the held-out frames whose instances are the fp32 model's own detections (above
    :data:`REFERENCE_CONFIDENCE`): how far int8 strays from fp32 where no annotations exist."""
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"images": [], "annotations": []}
    doc["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(model.class_names)]
    for image_id, sample in enumerate(held, start=1):
        name = f"{image_id:06d}.png"
        cv2.imwrite(str(images_dir / name), sample.image_bgr)
        h, w = sample.image_bgr.shape[:2]
        doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
        det = model.detect(sample.image_bgr, confidence=REFERENCE_CONFIDENCE, overlap=0.5)
        for k, polygon in enumerate(det.polygons):
            x1, y1, x2, y2 = (float(v) for v in det.boxes_xyxy[k])
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": int(det.class_id[k]) + 1,
                    "segmentation": [np.asarray(polygon, dtype=np.float64).reshape(-1).tolist()],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(abs(cv2.contourArea(np.asarray(polygon, dtype=np.float32)))),
                    "iscrowd": 0,
                }
            )
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return EvalSet(images_dir, path, "fp32 detections")


def gate(fp32_ap: float, int8_ap: float, max_drop_points: float) -> tuple[bool, float]:
    """(accepted, drop in points): AP is on the 0..1 scale, the drop and its limit in points (x 100)."""
    drop = round(100.0 * (fp32_ap - int8_ap), 6)
    return drop <= max_drop_points, drop


def median_run_ms(
    models: Sequence[OnnxModel], tensor: NDArray[np.float32], runs: int, clock: str = "wall"
) -> list[float]:
    """Median ``OnnxModel.run`` time of each model on one tensor, the models interleaved run by run (so
    both see the same background load), after one warm-up run each.

    ``clock="cpu"`` times the calling thread's CPU time (``time.thread_time``) instead of the wall clock:
    for 1-thread sessions, where ONNX Runtime runs every kernel on the calling thread, that is the work
    itself, which other processes' load does not stretch (benchmarks/NOTES.md: wall-clock ratios of two
    identical graphs differed by 7 % on the loaded 2-core machine, CPU-time ratios by under 1 %)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {clock!r}")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    times: list[list[float]] = [[] for _ in models]
    feeds = [m.input_tensor(tensor) for m in models]  # a uint8-input int8 file gets its bytes, converted once
    for m, feed in zip(models, feeds, strict=True):
        m.run(feed)
    for _ in range(runs):
        for i, m in enumerate(models):
            start = timer()
            m.run(feeds[i])
            times[i].append(1000 * (timer() - start))
    return [float(np.median(t)) for t in times]


def speed_line(
    fp32: OnnxModel, int8: OnnxModel, model: Path, candidate: Path, tensor: NDArray[np.float32], runs: int
) -> str:
    """The wall-clock ratio at the checks' threads and the 1-thread CPU-time ratio (steady under load)."""
    from agent.model import OnnxModel

    fp32_ms, int8_ms = median_run_ms([fp32, int8], tensor, runs)
    one = [OnnxModel(model, threads=1), OnnxModel(candidate, threads=1)]
    fp32_cpu, int8_cpu = median_run_ms(one, tensor, runs, clock="cpu")
    return (
        f"speed        session.run median fp32 {fp32_ms:.1f} ms, int8 {int8_ms:.1f} ms: {fp32_ms / int8_ms:.2f}x; "
        f"1-thread CPU time fp32 {fp32_cpu:.1f} ms, int8 {int8_cpu:.1f} ms: {fp32_cpu / int8_cpu:.2f}x"
    )
