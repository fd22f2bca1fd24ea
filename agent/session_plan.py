"""``inference.local.sessions: auto``: how many sessions of the local model, of how many threads, decided once at
start from the cores, the provider, the frames/s the cameras ask for and the model's measured run time.

On a small CPU a model makes poor use of intra-op threads: ``cores`` sessions of one thread, frames side by
side, give more frames/s than one session of ``cores`` threads (1.05-1.27x on 2 cores, README "Speed"), but a
lone frame takes ~1.5-1.8x longer on one thread. So several sessions pay only when frames are plentiful:
:func:`plan_sessions` picks them when the cameras' demand exceeds :data:`BUSY_SHARE` of what one session runs,
and keeps one session of the configured threads (the lone frame's latency) otherwise. An accelerator keeps one
session: its run is not made of the cores' threads.

:func:`plan_sessions` and :func:`demand_fps` are pure; :func:`usable_cores` reads the machine and
:func:`measure_run_ms` runs the model (the pipeline calls them, :mod:`agent.pipeline`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.config import CameraSettings, LocalSettings
from agent.preprocess import prepare

if TYPE_CHECKING:
    from agent.model import OnnxModel

__all__ = [
    "BUSY_SHARE",
    "MAX_SESSIONS",
    "SessionPlan",
    "demand_fps",
    "measure_run_ms",
    "needs_run_time",
    "open_sessions",
    "plan_sessions",
    "probe_tensor",
    "usable_cores",
]

BUSY_SHARE = 0.9
"""Several sessions when the cameras ask for more than this share of one session's measured runs per second.
The measured rate is ``session.run``'s alone; a whole frame also has its decode, letterbox, masks and JSON
(~5-25 % more, README "Speed"), so at 0.9 one session is about full and frames would start to wait or drop."""

MAX_SESSIONS = 16
"""The most sessions ``auto`` opens (``inference.local.sessions`` accepts 1..16)."""

_CPU = "CPUExecutionProvider"


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """What ``sessions: auto`` decided (or what was configured, ``auto`` False), and the figures it used."""

    sessions: int
    threads: int  # per session; 0 = ONNX Runtime's choice (one per physical core)
    auto: bool
    reason: str
    cores: int = 0
    demand_fps: float | None = None  # None: no local demand figure (not auto); math.inf: as fast as possible
    run_ms: float | None = None  # the first session's measured run; None: not measured (not needed)

    def describe(self) -> str:
        """One line for the log: the layout, then why (with the numbers)."""
        threads = "ONNX Runtime's threads" if self.threads == 0 else f"{self.threads} thread(s)"
        how = "auto" if self.auto else "configured"
        if self.sessions > 1:
            layout = f"{self.sessions} sessions of the local model run frames side by side, {threads} each"
        else:
            layout = f"1 session of the local model, {threads}"
        return f"{layout} ({how}: {self.reason})"

    def as_dict(self) -> dict[str, Any]:
        """For the health message: plain JSON values (an unbounded ``demand_fps`` is null, ``unbounded_demand``)."""
        demand = self.demand_fps
        return {
            "sessions": self.sessions,
            "threads": self.threads,
            "auto": self.auto,
            "reason": self.reason,
            "cores": self.cores,
            "demand_fps": None if demand is None or math.isinf(demand) else round(demand, 3),
            "unbounded_demand": demand is not None and math.isinf(demand),
            "run_ms": None if self.run_ms is None else round(self.run_ms, 2),
        }


def demand_fps(cameras: Sequence[CameraSettings]) -> float:
    """Frames/s the cameras ask of the local model: the sum of their sample rates, ``math.inf`` when one asks
    as fast as it goes (``fps: 0``, or a file read in batch, ``realtime: false``, whose frames wait for the
    model). A realtime file's rate is at most its own; its configured ``fps`` is the bound used here."""
    total = 0.0
    for camera in cameras:
        if camera.fps <= 0 or (camera.is_file and not camera.realtime):
            return math.inf
        total += camera.fps
    return total


def _fmt_fps(fps: float) -> str:
    return "as fast as possible" if math.isinf(fps) else f"{fps:g} frames/s"


def needs_run_time(*, cores: int, providers: Sequence[str], demand: float) -> bool:
    """Whether :func:`plan_sessions` needs the model's measured run: only on the CPU, with cores to share, for a
    finite demand (an unbounded one takes every core's session whatever the run costs)."""
    return _on_cpu(providers) and cores >= 2 and math.isfinite(demand) and demand > 0


def _on_cpu(providers: Sequence[str]) -> bool:
    return list(providers) == [_CPU]


