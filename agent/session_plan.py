"""``inference.local.sessions: auto``: how many sessions of the local model, of how many threads, decided once at
start from the cores, the provider, the frames/s the cameras ask for and the model's measured run time.

On a small CPU a model makes poor use of intra-op threads: ``cores`` sessions of one thread, frames side by
side, give more frames/s than one session of ``cores`` threads (1.05-1.27x on 2 cores, README "Speed"), but a
lone frame takes ~1.5-1.8x longer on one thread. So several sessions pay only when frames are plentiful:
:func:`plan_sessions` picks them when the cameras' demand exceeds :data:`BUSY_SHARE` of what one session runs,
and keeps one session otherwise, for the lone frame's latency: of the configured threads, or with ``threads: 0``
of one thread when a lone 1-thread run measures no slower (busy cores). An accelerator keeps one session: its
run is not made of the cores' threads.

:func:`plan_sessions` and :func:`demand_fps` are pure; :func:`usable_cores` reads the machine and
:func:`measure_runs_ms` runs the model (the pipeline calls them, :mod:`agent.pipeline`).
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
    "LONE_PAUSE_S",
    "MAX_SESSIONS",
    "SessionPlan",
    "compares_one_thread",
    "demand_fps",
    "measure_runs_ms",
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

LONE_PAUSE_S = 0.05
"""The pause before each lone run measured at start: long enough for the pool's threads to sleep (they stop
spinning when a run returns), as they do between frames at a low fps."""

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
    # threads: 0 and few frames: a lone run (after a pause, as at a low fps) of the first session and of a
    # 1-thread session, measured in turn
    lone_ms: float | None = None
    one_thread_ms: float | None = None

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
            "lone_ms": None if self.lone_ms is None else round(self.lone_ms, 2),
            "one_thread_ms": None if self.one_thread_ms is None else round(self.one_thread_ms, 2),
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
    *,
    cores: int,
    providers: Sequence[str],
    threads: int,
    demand: float,
    run_ms: float | None,
    lone_ms: float | None = None,
    one_thread_ms: float | None = None,
) -> SessionPlan:
    """The layout for ``sessions: auto``.

    ``cores``: physical cores this process may use (0: not reported); ``providers``: the first session's, as
    ONNX Runtime opened it; ``threads``: ``inference.local.threads`` (0 = ONNX Runtime's choice); ``demand``:
    :func:`demand_fps`; ``run_ms``: the first session's measured ``session.run`` (:func:`measure_runs_ms`; may
    be None where :func:`needs_run_time` says it is not needed); ``lone_ms`` and ``one_thread_ms``: a lone run
    (after a pause) of the first session and of a 1-thread session, in turn (:func:`compares_one_thread`), or None.

    Several sessions only on the CPU provider, with 2 or more cores, when the demand exceeds
    :data:`BUSY_SHARE` x one session's runs per second: ``cores // threads`` sessions of ``threads`` (1 when
    0), at most :data:`MAX_SESSIONS`. Otherwise one session, for a lone frame's latency: of ``threads``, or of
    one thread when ``threads`` is 0 and a lone 1-thread run measured no slower (on cores busy with other work
    the pool's threads, asleep between lone frames, are slow to get a core back: one thread gave a lone frame
    in 0.5x the time at a load average of 8-10 on 2 cores, README "Sessions: auto"; it also takes less CPU).
    """

    def one(reason: str, threads: int = threads) -> SessionPlan:
        return SessionPlan(1, threads, True, reason, cores, demand, run_ms, lone_ms, one_thread_ms)

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
            why = f"cameras ask {asked} <= {BUSY_SHARE:g} x {rate:.1f}/s of one session ({run_ms:.1f} ms a run)"
            if lone_ms is not None and one_thread_ms is not None and lone_ms > 0 and one_thread_ms > 0:
                why += f"; a lone run {lone_ms:.1f} ms, {one_thread_ms:.1f} ms on 1 thread"
                if threads == 0 and one_thread_ms <= lone_ms and demand <= BUSY_SHARE * 1000.0 / one_thread_ms:
                    return one(f"{why}, {cores} cores: a lone frame's latency first", 1)
            return one(f"{why}, {cores} cores: a lone frame's latency first")
        why = f"cameras ask {asked} > {BUSY_SHARE:g} x {rate:.1f}/s of one session ({run_ms:.1f} ms a run)"
    else:
        why = f"cameras ask {asked}"
    return SessionPlan(
        count, per_session, True, f"{why}, {cores} cores: frames/s first", cores, demand, run_ms, lone_ms, one_thread_ms
    )


def compares_one_thread(*, threads: int, cores: int, providers: Sequence[str], demand: float, run_ms: float) -> bool:
    """Whether a 1-thread session is measured beside the first: ``threads: 0`` (the count is ONNX Runtime's to
    choose, so auto may choose it) and a demand one session serves (:func:`plan_sessions`' latency branch)."""
    return (
        threads == 0
        and needs_run_time(cores=cores, providers=providers, demand=demand)
        and run_ms > 0
        and demand <= BUSY_SHARE * 1000.0 / run_ms
    )


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


def measure_runs_ms(
    runs: Sequence[Callable[[np.ndarray[Any, Any]], object]],
    tensor_nchw: np.ndarray[Any, Any],
    *,
    rounds: int = 3,
    budget_s: float = 2.0,
    pause_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> list[float]:
    """Median wall time in ms of each of ``runs`` on ``tensor_nchw``, after one untimed warm-up run each (its
    allocations): ``rounds`` rounds, each making every run once in turn (so a change of load touches all of
    them alike), fewer when they pass ``budget_s`` (a slow model on a small device: the start stays short).
    ``pause_s``: a sleep before each timed run, so the run starts as a lone frame's does, its pool asleep."""
    for run in runs:
        run(tensor_nchw)
    times: list[list[float]] = [[] for _ in runs]
    spent = 0.0
    while len(times[0]) < max(1, rounds) and (not times[0] or spent < budget_s):
        for run, taken in zip(runs, times, strict=True):
            if pause_s > 0:
                sleep(pause_s)
            t0 = clock()
            run(tensor_nchw)
            elapsed = clock() - t0
            taken.append(elapsed * 1000.0)
            spent += elapsed
    return [statistics.median(t) for t in times]


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
    providers = first.providers
    run_ms = lone_ms = one_thread_ms = None
    single: OnnxModel | None = None
    if needs_run_time(cores=cores, providers=providers, demand=demand):
        tensor = probe_tensor(first)
        (run_ms,) = measure_runs_ms([first.run], tensor)
        if compares_one_thread(threads=local.threads, cores=cores, providers=providers, demand=demand, run_ms=run_ms):
            single = open_one(1, 1)
            pair = measure_runs_ms([first.run, single.run], tensor, pause_s=LONE_PAUSE_S)  # in turn: load alike
            lone_ms, one_thread_ms = pair
    plan = plan_sessions(
        cores=cores,
        providers=providers,
        threads=local.threads,
        demand=demand,
        run_ms=run_ms,
        lone_ms=lone_ms,
        one_thread_ms=one_thread_ms,
    )
    if plan.sessions == 1:
        return [single if plan.threads == 1 and single is not None else first], plan
    del first, single  # the plan's sessions have other threads and spinning
    return [open_one(plan.threads, plan.sessions) for _ in range(plan.sessions)], plan


def probe_tensor(model: OnnxModel) -> np.ndarray[Any, Any]:
    """A mid-grey frame of the model's input size, prepared as a frame is (letterboxed for a YOLO), in the
    model's input type: what :func:`measure_runs_ms` runs."""
    height, width = model.input_hw
    image = np.full((height, width, 3), 114, dtype=np.uint8)
    tensor, _ = prepare(image, model.preprocessing, model.input_hw)
    return model.input_tensor(tensor)
