"""Runs the real agent (``agent.daemon.Agent``) in this process and reports what it cost, as JSON on stdout.

``python -m benchmarks.pipeline --config CONFIG --mode MODE [--seconds S] [--warmup W]``; ``benchmarks/run.py``
starts it as a subprocess (so the CPU time and peak memory are the agent's alone) next to a throwaway
Mosquitto. Modes:

``throughput``
    The camera is a looping video file with ``fps: 0`` and ``realtime: false``: every frame, as fast as the
    pipeline goes. Runs ``warmup + seconds``; the rate is the results acknowledged within the window.
``paced``
    A file played at its own pace (``realtime: true``) and sampled at the configured ``fps``: latency and CPU
    use at a steady rate. Runs ``warmup + seconds``.
``stalled``
    A live source that stops sending: CPU use while the agent waits on it. Runs ``warmup + seconds``.

What is measured: the outbox's ``put`` and ``ack`` are wrapped (nothing else is changed), so for every
detection result we know the capture time the worker gave it (``Frame.timestamp``, ``time.time()`` right
after ``grab()``, before the decode), when it entered the outbox and when the broker's PUBACK removed it
(paho's ``on_publish``). Latency is PUBACK minus capture time. CPU is ``getrusage(RUSAGE_SELF)`` (every thread
of the agent: capture, inference, ONNX Runtime's pool, SQLite, paho) over the measured window, after the
warm-up; peak memory is ``VmHWM`` from ``/proc/self/status`` at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.config import load_settings
from agent.daemon import Agent
from agent.outbox import Outbox

__all__ = ["main"]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of this process by native id, named after its Python thread if it has one
    (threads that Python did not start, such as ONNX Runtime's pool, are ``native``)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (names.get(int(tid), "native"), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _thread_cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per thread name (numbered pool threads merged) between two ``_thread_cpu`` snapshots."""
    totals: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        base = name.split("_")[0] if name.startswith("infer-") else name
        totals[base] = totals.get(base, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    return {k: v for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v > 0}


def _proc_status() -> dict[str, int]:
    """``VmHWM`` and ``VmRSS`` in kB (Linux; empty elsewhere)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class _Recorder:
    """Capture, put and PUBACK times of every detection result, by outbox sequence number."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.created: dict[int, float] = {}
        self.put_at: dict[int, float] = {}
        self.acked_at: dict[int, float] = {}
        self.detections: dict[int, int] = {}  # instances in each result (its predictions)

    def install(self) -> None:
        recorder = self
        original_put = Outbox.put
        original_ack = Outbox.ack

        def put(self: Outbox, topic: str, payload: bytes, *, created: float | None = None, **more: Any) -> int:
            seq = original_put(self, topic, payload, created=created, **more)  # more: camera=, whatever comes next
            if topic.endswith("/detections"):
                now = time.time()
                with recorder.lock:
                    recorder.created[seq] = now if created is None else created
                    recorder.put_at[seq] = now
                    recorder.detections[seq] = payload.count(b'"detection_id"')
            return seq

        def ack(self: Outbox, seq: int) -> None:
            now = time.time()
            with recorder.lock:
                if seq in recorder.created and seq not in recorder.acked_at:
                    recorder.acked_at[seq] = now
            original_ack(self, seq)

        Outbox.put = put  # type: ignore[method-assign]
        Outbox.ack = ack  # type: ignore[method-assign]

    def acked(self) -> int:
        with self.lock:
            return len(self.acked_at)

    def rows(self) -> list[tuple[float, float, float]]:
        """``(capture, put, ack)`` of every acknowledged result, in outbox order."""
        with self.lock:
            return [(self.created[s], self.put_at[s], self.acked_at[s]) for s in sorted(self.acked_at)]

    def detection_counts(self) -> list[int]:
        """Instances in each acknowledged result, in the order of :meth:`rows`."""
        with self.lock:
            return [self.detections.get(s, 0) for s in sorted(self.acked_at)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--mode", choices=("throughput", "paced", "stalled"), required=True)
    p.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before the window (model load, first frames)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    recorder = _Recorder()
    recorder.install()
    settings = load_settings(args.config)
    t_start = time.time()
    agent = Agent(settings, environ={})
    runner = threading.Thread(target=agent.run, name="agent", daemon=True)
    runner.start()
    result: dict[str, Any] = {"mode": args.mode}
    deadline = time.monotonic() + args.warmup
    while time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.05)
    cpu0, wall0, acked0, threads0 = _cpu_s(), time.monotonic(), recorder.acked(), _thread_cpu()
    time.sleep(args.seconds)
    cpu1, wall1, acked1, threads1 = _cpu_s(), time.monotonic(), recorder.acked(), _thread_cpu()
    result.update(
        window_s=wall1 - wall0,
        cpu_s=cpu1 - cpu0,
        thread_cpu_s=_thread_cpu_delta(threads0, threads1),
        results_in_window=acked1 - acked0,
        window_start=time.time() - (wall1 - wall0),
    )
    agent.stop()
    runner.join(60.0)
    result["finished"] = not runner.is_alive()
    result.update(
        total_cpu_s=_cpu_s(),
        wall_s=time.time() - t_start,
        rows=recorder.rows(),
        detections=recorder.detection_counts(),
        **{k.lower(): v for k, v in _proc_status().items()},
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
