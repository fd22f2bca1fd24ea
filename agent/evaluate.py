"""``seg-agent eval``: COCO box and mask mAP of a local model, measured through the agent's own pipeline.

Every image goes through exactly what the daemon does offline — ``OnnxModel.detect`` (letterbox, ONNX
Runtime, decode, NMS, mask in box, outer polygon) — and the published polygons (not the raw masks) are
scored against the ground truth with pycocotools, so the figures say what a consumer of the MQTT
messages gets. pycocotools comes with the ``eval`` extra (``pip install 'seg-agent[eval]'``).

Model classes are matched to the annotation file's categories by name (case-insensitive); when no name
matches and the counts agree, by order (category ids ascending).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import cv2
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from agent.postprocess import Detections

__all__ = ["ClassAP", "EvalReport", "ProgressBar", "evaluate", "format_report"]

MAX_DETECTIONS = 100
"""Detections kept per image: COCO's AP counts the best 100."""


class Detector(Protocol):
    """What :func:`evaluate` needs of a model (``agent.model.OnnxModel`` is one)."""

    class_names: list[str]

    def detect(
        self, image_bgr: NDArray[np.uint8], *, confidence: float, overlap: float, max_detections: int = ...
    ) -> Detections: ...


@dataclass(frozen=True)
class ClassAP:
    """AP of one category; ``None`` where the set has no instance of it."""

    name: str
    category_id: int
    instances: int
    detections: int
    box_ap50: float | None
    box_ap: float | None
    mask_ap50: float | None
    mask_ap: float | None


@dataclass(frozen=True)
class EvalReport:
    """COCO metrics of one model on one annotated set. ``*_ap`` is AP@[.5:.95], ``*_ap50`` AP@0.5."""

    model: str
    images: int
    instances: int
    detections: int
    confidence: float
    overlap: float
    box_ap50: float
    box_ap: float
    mask_ap50: float
    mask_ap: float
    per_class: list[ClassAP]
    class_map: dict[str, int]  # model class name -> category id
    seconds: float
    ms_per_image: float
    notes: list[str] = field(default_factory=list)


class ProgressBar:
    """A one-line progress bar on a terminal stream: count, rate and time left. No dependencies."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.label, self.width = max(total, 0), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._drawn = -1
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1 or self.done >= self.total:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn = self.done
        elapsed = now - self._start
        frac = self.done / self.total if self.total else 1.0
        filled = int(self.width * min(frac, 1.0))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{self.done}/{self.total} {rate:.1f}/s eta {left:.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self._drawn != self.done:
            self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def _import_pycocotools() -> tuple[Any, Any, Any]:
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise ImportError(
            "seg-agent eval needs pycocotools: pip install 'seg-agent[eval]' (or pip install pycocotools)"
        ) from exc
    return COCO, COCOeval, mask_utils


def _class_map(class_names: Sequence[str], categories: list[dict[str, Any]], notes: list[str]) -> dict[int, int]:
    """Model class index -> category id."""
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in categories}
    mapping = {i: by_name[n.strip().lower()] for i, n in enumerate(class_names) if n.strip().lower() in by_name}
    if mapping:
        unmatched = [n for i, n in enumerate(class_names) if i not in mapping]
        if unmatched:
            notes.append(f"model classes not in the annotations, their detections ignored: {unmatched}")
        return mapping
    ids = sorted(int(c["id"]) for c in categories)
    if len(ids) == len(class_names):
        notes.append("no class name matches the annotations' categories: matched by order")
        return dict(enumerate(ids))
    raise ValueError(
        f"the model's classes {list(class_names)} match none of the annotation categories {sorted(by_name)}"
    )


def _ap(precision: NDArray[np.float64], t: int | None, k: int) -> float | None:
    """Mean precision over recall points (area 'all', maxDets 100) of one category; all IoUs when t is None."""
    p = precision[:, :, k, 0, -1] if t is None else precision[t, :, k, 0, -1]
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def _run_cocoeval(coco_gt: Any, coco_dt: Any, iou_type: str, cocoeval_cls: Any) -> Any:
    ev = cocoeval_cls(coco_gt, coco_dt, iou_type)
    ev.params.maxDets = [1, 10, MAX_DETECTIONS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _load_detector(model: Detector | str | os.PathLike[str]) -> tuple[Detector, str]:
    """A loaded detector as given, or the ONNX file at a path loaded; with the name the report gives it."""
    if not isinstance(model, str | os.PathLike):
        return model, str(getattr(model, "path", type(model).__name__))
    from agent.model import OnnxModel

    return OnnxModel(model), str(model)


def _read_coco(images_root: Path, ann_path: Path) -> dict[str, Any]:
    """The annotation file, checked, with the keys pycocotools wants filled in."""
    if not images_root.is_dir():
        raise OSError(f"{images_root}: not a directory")
    try:
        doc = json.loads(ann_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ann_path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not all(k in doc for k in ("images", "annotations", "categories")):
        raise ValueError(f"{ann_path}: not a COCO file (needs images, annotations, categories)")
    for a in doc["annotations"]:  # pycocotools wants these; many tools omit them
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3]) if "bbox" in a else 0.0
    return doc


def _limited(doc: dict[str, Any], limit: int | None, ann_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The document and its images in id order, only the first ``limit`` (and their annotations) if given."""
    images = sorted(doc["images"], key=lambda im: int(im["id"]))
    if limit is not None:
        images = images[:limit]
        keep = {int(im["id"]) for im in images}
        doc = {**doc, "images": images, "annotations": [a for a in doc["annotations"] if a["image_id"] in keep]}
    if not images:
        raise ValueError(f"{ann_path}: no images")
    return doc, images


