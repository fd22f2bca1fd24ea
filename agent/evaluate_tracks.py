"""``seg-agent eval --tracks``: IDF1, MOTA and id switches of the tracker, through the agent's own pipeline.

Each frame of a clip made by :func:`agent.synth_tracks.render_track_clip` goes the way a local frame goes in
the daemon: ``OnnxModel.detect``, :func:`agent.results.detections_to_api` (the published API object), then
the Sink's tracking stage (:class:`agent.tracking.CameraTracks`); the ``tracker_id`` of the published
predictions is scored against the ground truth with ``motmetrics`` (the ``eval`` extra). A prediction and a
ground-truth object match at box IoU >= 0.5. Ground-truth objects less visible than the file's
``min_visibility`` are neither expected nor a false positive when detected (MOTChallenge's "ignore").

A second figure, labelled apart and never the headline: the same with objects split in pieces (``"split"``
in the ground truth: a pillar or another object across them) ignored as well. The headline's ground truth
boxes both pieces of such an object, which a detector boxing one piece cannot match at IoU 0.5; the second
figure says how much of the loss is that.

And the detector's bound: IDF1 with perfect identities, every published detection given the id of the
ground-truth object it covers (IoU >= 0.5, greedy by IoU), so only the detector's misses and boxes count,
with the detections that cover no object kept (``bound_idf1``: the tracker publishes them too unless its
tracks drop them) and left out (``ceiling_idf1``: what a tracker that also dropped every such detection would
reach; no tracker beats it).

Our own IoU is given to motmetrics: its ``iou_matrix`` uses ``np.asfarray``, gone in NumPy 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from agent.results import detections_to_api
from agent.tracking import CameraTracks, TrackingSettings, iou_nm_xyxy, predictions_xyxy

if TYPE_CHECKING:
    from agent.evaluate import Detector

__all__ = ["TrackReport", "evaluate_tracks", "format_track_report", "main_eval_tracks"]

MATCH_IOU = 0.5


@dataclass(frozen=True)
class TrackReport:
    """Tracking figures over one or more clips (``per_clip``: the same figures of each)."""

    model: str
    clips: int
    frames: int
    track_frames: int  # ground-truth objects expected, summed over frames
    idf1: float
    mota: float
    id_switches: int
    switches_per_100: float  # id switches per 100 track-frames
    false_positives: int
    misses: int
    ms_detect: float  # per frame, median
    ms_track: float  # per frame, median: the tracking stage alone
    settings: TrackingSettings
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)
    # the same figures with split objects ignored too (idf1, mota, switches_per_100, track_frames): see above
    split_ignored: dict[str, float] = field(default_factory=dict)
    bound_idf1: float = float("nan")  # perfect identities, every detection (see the module's doc)
    ceiling_idf1: float = float("nan")  # perfect identities, the detections that cover no object left out


def _import_motmetrics() -> Any:
    try:
        import motmetrics
    except ImportError as exc:
        raise ImportError("seg-agent eval --tracks needs motmetrics: pip install 'seg-agent[eval]'") from exc
    return motmetrics


def _read_truth(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not all(k in doc for k in ("video", "fps", "frames")):
        raise ValueError(f"{path}: not a tracks file (needs video, fps, frames)")
    return doc


def _distances(gt_xyxy: np.ndarray, hyp_xyxy: np.ndarray) -> np.ndarray:
    """motmetrics' distance matrix: 1 - IoU, NaN (no match) below :data:`MATCH_IOU`."""
    iou = iou_nm_xyxy(gt_xyxy, hyp_xyxy)
    return np.where(iou >= MATCH_IOU, 1.0 - iou, np.nan)