def plan_sessions(
    *, cores: int, providers: Sequence[str], threads: int, demand: float, run_ms: float | None
) -> SessionPlan:
    """The layout for ``sessions: auto``.

    ``cores``: physical cores this process may use (0: not reported); ``providers``: the first session's, as
    ONNX Runtime opened it; ``threads``: ``inference.local.threads`` (0 = ONNX Runtime's choice); ``demand``:
    :func:`demand_fps`; ``run_ms``: the first session's measured ``session.run`` (:func:`measure_run_ms`; may
    be None where :func:`needs_run_time` says it is not needed).

    Several sessions only on the CPU provider, with 2 or more cores, when the demand exceeds
    :data:`BUSY_SHARE` x one session's runs per second: ``cores // threads`` sessions of ``threads`` (1 when
    0), at most :data:`MAX_SESSIONS`. Otherwise one session of ``threads``.
    """

    def one(reason: str) -> SessionPlan:
        return SessionPlan(1, threads, True, reason, cores, demand, run_ms)

    if not _on_cpu(providers):
        return one(f"{', '.join(p for p in providers if p != _CPU)} runs the model, not the cores")
    if cores < 2:
        return one("the cores are not reported" if cores <= 0 else "1 core")
    per_session = threads if threads > 0 else 1
    count = min(MAX_SESSIONS, cores // per_session)
    if count < 2:
        return one(f"{cores} cores make one session of {threads} threads")
    asked = _fmt_fps(demand)
    if math.isfinite(demand):
        if demand <= 0:
            return one("no camera asks for frames")
        if run_ms is None or run_ms <= 0:
            return one(f"cameras ask {asked}, the model's run was not measured")
        rate = 1000.0 / run_ms
        if demand <= BUSY_SHARE * rate:
            return one(
                f"cameras ask {asked} <= {BUSY_SHARE:g} x {rate:.1f}/s of one session ({run_ms:.1f} ms a run), "
                f"{cores} cores: a lone frame's latency first"
            )
        why = f"cameras ask {asked} > {BUSY_SHARE:g} x {rate:.1f}/s of one session ({run_ms:.1f} ms a run)"
    else:
        why = f"cameras ask {asked}"
    return SessionPlan(count, per_session, True, f"{why}, {cores} cores: frames/s first", cores, demand, run_ms)


def usable_cores() -> int:
    """Physical cores this process may run on: the CPUs of its affinity (else all), counted once per core
    (hyperthread siblings share one) where Linux's sysfs says which core each is; 0 when nothing is reported."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)  # no topology: count what the affinity lists
        cores.add((package, core))
    return len(cores)


def measure_run_ms(
    run: Callable[[np.ndarray[Any, Any]], object],
    tensor_nchw: np.ndarray[Any, Any],
    *,
    runs: int = 3,
    budget_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median wall time of ``run(tensor_nchw)`` in ms, after one untimed warm-up run (its allocations): ``runs``
    timed runs, fewer when they pass ``budget_s`` (a slow model on a small device: the start stays short)."""
    run(tensor_nchw)
    times: list[float] = []
    spent = 0.0
    while len(times) < max(1, runs) and (not times or spent < budget_s):
        t0 = clock()
        run(tensor_nchw)
        elapsed = clock() - t0
        times.append(elapsed * 1000.0)
        spent += elapsed
    return statistics.median(times)


OpenSession = Callable[[int, int], "OnnxModel"]
"""Opens one session of the local model: ``(threads, sessions)``, the sessions it will be one of (its spinning
depends on them, :func:`agent.runtime.spins`)."""


def open_sessions(
    local: LocalSettings, cameras: Sequence[CameraSettings], open_one: OpenSession
) -> tuple[list[OnnxModel], SessionPlan]:
    """The local model's sessions as ``inference.local`` asks: ``sessions`` of ``threads``, or for ``auto`` one
    session of ``threads`` first, measured when the plan needs it (:func:`plan_sessions`), then kept or
    replaced by the plan's sessions."""
    if local.sessions != "auto":
        models = [open_one(local.threads, local.sessions) for _ in range(local.sessions)]
        return models, SessionPlan(local.sessions, local.threads, False, "inference.local.sessions")
    first = open_one(local.threads, 1)
    cores = usable_cores()
    demand = demand_fps(cameras)
    run_ms = None
    if needs_run_time(cores=cores, providers=first.providers, demand=demand):
        run_ms = measure_run_ms(first.run, probe_tensor(first))
    plan = plan_sessions(cores=cores, providers=first.providers, threads=local.threads, demand=demand, run_ms=run_ms)
    if plan.sessions == 1:
        return [first], plan
    del first  # the plan's sessions have other threads and spinning
    return [open_one(plan.threads, plan.sessions) for _ in range(plan.sessions)], plan


def probe_tensor(model: OnnxModel) -> np.ndarray[Any, Any]:
    """A mid-grey frame of the model's input size, prepared as a frame is (letterboxed for a YOLO), in the
    model's input type: what :func:`measure_run_ms` runs."""
    height, width = model.input_hw
    image = np.full((height, width, 3), 114, dtype=np.uint8)
    tensor, _ = prepare(image, model.preprocessing, model.input_hw)
    return model.input_tensor(tensor)