def _read_image(images_root: Path, im: dict[str, Any]) -> NDArray[np.uint8]:
    path = images_root / str(im["file_name"])
    read = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if read is None:
        raise OSError(f"{path}: missing or not an image")
    frame = np.asarray(read, dtype=np.uint8)
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if (int(im.get("height", h)), int(im.get("width", w))) != (h, w):
        raise ValueError(f"{path}: is {w}x{h}, the annotations say {im.get('width')}x{im.get('height')}")
    return frame


def _results_of(
    det: Detections, image_id: int, hw: tuple[int, int], class_map: dict[int, int], mask_utils: Any
) -> list[dict[str, Any]]:
    """One image's detections as COCO results: box, score and the published polygon as an RLE mask."""
    h, w = hw
    results: list[dict[str, Any]] = []
    for k in range(len(det.polygons)):
        cat = class_map.get(int(det.class_id[k]))
        if cat is None:
            continue
        x1, y1, x2, y2 = (float(v) for v in det.boxes_xyxy[k])
        poly = np.asarray(det.polygons[k], dtype=np.float64).reshape(-1)
        rle = mask_utils.merge(mask_utils.frPyObjects([poly.tolist()], h, w))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": image_id,
                "category_id": cat,
                "score": float(det.confidence[k]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": rle,
            }
        )
    return results


def _detect_all(
    detector: Detector,
    images: list[dict[str, Any]],
    images_root: Path,
    class_map: dict[int, int],
    mask_utils: Any,
    *,
    confidence: float,
    overlap: float,
    progress: bool,
) -> tuple[list[dict[str, Any]], float]:
    """Every image through the detector: the COCO results and the seconds spent in ``detect``."""
    results: list[dict[str, Any]] = []
    bar = ProgressBar(len(images), "eval") if progress else None
    infer_seconds = 0.0
    for im in images:
        frame = _read_image(images_root, im)
        t0 = time.perf_counter()
        det = detector.detect(frame, confidence=confidence, overlap=overlap, max_detections=MAX_DETECTIONS)
        infer_seconds += time.perf_counter() - t0
        results += _results_of(det, int(im["id"]), (int(frame.shape[0]), int(frame.shape[1])), class_map, mask_utils)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return results, infer_seconds


def _counts(
    doc: dict[str, Any], results: list[dict[str, Any]], categories: list[dict[str, Any]]
) -> tuple[dict[int, int], dict[int, int]]:
    """Ground-truth instances (not crowd) and detections per category id."""
    gt_counts = {int(c["id"]): 0 for c in categories}
    for a in doc["annotations"]:
        if not a.get("iscrowd", 0) and int(a["category_id"]) in gt_counts:
            gt_counts[int(a["category_id"])] += 1
    dt_counts = {int(c["id"]): 0 for c in categories}
    for r in results:
        dt_counts[r["category_id"]] += 1
    return gt_counts, dt_counts


def _score(
    coco_gt: Any, results: list[dict[str, Any]], cocoeval_cls: Any, notes: list[str]
) -> tuple[dict[str, tuple[float, float]], dict[str, NDArray[np.float64] | None]]:
    """(AP@0.5, AP@[.5:.95]) per kind (box, mask) and the precision arrays of each (``None``: nothing found)."""
    summary = {"box": (0.0, 0.0), "mask": (0.0, 0.0)}
    per_type: dict[str, NDArray[np.float64] | None] = {"box": None, "mask": None}
    if not results:
        notes.append("the model found nothing: every AP is 0")
        return summary, per_type
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
    for kind, iou_type in (("box", "bbox"), ("mask", "segm")):
        ev = _run_cocoeval(coco_gt, coco_dt, iou_type, cocoeval_cls)
        summary[kind] = (max(float(ev.stats[1]), 0.0), max(float(ev.stats[0]), 0.0))
        per_type[kind] = np.asarray(ev.eval["precision"], dtype=np.float64)
    return summary, per_type