def _inside_share(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """(n, m) share of each box of ``b``'s area inside each box of ``a`` (0 for an empty ``b`` box)."""
    iw = np.minimum(a_xyxy[:, None, 2], b_xyxy[None, :, 2]) - np.maximum(a_xyxy[:, None, 0], b_xyxy[None, :, 0])
    ih = np.minimum(a_xyxy[:, None, 3], b_xyxy[None, :, 3]) - np.maximum(a_xyxy[:, None, 1], b_xyxy[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = np.clip(b_xyxy[:, 2] - b_xyxy[:, 0], 0, None) * np.clip(b_xyxy[:, 3] - b_xyxy[:, 1], 0, None)
    share: np.ndarray = np.where(area[None, :] > 0, inter / np.maximum(area[None, :], 1e-9), 0.0)
    return share


def _frame_update(
    acc: Any, truth: list[dict[str, Any]], min_vis: float, hyp_ids: list[int], hyp: np.ndarray, split: bool = False
) -> None:
    """One frame into the accumulator, hypotheses on ignored objects left out: barely visible ones (IoU >= 0.5
    with one); with ``split``, those split in pieces too (a hypothesis at least half inside one's box: it
    boxes a piece)."""
    kept = [float(o["visibility"]) >= min_vis and not (split and o.get("split")) for o in truth]
    expected = [o for o, k in zip(truth, kept, strict=True) if k]
    ignored = [o for o, k in zip(truth, kept, strict=True) if not k]
    gt = np.array([o["box_xyxy"] for o in expected], dtype=np.float64).reshape(-1, 4)
    if ignored and len(hyp):
        ignored_xyxy = np.array([o["box_xyxy"] for o in ignored], dtype=np.float64)
        on_ignored = iou_nm_xyxy(ignored_xyxy, hyp).max(axis=0) >= MATCH_IOU
        pieces = [bool(o.get("split")) for o in ignored]
        if split and any(pieces):
            on_ignored |= _inside_share(ignored_xyxy[pieces], hyp).max(axis=0) >= MATCH_IOU
        on_expected = iou_nm_xyxy(gt, hyp).max(axis=0) if len(gt) else np.zeros(len(hyp))
        keep = ~(on_ignored & (on_expected < MATCH_IOU))
        hyp, hyp_ids = hyp[keep], [i for i, k in zip(hyp_ids, keep.tolist(), strict=True) if k]
    acc.update([int(o["id"]) for o in expected], hyp_ids, _distances(gt, hyp))


def truth_ids(truth: list[dict[str, Any]], min_vis: float, boxes_xyxy: np.ndarray) -> np.ndarray:
    """(n,) the id of the expected ground-truth object each detection covers at IoU >= 0.5, -1 for none;
    greedy by IoU, each object once (the detector's bound: identities as a perfect tracker would give)."""
    out = np.full(len(boxes_xyxy), -1, dtype=np.int64)
    expected = [o for o in truth if float(o["visibility"]) >= min_vis]
    if not expected or not len(boxes_xyxy):
        return out
    iou = iou_nm_xyxy(np.array([o["box_xyxy"] for o in expected], dtype=np.float64), boxes_xyxy)
    taken = np.zeros(len(expected), dtype=bool)
    for flat in np.argsort(-iou, axis=None, kind="stable").tolist():
        g, d = divmod(flat, len(boxes_xyxy))
        if iou[g, d] < MATCH_IOU:
            break
        if out[d] < 0 and not taken[g]:
            out[d], taken[g] = int(expected[g]["id"]), True
    return out


def _bound_update(bound: tuple[Any, Any], frame: int, truth: list[dict[str, Any]], min_vis: float, boxes: Any) -> None:
    """Frame ``frame`` into the bound's two accumulators: every detection with its object's id (an id of
    its own, used once in the clip, for one that covers none), and only those that cover one."""
    gt_of = truth_ids(truth, min_vis, boxes)
    fresh = -1 - 1000 * frame - np.arange(len(gt_of))  # never a ground-truth id, never twice in a clip
    _frame_update(bound[0], truth, min_vis, np.where(gt_of >= 0, gt_of, fresh).tolist(), boxes)
    covers = gt_of >= 0
    _frame_update(bound[1], truth, min_vis, gt_of[covers].tolist(), boxes[covers])


def _track_clip(
    detector: Detector, truth_path: Path, settings: TrackingSettings, confidence: float, overlap: float, mm: Any
) -> tuple[tuple[Any, Any, Any, Any], list[float], list[float]]:
    """One clip through detect → API object → tracking; the accumulators (the headline's, split objects
    ignored, the bound's two) and per-frame times (s)."""
    doc = _read_truth(truth_path)
    video = truth_path.parent / str(doc["video"])
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise OSError(f"{video}: cannot open the clip")
    tracks = CameraTracks(settings, ["eval"])
    acc, acc_split, *bound = (mm.MOTAccumulator(auto_id=True) for _ in range(4))
    min_vis = float(doc.get("min_visibility", 0.0))
    detect_s: list[float] = []
    track_s: list[float] = []
    try:
        for i, truth in enumerate(doc["frames"]):
            ok, read = cap.read()
            if not ok:
                raise ValueError(f"{video}: ends at frame {i}, the ground truth has {len(doc['frames'])}")
            frame = np.asarray(read, dtype=np.uint8)
            h, w = frame.shape[:2]
            t0 = time.perf_counter()
            det = detector.detect(frame, confidence=confidence, overlap=overlap, max_detections=300)
            t1 = time.perf_counter()
            api = detections_to_api(det, detector.class_names, image_wh=(w, h), time_s=t1 - t0)
            tracked = tracks.apply("eval", i / float(doc["fps"]), api, frame)
            track_s.append(time.perf_counter() - t1)
            detect_s.append(t1 - t0)
            confirmed = [p for p in tracked.api["predictions"] if "tracker_id" in p]
            hyp_ids, hyp = [p["tracker_id"] for p in confirmed], predictions_xyxy(confirmed)
            _frame_update(acc, truth, min_vis, hyp_ids, hyp)
            _frame_update(acc_split, truth, min_vis, hyp_ids, hyp, split=True)
            _bound_update((bound[0], bound[1]), i, truth, min_vis, predictions_xyxy(tracked.api["predictions"]))
    finally:
        cap.release()
    return (acc, acc_split, bound[0], bound[1]), detect_s, track_s


_METRICS = ["idf1", "mota", "num_switches", "num_objects", "num_false_positives", "num_misses", "num_frames"]


def _overall(mm: Any, accs: list[Any], names: list[str]) -> dict[str, Any]:
    summary = mm.metrics.create().compute_many(accs, metrics=_METRICS, names=names, generate_overall=True)
    out: dict[str, Any] = summary.loc["OVERALL"].to_dict()
    return out


def evaluate_tracks(
    model: Detector | str,
    truth_paths: Sequence[str | Path],
    *,
    settings: TrackingSettings | None = None,
    confidence: float = 0.4,
    overlap: float = 0.3,
) -> TrackReport:
    """Tracking figures of ``model`` + the tracker (``settings``, default: on with the defaults) on clips.

    ``confidence`` and ``overlap`` are fractions, as the daemon passes its 0-100 values to the model."""
    mm = _import_motmetrics()
    settings = settings or TrackingSettings(enabled=True)
    if isinstance(model, str):
        from agent.model import OnnxModel

        detector: Detector = OnnxModel(model)
        name = model
    else:
        detector, name = model, str(getattr(model, "path", type(model).__name__))
    if not truth_paths:
        raise ValueError("no tracks file given")
    kinds: tuple[list[Any], ...] = ([], [], [], [])  # headline, split ignored, bound, ceiling
    names, detect_s, track_s = [], [], []
    for path in truth_paths:
        accs_4, d, t = _track_clip(detector, Path(path), settings, confidence, overlap, mm)
        for kind, acc in zip(kinds, accs_4, strict=True):
            kind.append(acc)
        names.append(Path(path).name)
        detect_s += d
        track_s += t
    summary = mm.metrics.create().compute_many(kinds[0], metrics=_METRICS, names=names, generate_overall=True)
    overall = summary.loc["OVERALL"].to_dict()
    objects = int(overall["num_objects"])
    split_overall, bound, ceiling = (_overall(mm, k, names) for k in kinds[1:])
    split_objects = int(split_overall["num_objects"])
    return TrackReport(
        model=name,
        clips=len(names),
        frames=int(overall["num_frames"]),
        track_frames=objects,
        idf1=float(overall["idf1"]),
        mota=float(overall["mota"]),
        id_switches=int(overall["num_switches"]),
        switches_per_100=100.0 * float(overall["num_switches"]) / max(objects, 1),
        false_positives=int(overall["num_false_positives"]),
        misses=int(overall["num_misses"]),
        ms_detect=1000.0 * float(np.median(detect_s)),
        ms_track=1000.0 * float(np.median(track_s)),
        settings=settings,
        per_clip={n: {k: float(v) for k, v in summary.loc[n].to_dict().items()} for n in names},
        split_ignored={
            "idf1": float(split_overall["idf1"]),
            "mota": float(split_overall["mota"]),
            "switches_per_100": 100.0 * float(split_overall["num_switches"]) / max(split_objects, 1),
            "track_frames": float(split_objects),
        },
        bound_idf1=float(bound["idf1"]),
        ceiling_idf1=float(ceiling["idf1"]),
    )


def format_track_report(report: TrackReport) -> str:
    """A plain-text report: the headline figures and one line per clip."""
    lines = [
        f"model        {report.model}",
        f"clips        {report.clips}   frames {report.frames}   track-frames {report.track_frames}",
        f"IDF1         {report.idf1:.3f}   (with perfect identities, the detector's bound: {report.bound_idf1:.3f};"
        f" without the detections that cover no object {report.ceiling_idf1:.3f})",
        f"MOTA         {report.mota:.3f}   (false positives {report.false_positives}, misses {report.misses})",
        f"id switches  {report.id_switches}   ({report.switches_per_100:.2f} per 100 track-frames)",
        f"speed        detect {report.ms_detect:.1f} ms/frame   tracking {report.ms_track:.3f} ms/frame (medians)",
    ]
    si = report.split_ignored
    if si:
        lines.append(
            f"(split objects also ignored, not the headline: IDF1 {si['idf1']:.3f}   MOTA {si['mota']:.3f}   "
            f"{si['switches_per_100']:.2f} switches per 100 of {int(si['track_frames'])} track-frames)"
        )
    lines += [
        "",
        f"{'clip':<28}{'IDF1':>7}{'MOTA':>7}{'IDsw':>6}{'objects':>9}",
    ]
    for clip, m in report.per_clip.items():
        lines.append(
            f"{clip[:28]:<28}{m['idf1']:7.3f}{m['mota']:7.3f}{int(m['num_switches']):6d}{int(m['num_objects']):9d}"
        )
    return "\n".join(lines)


def main_eval_tracks(model: str, tracks: Sequence[str], confidence: float, overlap: float, as_json: bool) -> int:
    """``seg-agent eval --model M --tracks CLIP.tracks.json ...``: the report on stdout."""
    from agent.model import ModelError, OnnxModel, limit_helper_threads

    limit_helper_threads()  # as the daemon runs: the cores are ONNX Runtime's
    try:
        detector = OnnxModel(model)
    except ModelError as exc:
        raise ValueError(f"--model: {exc}") from None
    report = evaluate_tracks(detector, tracks, confidence=confidence, overlap=overlap)
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(format_track_report(report))
    return 0
