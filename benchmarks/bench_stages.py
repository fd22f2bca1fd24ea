"""Stages timed in process: JPEG decode, letterbox, session, postprocessing (sparse and dense), JSON, ``detect``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.decoders_split import decode_yolov8_split
from agent.jpeg import decode_jpeg, reduction_factor
from agent.model import OnnxModel
from agent.placement import letterbox_placement
from agent.postprocess import decode_yolov8_seg, letterbox, letterbox_params
from agent.preprocess import letterbox_uint8
from agent.results import detections_to_api, encode, to_message
from benchmarks.bench_base import CONFIDENCE, DENSE_INSTANCES, OVERLAP, ModelInfo, Plan, median
from benchmarks.synthetic import dense_outputs


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    fn()
    samples = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return median(samples), result


def json_payload(det: Any, names: list[str], frame_wh: tuple[int, int]) -> bytes:
    api = detections_to_api(det, names, image_wh=frame_wh, time_s=0.01)
    message = to_message(
        api,
        device_id="bench",
        camera="cam0",
        frame_id=1,
        timestamp=time.time(),
        source="local",
        model_id="bench",
        latency_ms=1.0,
    )
    return encode(message)


def decode_outputs(onnx: OnnxModel, outputs: tuple[np.ndarray, ...], kw: dict[str, Any]) -> Any:
    """The model's own decoder of its outputs: the split-head one for a model whose decode is out of the graph."""
    if onnx.split_head is None:
        return decode_yolov8_seg(*outputs, overlap=OVERLAP, **kw)
    rest = {k: v for k, v in kw.items() if k != "params"}
    placement = letterbox_placement(kw["params"], kw["frame_hw"], kw["input_hw"])
    return decode_yolov8_split(
        outputs, head=onnx.split_head, placement=placement, overlap=OVERLAP, fast_letterbox=True, **rest
    )


def measure_stages(model: ModelInfo, onnx: OnnxModel, packets: list[bytes], size: tuple[int, int], plan: Plan) -> dict:
    w, h = size
    # Decoded as the agent's capture decodes them: at the largest reduction the model loses nothing from.
    factor = reduction_factor((h, w), onnx.needed_hw((h, w)))
    frames = [decode_jpeg(np.frombuffer(p, np.uint8), factor) for p in packets[: plan.stage_runs]]
    frame = frames[0]
    out: dict[str, Any] = {"decode_factor": factor}
    i = itertools.count()
    out["jpeg_full_ms"], _ = timed(
        lambda: decode_jpeg(np.frombuffer(packets[next(i) % len(packets)], np.uint8)),
        plan.stage_runs,
    )
    out["jpeg_ms"], _ = timed(
        lambda: decode_jpeg(np.frombuffer(packets[next(i) % len(packets)], np.uint8), factor),
        plan.stage_runs,
    )
    box = letterbox_uint8 if onnx.input_dtype is np.uint8 else letterbox  # a uint8-input int8 file: its bytes
    out["letterbox_ms"], (tensor, params) = timed(lambda: box(frame, model.input_hw, frame_hw=(h, w)), plan.stage_runs)
    out["run_ms"], outputs = timed(lambda: onnx.run(tensor), plan.stage_runs)
    kw = {"params": params, "input_hw": model.input_hw, "frame_hw": (h, w), "confidence": CONFIDENCE}
    out["post_sparse_ms"], sparse = timed(lambda: decode_outputs(onnx, outputs, kw), plan.stage_runs)
    out["sparse_instances"] = len(sparse)
    lb = letterbox_params((h, w), model.input_hw)
    content = (round(h * lb.scale), round(w * lb.scale))
    synthetic = dense_outputs(
        DENSE_INSTANCES,
        model.input_hw,
        num_classes=model.num_classes,
        num_masks=model.num_masks,
        anchors=onnx.split_head.anchors if onnx.split_head is not None else int(outputs[0].shape[2]),
        content_hw=content,
    )
    dense_kw = {**kw, "confidence": 0.25}
    out["post_dense_ms"], dense = timed(
        lambda: decode_yolov8_seg(*synthetic, overlap=0.45, **dense_kw),  # type: ignore[arg-type]
        plan.stage_runs * 3,  # ~10 ms each: more samples for a median that a noisy neighbour moves less
    )
    out["dense_instances"] = len(dense)
    names = onnx.class_names
    out["json_sparse_ms"], _ = timed(lambda: json_payload(sparse, names, (w, h)), plan.stage_runs)
    out["json_dense_ms"], dense_payload = timed(lambda: json_payload(dense, names, (w, h)), plan.stage_runs)
    out["json_dense_kb"] = len(dense_payload) / 1024
    out["dense_vertices"] = int(sum(len(p) for p in dense.polygons))
    j = itertools.count()
    out["detect_ms"], _ = timed(
        lambda: onnx.detect(frames[next(j) % len(frames)], confidence=CONFIDENCE, overlap=OVERLAP, frame_hw=(h, w)),
        plan.stage_runs,
    )
    return out