def _per_class(
    categories: list[dict[str, Any]],
    gt_counts: dict[int, int],
    dt_counts: dict[int, int],
    per_type: dict[str, NDArray[np.float64] | None],
) -> list[ClassAP]:
    per_class: list[ClassAP] = []
    for k, c in enumerate(categories):
        cid = int(c["id"])
        values: list[float | None] = []
        for kind in ("box", "mask"):
            prec = per_type[kind]
            if gt_counts[cid] == 0:
                values += [None, None]
            elif prec is None:
                values += [0.0, 0.0]
            else:
                values += [_ap(prec, 0, k), _ap(prec, None, k)]
        per_class.append(ClassAP(str(c["name"]), cid, gt_counts[cid], dt_counts[cid], *values))
    return per_class


def evaluate(
    model: Detector | str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    annotations_path: str | os.PathLike[str],
    *,
    confidence: float = 0.01,
    overlap: float = 0.5,
    progress: bool = True,
    limit: int | None = None,
) -> EvalReport:
    """COCO box and mask AP of ``model`` on the images of a COCO instance-segmentation file.

    ``model`` is a loaded detector or the path of an ONNX file (loaded with ``agent.model.OnnxModel``).
    ``confidence`` and ``overlap`` are on the 0..1 scale, as ``OnnxModel.detect`` takes them; a low
    confidence (the default 0.01) is what AP needs. ``limit`` evaluates only the first images.
    """
    COCO, COCOeval, mask_utils = _import_pycocotools()
    detector, model_name = _load_detector(model)
    images_root = Path(images_dir)
    ann_path = Path(annotations_path)
    doc = _read_coco(images_root, ann_path)
    notes: list[str] = []
    class_map = _class_map(detector.class_names, doc["categories"], notes)
    doc, images = _limited(doc, limit, ann_path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = doc
        coco_gt.createIndex()

    started = time.monotonic()
    results, infer_seconds = _detect_all(
        detector, images, images_root, class_map, mask_utils, confidence=confidence, overlap=overlap, progress=progress
    )
    elapsed = time.monotonic() - started

    categories = sorted(doc["categories"], key=lambda c: int(c["id"]))
    gt_counts, dt_counts = _counts(doc, results, categories)
    summary, per_type = _score(coco_gt, results, COCOeval, notes)
    names = {cat: detector.class_names[i] for i, cat in class_map.items()}
    return EvalReport(
        model=model_name,
        images=len(images),
        instances=sum(gt_counts.values()),
        detections=len(results),
        confidence=confidence,
        overlap=overlap,
        box_ap50=summary["box"][0],
        box_ap=summary["box"][1],
        mask_ap50=summary["mask"][0],
        mask_ap=summary["mask"][1],
        per_class=_per_class(categories, gt_counts, dt_counts, per_type),
        class_map={names.get(cid, str(cid)): cid for cid in class_map.values()},
        seconds=elapsed,
        ms_per_image=1000 * infer_seconds / len(images),
        notes=notes,
    )


def _fmt(v: float | None) -> str:
    return "   -  " if v is None or math.isnan(v) else f"{v:6.3f}"


def format_report(report: EvalReport) -> str:
    """A plain-text report: the headline figures and a per-class table."""
    lines = [
        f"model        {report.model}",
        f"images       {report.images}   instances {report.instances}   detections {report.detections}",
        f"thresholds   confidence > {report.confidence:g}   NMS IoU > {report.overlap:g}   "
        f"at most {MAX_DETECTIONS} per image",
        f"speed        {report.ms_per_image:.1f} ms/image (detect)   {report.seconds:.1f} s in all",
        "",
        f"{'':14}{'AP@0.5':>8}{'AP@[.5:.95]':>13}",
        f"{'box':14}{report.box_ap50:8.3f}{report.box_ap:13.3f}",
        f"{'mask':14}{report.mask_ap50:8.3f}{report.mask_ap:13.3f}",
        "",
        f"{'class':<16}{'inst':>6}{'dets':>7}{'box50':>8}{'box':>8}{'mask50':>8}{'mask':>8}",
    ]
    for c in report.per_class:
        lines.append(
            f"{c.name[:16]:<16}{c.instances:>6}{c.detections:>7}  {_fmt(c.box_ap50)}  {_fmt(c.box_ap)}"
            f"  {_fmt(c.mask_ap50)}  {_fmt(c.mask_ap)}"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
