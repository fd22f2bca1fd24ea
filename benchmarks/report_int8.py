"""fp32 against int8 through the whole agent, and what int8 should do on a Raspberry Pi 4 and 5."""

from __future__ import annotations

from typing import Any

from benchmarks.bench_base import fmt
from benchmarks.report_estimates import PUBLISHED


def int8_pairs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's side-by-side fp32/int8 comparisons (``benchmarks/int8.py``'s ``compare``), each with its fp32
    model's ``key``; a run saved before there could be several has one, the demo model's."""
    pairs = results.get("int8") or []
    if isinstance(pairs, dict):
        return [{"key": "demo", **pairs}]
    return list(pairs)


def int8_pipeline_table(results: dict[str, Any], key: str = "demo") -> str:
    """A model's pipeline rows, fp32 against int8 (measured minutes apart in this run, not interleaved)."""
    by_key = {m["key"]: m for m in results["models"]}
    fp32, int8 = by_key.get(key), by_key.get(f"{key}-int8")
    if fp32 is None or int8 is None:
        return ""
    nan = float("nan")
    lines = [
        "Through the whole agent (the pipeline rows above; fp32 and int8 runs of one size a few minutes apart, "
        "so the load may differ between them): frames/s and capture→PUBACK p50 and CPU at 2 fps, "
        "fp32 → int8, and the ratio (frames/s: int8 ÷ fp32; latency and CPU: fp32 ÷ int8, higher is better).",
        "",
        "| frame | detections per frame, fp32 / int8 | frames/s | × | capture→PUBACK p50 ms | × | CPU at 2 fps, "
        "ms/s | × |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, a in fp32["sizes"].items():
        b = int8["sizes"].get(size)
        if b is None:
            continue
        ta, tb = a.get("throughput", {}), b.get("throughput", {})
        pa, pb = a.get("paced", {}), b.get("paced", {})
        fa, fb = ta.get("fps", nan), tb.get("fps", nan)
        la, lb = pa.get("latency_p50_ms", nan), pb.get("latency_p50_ms", nan)
        ca, cb = pa.get("cpu_ms_per_s", nan), pb.get("cpu_ms_per_s", nan)
        lines.append(
            f"| {size} | {fmt(ta.get('dets_per_frame', nan))} / {fmt(tb.get('dets_per_frame', nan))} | "
            f"{fmt(fa)} → {fmt(fb)} | {fmt(fb / fa, 2)} | {fmt(la)} → {fmt(lb)} | {fmt(la / lb, 2)} | "
            f"{fmt(ca, 0)} → {fmt(cb, 0)} | {fmt(ca / cb, 2)} |"
        )
    return "\n".join([*lines, ""])


def int8_on_arm(results: dict[str, Any]) -> str:
    """What int8 should do on a Raspberry Pi 4 and 5: expectations, from the instruction sets and this run."""
    pub = PUBLISHED
    cpu = pub["ultralytics_cpu_onnx_ms"]
    pi5 = pub["pi5_yolo11n_onnx_ms"] * cpu["yolov8n-seg"] / cpu["yolo11n"]
    pi4 = pi5 * pub["pi5_over_pi4_cpu"]
    shown = []
    for pair in int8_pairs(results):
        one = next((s for s in pair["session"] if s["threads"] == 1 and s.get("clock", "wall") == "wall"), None)
        if one is not None:
            shown.append(f"{pair['key']} {one['speedup']:.2f}x")
    measured = f" (here, with VNNI, at 1 thread: {', '.join(shown)})" if shown else ""
    return "\n".join(
        [
            "### int8 on a Raspberry Pi 4 and 5 (expectations, not measured)",
            "",
            "`seg-agent quantize` picks int8 activations on ARM (S8S8, ONNX Runtime's recommendation there). Whether "
            "int8 pays depends on the dot-product instructions:",
            "",
            f"- **Pi 5** (Cortex-A76, Armv8.2-A, `asimddp` in /proc/cpuinfo: `sdot`/`udot`, 16 int8 multiply-adds "
            "per 128-bit instruction against 4 fp32 FMAs): ONNX Runtime's int8 GEMM kernels use them, so the "
            f"convolutions should gain at least what they gain here with VNNI{measured}: expect **1.5-2x** the "
            f"model's frames/s; YOLOv8n-seg ≈ {pi5:.0f} ms fp32 → ≈ {pi5 / 2:.0f}-{pi5 / 1.5:.0f} ms int8.",
            f"- **Pi 4** (Cortex-A72, Armv8.0-A, no dot product): int8 GEMMs fall back to widening multiplies "
            "(`smull`/`smlal`, 8 multiply-adds per instruction at best, plus the widening and requantisation), "
            "and the QuantizeLinear/DequantizeLinear and QLinear activation ops cost as much as before: expect "
            f"**1.0-1.3x** at most, possibly slower for small models (as S8S8 ran slower than fp32 on x86 here, "
            f"174 vs 99 ms); YOLOv8n-seg ≈ {pi4:.0f} ms fp32 → ≈ {pi4 / 1.3:.0f}-{pi4:.0f} ms int8. Keep fp32 on "
            "a Pi 4 unless `seg-agent quantize`'s speed line, run on the Pi itself, shows a clear gain.",
            "- Accuracy does not depend on the CPU: the AP check above holds on both (the same int8 arithmetic), "
            "but int8 against uint8 activations on ARM is still to be measured on the devices.",
        ]
    )
