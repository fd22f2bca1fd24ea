"""Estimates for a Raspberry Pi 4/5 and a Jetson Orin Nano, from published figures and this run's ratios."""

from __future__ import annotations

from typing import Any

from benchmarks.bench_base import fmt

# Published per-model figures (see /work/shared/field-notes.md "Speed references" and the sources they cite).
PUBLISHED = {
    "ultralytics_cpu_onnx_ms": {"yolo11n": 56.1, "yolo11n-seg": 65.9, "yolov8n-seg": 96.1},
    "pi5_yolo11n_onnx_ms": 168.0,
    "orin_nano_super_yolo11n_onnx_ms": 7.9,
    "orin_nano_super_yolo11n_trt_fp16_ms": 4.9,
    "pi5_over_pi4_cpu": 2.5,  # Raspberry Pi's own "2-3x the CPU performance of Raspberry Pi 4"
}


ANCHORS = ("yolov8n-synth", "yolov8n-seg")
"""The models that anchor the estimates, first found first: YOLOv8n-seg's network at 640."""


def estimates(results: dict[str, Any]) -> str:
    """Raspberry Pi 4/5 and Jetson Orin Nano figures from published per-model numbers and this run's ratios."""
    by_key = {m["key"]: m for m in results["models"]}
    # The anchor: YOLOv8n-seg's network at 640, trained if the run has it (the same graph but 3 classes), else
    # the random-weight one; int8 twins are left out (their speed-up here is VNNI's: see the int8 paragraph).
    anchor = next((k for k in ANCHORS if k in by_key), None)
    if anchor is None:
        return "No estimates: no YOLOv8n-seg row (which anchors them) was measured in this run."
    v8 = by_key[anchor]
    by_key = {k: m for k, m in by_key.items() if not m.get("int8_of") and not k.endswith("-int8")}
    pub = PUBLISHED
    cpu = pub["ultralytics_cpu_onnx_ms"]
    seg_over_det = cpu["yolov8n-seg"] / cpu["yolo11n"]
    pi5_v8 = pub["pi5_yolo11n_onnx_ms"] * seg_over_det
    devices = {
        "Raspberry Pi 5 (ONNX Runtime, CPU)": pi5_v8,
        "Raspberry Pi 4 (ONNX Runtime, CPU)": pi5_v8 * pub["pi5_over_pi4_cpu"],
        "Jetson Orin Nano Super (ONNX Runtime, GPU)": pub["orin_nano_super_yolo11n_onnx_ms"] * seg_over_det,
        "Jetson Orin Nano Super (TensorRT FP16)": pub["orin_nano_super_yolo11n_trt_fp16_ms"] * seg_over_det,
    }
    here_v8 = v8["floor"]["best_ms"]
    pi5_factor = pi5_v8 / here_v8  # how much slower a Pi 5 core-set is than this machine, for the same model
    lines = [
        "## Estimates for a Raspberry Pi 4/5 and a Jetson Orin Nano",
        "",
        f"Anchors, published: Ultralytics' CPU ONNX figures (YOLO11n {cpu['yolo11n']} ms, YOLO11n-seg "
        f"{cpu['yolo11n-seg']} ms, YOLOv8n-seg {cpu['yolov8n-seg']} ms), YOLO11n on a Raspberry Pi 5 with ONNX "
        f"Runtime {pub['pi5_yolo11n_onnx_ms']:.0f} ms, on a Jetson Orin Nano Super "
        f"{pub['orin_nano_super_yolo11n_onnx_ms']} ms (ONNX Runtime) and "
        f"{pub['orin_nano_super_yolo11n_trt_fp16_ms']} ms (TensorRT FP16); a Pi 5 has 2-3x a Pi 4's CPU speed "
        f"(2.5 taken). YOLOv8n-seg is {seg_over_det:.2f}x YOLO11n in Ultralytics' table, so: "
        f"Pi 5 ≈ {pi5_v8:.0f} ms, Pi 4 ≈ {pi5_v8 * pub['pi5_over_pi4_cpu']:.0f} ms. This machine ran YOLOv8n-seg "
        f"in {here_v8:.0f} ms ({anchor}), so a Pi 5 is taken as {pi5_factor:.1f}x slower for everything the "
        "agent does on the CPU (JPEG, letterbox, postprocessing, JSON): pessimistic for NumPy/OpenCV code, "
        "which loses less to the Pi than ONNX Runtime's AVX2 convolutions do. The Jetson's agent work runs on "
        "its Cortex-A78AE cores, taken as fast as a Pi 5's. The demo model scales by its ratio to YOLOv8n-seg "
        "measured here.",
        "",
        "| device | model | model ms | agent work per frame, 640x480 / 1920x1080 (sparse) | "
        "pipeline ÷ model, 640x480 / 1920x1080 | dense postprocessing (150) ÷ model, 1920x1080 |",
        "|---|---|---|---|---|---|",
    ]
    for key, m in by_key.items():
        scale_model = m["floor"]["best_ms"] / here_v8
        sizes = m["sizes"]
        for device, v8_ms in devices.items():
            model_ms = v8_ms * scale_model
            cpu_scale = pi5_factor * (pub["pi5_over_pi4_cpu"] if "Pi 4" in device else 1.0)
            work, ratio = [], []
            for size in ("640x480", "1920x1080"):
                st = sizes.get(size, {}).get("stages")
                if not st:
                    work.append(float("nan"))
                    ratio.append(float("nan"))
                    continue
                serial = (st["letterbox_ms"] + st["post_sparse_ms"] + st["json_sparse_ms"]) * cpu_scale
                decode = st["jpeg_ms"] * cpu_scale  # on the capture thread, alongside the previous inference
                work.append(serial + decode)
                ratio.append((max(model_ms, decode) + serial) / model_ms)
            dense = sizes.get("1920x1080", {}).get("stages", {}).get("post_dense_ms", float("nan")) * cpu_scale
            lines.append(
                f"| {device} | {key} | {model_ms:.0f} | {fmt(work[0])} / {fmt(work[1])} ms | "
                f"{fmt(ratio[0], 2)} / {fmt(ratio[1], 2)} | {fmt(dense / model_ms, 2)} |"
            )
    lines += [
        "",
        "Reading it: on the Pis the model dominates and the agent's work stays a few percent (the JPEG decode of "
        "a 1080p frame runs on the capture thread while the previous frame is inferred). On the Jetson the model "
        "runs on the GPU in a few milliseconds while the agent's work stays on the ARM cores, so at 1080p the JPEG "
        "decode alone is as long as the model: there the pipeline is bound by the CPU side (see what is left).",
    ]
    return "\n".join(lines)
