"""Each model's tables: the pipeline rows, where the CPU goes by thread, the stages, Ultralytics' comparison."""

from __future__ import annotations

from typing import Any

from benchmarks.bench_base import (
    PACED_FPS,
    SESSIONS,
    TARGET_CPU,
    TARGET_DENSE,
    TARGET_LATENCY,
    TARGET_RSS_MB,
    TARGET_THROUGHPUT,
    fmt,
    mark,
    throughput_target,
)

THREAD_ROLES = (
    ("worker-cam0", "worker (ONNX Runtime's calling thread, letterbox, postprocessing, API object, JSON, outbox put)"),
    ("infer-cam0", "inference pool thread (only with several frames in flight)"),
    ("native", "ONNX Runtime's pool threads"),
    ("capture-cam0#", "capture (grab, JPEG decode)"),
    ("paho", "paho network thread"),
    ("mqtt-feeder", "publisher feeder"),
)


def where_cpu_goes(m: dict[str, Any], floor: dict[str, Any]) -> str:
    """Per-thread CPU per result in the throughput runs (from ``/proc/self/task``)."""
    sizes = [s for s, row in m["sizes"].items() if row.get("throughput", {}).get("thread_cpu_ms_per_result")]
    if not sizes:
        return ""
    lines = [
        "Where the agent's CPU goes in the throughput runs, ms per result, by thread (the model alone: "
        f"{fmt(floor['agent_cpu_ms'])} ms per run in the floor):",
        "",
        "| thread | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    per_size = [m["sizes"][s]["throughput"]["thread_cpu_ms_per_result"] for s in sizes]
    used: set[str] = set()
    for prefix, role in THREAD_ROLES:
        cells = []
        for table in per_size:
            keys = [k for k in table if k.startswith(prefix)]
            used.update(keys)
            cells.append(fmt(sum(table[k] for k in keys), 2))
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    rest = [fmt(sum(v for k, v in table.items() if k not in used), 2) for table in per_size]
    lines.append("| everything else (health, watchdog, outbox flusher, main) | " + " | ".join(rest) + " |")
    total = [fmt(sum(table.values()), 2) for table in per_size]
    lines.append("| **total** | " + " | ".join(f"**{t}**" for t in total) + " |")
    return "\n".join(lines)


def sessions_cell(thr: dict[str, Any] | None, floor_ms: float, target: float = TARGET_THROUGHPUT) -> str:
    """An extra throughput run (several sessions side by side, or frames in flight): frames/s, × floor, CPU ms
    per frame."""
    if not thr:
        return "n/a"
    fps = thr.get("fps", float("nan"))
    ratio = fps / (1000 / floor_ms)
    cpu = thr.get("cpu_ms_per_s", float("nan")) / fps
    return f"{fmt(fps)}, {fmt(ratio, 2)}{mark(ratio >= target)}, {fmt(cpu)} ms"


def build_tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for m in results["models"]:
        floor = m["floor"]
        fl_ms = floor["best_ms"]
        lines.append(f"### {m['key']} — input {m['input_hw'][1]}x{m['input_hw'][0]}, {m['num_classes']} classes")
        lines.append("")
        lines.append(f"{m['note']}.")
        lines.append("")
        hot = floor.get("hot_ms", fl_ms)
        lines.append(
            f"Floor over the whole run: **{fmt(fl_ms)} ms** per `session.run` after a pause, **{fmt(hot)} ms** "
            f"back to back = **{fmt(1000 / hot)} frames/s** (best of the grid: "
            f"{floor['best_threads'] or 'default'} thread(s), spinning {floor['best_spin']}; "
            f"p90 {fmt(floor['best_p90_ms'])} ms). The agent runs {floor['best_threads'] or 'default'} thread(s) "
            f"spinning during runs only: {fmt(floor['agent_ms'])} ms, {fmt(floor['agent_cpu_ms'])} ms of CPU per run."
        )
        lines.append("")
        lines.append(
            "Each row's ratios use the floor sampled around that row's measurements (the local floor, next "
            "column), as the machine's load drifts during a run: frames/s against its back-to-back runs (frames "
            "queue up there too), latency and CPU at 2 fps against its runs after a pause (each paced frame "
            "comes ~0.5 s after the last, to a cold cache and a parked pool, as the floor's paused runs do)."
        )
        lines.append("")
        overlap = any("throughput_overlap" in row for row in m["sizes"].values())  # runs before it had none
        lines.append(
            "| frame | detections per frame | local floor ms: paused / back to back | pipeline frames/s | × floor | "
            "agent CPU per frame × model's | "
            f"{SESSIONS} sessions: frames/s, × floor, CPU per frame | "
            + ("1 session, 2 frames in flight, spinning on: frames/s, × floor, CPU per frame | " if overlap else "")
            + "capture→PUBACK p50 (p90) ms | × floor | CPU at 2 fps | × model | peak RSS |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if overlap else ""))
        for size, row in m["sizes"].items():
            thr = row.get("throughput", {})
            paced = row.get("paced", {})
            local = row.get("floor", floor)
            row_ms = local["best_ms"]
            hot_ms = local.get("hot_ms", row_ms)  # runs before the back-to-back floor: the paused one
            ratio_fps = thr.get("fps", float("nan")) / (1000 / hot_ms)
            target_fps = throughput_target(m["input_hw"], m.get("trained", m["key"] != "yolov8n-seg"))
            cpu_frame = thr.get("cpu_ms_per_s", float("nan")) / thr.get("fps", float("nan"))
            ratio_cpu_frame = cpu_frame / local["agent_cpu_ms"]
            ratio_lat = paced.get("latency_p50_ms", float("nan")) / row_ms
            model_cpu = local["agent_cpu_ms"] * PACED_FPS
            ratio_cpu = paced.get("cpu_ms_per_s", float("nan")) / model_cpu
            lat_target = TARGET_LATENCY if size in ("640x480", "1280x720") else None
            rss = paced.get("rss_peak_mb", float("nan"))
            rss_ok = rss <= TARGET_RSS_MB if (m["key"] == "demo" and size == "1920x1080") else None
            dets = f"{fmt(thr.get('dets_per_frame', float('nan')))} / {fmt(paced.get('dets_per_frame', float('nan')))}"
            lines.append(
                f"| {size} | {dets} | {fmt(row_ms)} / {fmt(hot_ms)} | {fmt(thr.get('fps', float('nan')))} | "
                f"{fmt(ratio_fps, 2)}"
                f"{mark(ratio_fps >= target_fps)} | {fmt(cpu_frame)} ms, {fmt(ratio_cpu_frame, 2)} | "
                f"{sessions_cell(row.get('throughput_sessions'), hot_ms)} | "
                + (f"{sessions_cell(row.get('throughput_overlap'), hot_ms, target_fps)} | " if overlap else "")
                + f"{fmt(paced.get('latency_p50_ms', float('nan')))} "
                f"({fmt(paced.get('latency_p90_ms', float('nan')))}) | {fmt(ratio_lat, 2)}"
                f"{mark(ratio_lat <= lat_target if lat_target else None)} | "
                f"{fmt(paced.get('cpu_ms_per_s', float('nan')), 0)} ms/s | {fmt(ratio_cpu, 2)}"
                f"{mark(ratio_cpu <= TARGET_CPU)} | {fmt(rss, 0)} MB{mark(rss_ok)} |"
            )
        lines.append("")
        lines.append(where_cpu_goes(m, floor))
        lines.append("")
        lines.append(
            "| frame | JPEG decode: full → as decoded | letterbox | session | post, sparse (n) | post, dense (n) | "
            "× model | JSON, dense | agent `detect` | Ultralytics `predict` + polygons | ratio |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for size, row in m["sizes"].items():
            st = row.get("stages", {})
            local = row.get("floor", floor)
            # both back to back: the stages are timed in a loop, as the floor's burst
            dense_ratio = st.get("post_dense_ms", float("nan")) / local.get("hot_ms", local["best_ms"])
            ul = row.get("ultralytics", {})
            ul_ms = ul.get("total_ms", float("nan"))
            ours_ms = ul.get("ours_ms", st.get("detect_ms", float("nan")))
            ratio = ours_ms / ul_ms if ul else float("nan")
            ul_text = f"{fmt(ul_ms)} ms" if ul else results.get("ultralytics_note", "n/a")
            nan = float("nan")
            lines.append(
                f"| {size} | {fmt(st.get('jpeg_full_ms', nan), 2)} → {fmt(st.get('jpeg_ms', nan), 2)} "
                f"(1/{st.get('decode_factor', 1)}) | {fmt(st.get('letterbox_ms', nan), 2)} "
                f"| {fmt(st.get('run_ms', float('nan')))} | {fmt(st.get('post_sparse_ms', float('nan')), 2)} "
                f"({st.get('sparse_instances', 0)}) | {fmt(st.get('post_dense_ms', float('nan')))} "
                f"({st.get('dense_instances', 0)}) | {fmt(dense_ratio, 3)}{mark(dense_ratio <= TARGET_DENSE)} | "
                f"{fmt(st.get('json_dense_ms', float('nan')))} ({fmt(st.get('json_dense_kb', float('nan')), 0)} kB) | "
                f"{fmt(ours_ms)} | {ul_text} | "
                f"{fmt(ratio, 2)}{mark(ratio < 1.0 if ul else None)} |"
            )
        lines.append("")
        if any("ultralytics" in row for row in m["sizes"].values()):
            lines.append(
                "At confidence 0 (every anchor is a candidate, at most 300 kept: a stress case for NMS and masks):"
            )
            lines.append("")
            lines.append("| frame | agent `detect` (n) | Ultralytics `predict` + polygons (n) | ratio |")
            lines.append("|---|---|---|---|")
            for size, row in m["sizes"].items():
                st = row.get("stages", {})
                low = row.get("ultralytics_low", {})
                if not low:
                    continue
                ratio = low["ours_ms"] / low["total_ms"]
                lines.append(
                    f"| {size} | {fmt(low['ours_ms'])} ({low['ours_instances']}) | "
                    f"{fmt(low['total_ms'])} ({low['instances']}) | {fmt(ratio, 2)}{mark(ratio < 1.0)} |"
                )
            lines.append("")
    return "\n".join(lines)
