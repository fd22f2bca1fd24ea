"""agent.session_plan: the ``sessions: auto`` rule as a table of cases, the demand the cameras make, the start's
measurement with an injected clock, and the rule through the real pipeline with the demo model."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import CameraSettings, parse_settings
from agent.health import report
from agent.model import OnnxModel, SessionPool
from agent.pipeline import build, frames_under_way
from agent.session_plan import (
    BUSY_SHARE,
    MAX_SESSIONS,
    SessionPlan,
    compares_one_thread,
    demand_fps,
    measure_runs_ms,
    needs_run_time,
    plan_sessions,
    usable_cores,
)

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx"
SAMPLE_VIDEO = Path(__file__).resolve().parent.parent / "models" / "sample.avi"
CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
INF = math.inf


@pytest.mark.parametrize(
    ("cores", "providers", "threads", "demand", "run_ms", "expected"),
    [
        (0, CPU, 0, INF, None, (1, 0)),  # no cores reported: one session, the configured threads
        (1, CPU, 0, INF, None, (1, 0)),  # one core: nothing to share
        (1, CPU, 3, 100.0, 50.0, (1, 3)),
        (2, CUDA, 0, INF, None, (1, 0)),  # an accelerator runs the model: one session
        (8, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], 2, INF, 5.0, (1, 2)),
        (2, CPU, 0, INF, None, (2, 1)),  # fps 0 / a batch file: cores x 1 thread, no measurement needed
        (4, CPU, 0, INF, None, (4, 1)),
        (4, CPU, 1, INF, None, (4, 1)),
        (4, CPU, 2, INF, None, (2, 2)),  # configured threads kept per session: cores // threads of them
        (2, CPU, 2, INF, None, (1, 2)),  # 2 cores make one session of 2 threads
        (2, CPU, 3, INF, None, (1, 3)),
        (64, CPU, 0, INF, None, (MAX_SESSIONS, 1)),  # at most what the config accepts
        (2, CPU, 0, BUSY_SHARE * 10.0, 100.0, (1, 0)),  # just under (at) 0.9 x 10 runs/s: latency first
        (2, CPU, 0, BUSY_SHARE * 10.0 + 0.01, 100.0, (2, 1)),  # just over: frames/s first
        (2, CPU, 0, 2.0, 9.0, (1, 0)),  # the demo model at 2 fps
        (2, CPU, 0, 2.0, 600.0, (2, 1)),  # a model slower than the cameras ask
        (2, CPU, 0, 10.0, 55.0, (1, 0)),  # a 640 model, 2 cameras at 5 fps: 10 <= 0.9 x 18.2
        (2, CPU, 0, 20.0, 55.0, (2, 1)),  # 2 cameras at 10 fps: 20 > 16.4
        (2, CPU, 0, 0.0, 50.0, (1, 0)),  # no camera asks anything
        (2, CPU, 0, 5.0, None, (1, 0)),  # a finite demand and no measurement: the safe side
        (2, CPU, 0, 5.0, 0.0, (1, 0)),  # a nonsensical measurement too
    ],
)
def test_plan_sessions(
    cores: int, providers: list[str], threads: int, demand: float, run_ms: float | None, expected: tuple[int, int]
) -> None:
    plan = plan_sessions(cores=cores, providers=providers, threads=threads, demand=demand, run_ms=run_ms)
    assert (plan.sessions, plan.threads) == expected, plan.reason
    assert plan.auto and plan.cores == cores and plan.demand_fps == demand and plan.run_ms == run_ms
    assert plan.reason and str(plan.sessions) in plan.describe()


def test_a_plan_says_its_numbers() -> None:
    plan = plan_sessions(cores=2, providers=CPU, threads=0, demand=20.0, run_ms=55.0)
    assert "20 frames/s" in plan.reason and "55.0 ms" in plan.reason and "2 cores" in plan.reason
    lone = plan_sessions(cores=2, providers=CPU, threads=0, demand=2.0, run_ms=55.0)
    assert "latency" in lone.reason and "1 session of the local model" in lone.describe()


def _cam(**kw: Any) -> CameraSettings:
    return CameraSettings(**{"name": "c", "source": "rtsp://cam/1", **kw})


@pytest.mark.parametrize(
    ("cameras", "expected"),
    [
        ([], 0.0),
        ([_cam(fps=5.0)], 5.0),
        ([_cam(fps=2.5), _cam(name="d", fps=2.5)], 5.0),  # several cameras share the model
        ([_cam(fps=5.0), _cam(name="d", fps=0.0)], INF),  # fps 0: every frame, as fast as it goes
        ([_cam(source="clip.avi", fps=2.0, realtime=False)], INF),  # a batch file: its frames wait for the model
        ([_cam(source="clip.avi", fps=2.0, realtime=True)], 2.0),  # a realtime file: at most its fps
        ([_cam(fps=2.0, realtime=False)], 2.0),  # realtime is a files' setting: a live camera samples by the clock
        ([_cam(source=0, fps=3.0)], 3.0),  # a USB camera
    ],
)
def test_demand_fps(cameras: list[CameraSettings], expected: float) -> None:
    assert demand_fps(cameras) == expected


@pytest.mark.parametrize(
    ("cores", "providers", "demand", "expected"),
    [
        (2, CPU, 5.0, True),
        (2, CPU, INF, False),  # unbounded: every core's session whatever the run costs
        (2, CPU, 0.0, False),
        (1, CPU, 5.0, False),
        (0, CPU, 5.0, False),
        (4, CUDA, 5.0, False),
    ],
)
def test_needs_run_time(cores: int, providers: list[str], demand: float, expected: bool) -> None:
    assert needs_run_time(cores=cores, providers=providers, demand=demand) is expected


class _Clock:
    """Each run takes the next of ``steps`` seconds of this clock."""

    def __init__(self, steps: list[float]) -> None:
        self.now = 0.0
        self.steps = iter(steps)
        self.calls: list[str] = []

    def clock(self) -> float:
        return self.now

    def runner(self, name: str) -> Any:
        def run(_tensor: object) -> None:
            self.calls.append(name)
            self.now += next(self.steps)

        return run


def test_measure_runs_ms_is_the_median_after_a_warm_up() -> None:
    fake = _Clock([9.0, 0.010, 0.030, 0.020])  # the warm-up's 9 s (allocations) is not counted
    assert measure_runs_ms([fake.runner("a")], None, rounds=3, clock=fake.clock) == [pytest.approx(20.0)]  # type: ignore[arg-type]
    assert len(fake.calls) == 4


def test_measure_runs_ms_interleaves_the_runs() -> None:
    fake = _Clock([1.0, 1.0, 0.010, 0.020, 0.030, 0.060, 0.020, 0.040])
    a, b = fake.runner("a"), fake.runner("b")
    assert measure_runs_ms([a, b], None, rounds=3, clock=fake.clock) == [pytest.approx(20.0), pytest.approx(40.0)]  # type: ignore[arg-type]
    assert fake.calls == ["a", "b"] + ["a", "b"] * 3, "warm-ups first, then each round makes every run in turn"


def test_measure_runs_ms_pauses_before_each_timed_run() -> None:
    fake = _Clock([0.0] * 8)
    pauses: list[float] = []
    measure_runs_ms(
        [fake.runner("a"), fake.runner("b")], None, rounds=3, pause_s=0.05, clock=fake.clock, sleep=pauses.append
    )  # type: ignore[arg-type]
    assert pauses == [0.05] * 6, "none before the warm-ups, one before every timed run"


def test_measure_runs_ms_stops_at_its_budget() -> None:
    fake = _Clock([1.0] * 10)
    assert measure_runs_ms([fake.runner("a")], None, rounds=5, budget_s=2.0, clock=fake.clock) == [1000.0]  # type: ignore[arg-type]
    assert len(fake.calls) == 3, "the warm-up and two timed runs: the budget was spent"
    slow = _Clock([5.0, 5.0, 5.0])
    measure_runs_ms([slow.runner("a")], None, rounds=3, budget_s=2.0, clock=slow.clock)  # type: ignore[arg-type]
    assert len(slow.calls) == 2, "one timed run at least, even past the budget"


@pytest.mark.parametrize(
    ("threads", "cores", "providers", "demand", "run_ms", "expected"),
    [
        (0, 2, CPU, 2.0, 55.0, True),  # few frames, ONNX Runtime's thread count: is one thread sooner here?
        (2, 2, CPU, 2.0, 55.0, False),  # threads set by hand: kept
        (1, 2, CPU, 2.0, 55.0, False),
        (0, 2, CPU, 20.0, 55.0, False),  # frames/s first: several sessions anyway
        (0, 2, CPU, INF, 55.0, False),
        (0, 1, CPU, 2.0, 55.0, False),
        (0, 2, CUDA, 2.0, 5.0, False),
    ],
)
def test_compares_one_thread(
    threads: int, cores: int, providers: list[str], demand: float, run_ms: float, expected: bool
) -> None:
    assert (
        compares_one_thread(threads=threads, cores=cores, providers=providers, demand=demand, run_ms=run_ms) is expected
    )


@pytest.mark.parametrize(
    ("threads", "lone_ms", "one_thread_ms", "expected"),
    [
        (0, 60.0, 90.0, (1, 0)),  # a quiet machine: the cores' threads give a lone frame sooner
        (0, 320.0, 165.0, (1, 1)),  # busy cores: one thread is sooner (and takes less CPU)
        (0, 60.0, 60.0, (1, 1)),  # no slower: one thread, for its CPU
        (1, 60.0, 90.0, (1, 1)),
        (2, 320.0, 165.0, (1, 2)),  # threads set by hand are kept
        (0, 60.0, None, (1, 0)),
        (0, None, 60.0, (1, 0)),
        (0, 60.0, 0.0, (1, 0)),  # a nonsensical measurement
        (0, 600.0, 500.0, (1, 0)),  # one thread sooner but too slow for 2 fps (0.9 x 2/s): not taken
    ],
)
def test_plan_sessions_with_lone_runs(
    threads: int, lone_ms: float | None, one_thread_ms: float | None, expected: tuple[int, int]
) -> None:
    """2 fps, a 55 ms back-to-back run (18.2/s): one session; which threads it has is the lone runs' to say."""
    plan = plan_sessions(
        cores=4, providers=CPU, threads=threads, demand=2.0, run_ms=55.0, lone_ms=lone_ms, one_thread_ms=one_thread_ms
    )
    assert (plan.sessions, plan.threads) == expected, plan.reason
    assert (plan.lone_ms, plan.one_thread_ms) == (lone_ms, one_thread_ms)
    if lone_ms and one_thread_ms:  # the latency branch says both lone runs
        assert f"a lone run {lone_ms:.1f} ms, {one_thread_ms:.1f} ms on 1 thread" in plan.reason


def test_lone_runs_do_not_hold_back_frames_per_second() -> None:
    plan = plan_sessions(cores=2, providers=CPU, threads=0, demand=2.0, run_ms=600.0, lone_ms=650.0, one_thread_ms=1.0)
    assert (plan.sessions, plan.threads) == (2, 1), "2 fps > 0.9 x 1.67/s: several sessions whatever a lone run does"


def test_usable_cores_counts_what_this_process_may_use() -> None:
    cores = usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)


def test_a_plan_for_the_health_message() -> None:
    unbounded = SessionPlan(2, 1, True, "why", 2, INF, None).as_dict()
    assert unbounded["demand_fps"] is None and unbounded["unbounded_demand"] is True
    assert (unbounded["sessions"], unbounded["threads"], unbounded["run_ms"]) == (2, 1, None)
    paced = SessionPlan(1, 0, True, "why", 2, 2.0, 9.1234, 10.005, 14.567).as_dict()
    assert paced["demand_fps"] == 2.0 and paced["unbounded_demand"] is False and paced["run_ms"] == 9.12
    assert (paced["lone_ms"], paced["one_thread_ms"]) == (10.01, 14.57)
    configured = SessionPlan(3, 1, False, "inference.local.sessions").as_dict()
    assert configured["auto"] is False and configured["demand_fps"] is None and not configured["unbounded_demand"]


# ------------------------------------------------------------------ through the pipeline, the real demo model


def _settings(tmp_path: Path, camera: dict[str, Any], local: dict[str, Any] | None = None) -> Any:
    doc = {
        "device_id": "dev-1",
        "cameras": [{"name": "cam0", "source": str(SAMPLE_VIDEO), **camera}],
        "inference": {"mode": "local", "local": {"model": str(DEMO_MODEL), **(local or {})}},
        "mqtt": {"host": "127.0.0.1", "port": 1},
        "state_dir": str(tmp_path / "state"),
    }
    return parse_settings(doc, base_dir=tmp_path, env={})


def _built(tmp_path: Path, camera: dict[str, Any], local: dict[str, Any] | None = None) -> Any:
    return build(
        _settings(tmp_path, camera, local),
        stopping=threading.Event(),
        on_mode_change=lambda m, r: None,
        on_frame=lambda: None,
    )


def _sessions(pipeline: Any) -> list[OnnxModel]:
    local = pipeline.router._local
    return local.models if isinstance(local, SessionPool) else [local]


def _health_local(pipeline: Any) -> dict[str, Any]:
    doc = report(
        state="running",
        settings=pipeline.settings,
        uptime_s=1.0,
        workers=pipeline.workers,
        router=pipeline.router,
        outbox=pipeline.outbox.stats(),
        mqtt=pipeline.publisher.stats(),
        local=pipeline.session_plan,
    )
    return dict(doc["inference"]["local"])


@pytest.mark.skipif(usable_cores() < 2, reason="several sessions need 2 cores or more")
def test_a_batch_file_gets_a_session_per_core(tmp_path: Path) -> None:
    """``realtime: false``: the file's frames wait for the model, so frames/s first: cores x 1-thread sessions,
    a frame in flight for each, and the health message says so."""
    pipeline = _built(tmp_path, {"fps": 0, "realtime": False})
    try:
        cores = min(MAX_SESSIONS, usable_cores())
        plan = pipeline.session_plan
        assert (plan.sessions, plan.threads, plan.auto) == (cores, 1, True)
        assert plan.run_ms is None, "an unbounded demand needs no measurement"
        sessions = _sessions(pipeline)
        assert len(sessions) == cores
        assert [m._session.get_session_options().intra_op_num_threads for m in sessions] == [1] * cores
        assert (pipeline.settings.inference.local.sessions, pipeline.settings.inference.local.threads) == (cores, 1)
        assert frames_under_way(pipeline.settings, pipeline.settings.cameras[0], "local") == cores
        health = _health_local(pipeline)
        assert (health["sessions"], health["threads"], health["unbounded_demand"]) == (cores, 1, True)
    finally:
        pipeline.close(0.0)


def test_a_low_frame_rate_keeps_one_session_of_the_configured_threads(tmp_path: Path) -> None:
    """1 fps: the demo model's run is measured at start; it takes far under the 900 ms that would make 1 fps
    busy (9 ms idle, ~30 ms on this loaded machine), so one session keeps a lone frame's latency."""
    pipeline = _built(tmp_path, {"fps": 1, "realtime": True}, {"threads": 2})
    try:
        plan = pipeline.session_plan
        assert (plan.sessions, plan.threads, plan.auto) == (1, 2, True)
        cores = usable_cores()
        assert (plan.run_ms is not None) is (cores >= 2), "measured only where several sessions could pay"
        sessions = _sessions(pipeline)
        assert len(sessions) == 1 and isinstance(pipeline.router._local, OnnxModel)
        assert sessions[0]._session.get_session_options().intra_op_num_threads == 2
        assert pipeline.settings.inference.local.sessions == 1
        health = _health_local(pipeline)
        assert (health["sessions"], health["demand_fps"], health["unbounded_demand"]) == (1, 1.0, False)
    finally:
        pipeline.close(0.0)


@pytest.mark.skipif(usable_cores() < 2, reason="one thread is all there is on one core")
def test_a_low_frame_rate_with_onnx_runtimes_threads_takes_the_sooner_of_two_measured_runs(tmp_path: Path) -> None:
    """``threads: 0`` at 1 fps: a 1-thread session is measured beside the first; the one session kept is the
    one whose run was no slower (which one depends on this machine's load: both outcomes are checked)."""
    pipeline = _built(tmp_path, {"fps": 1, "realtime": True})
    try:
        plan = pipeline.session_plan
        assert plan.sessions == 1 and plan.lone_ms is not None and plan.one_thread_ms is not None
        assert (plan.threads == 1) is (plan.one_thread_ms <= plan.lone_ms), plan.reason
        sessions = _sessions(pipeline)
        assert len(sessions) == 1
        assert sessions[0]._session.get_session_options().intra_op_num_threads == plan.threads
        assert _health_local(pipeline)["one_thread_ms"] == round(plan.one_thread_ms, 2)
    finally:
        pipeline.close(0.0)


def test_configured_sessions_are_kept(tmp_path: Path) -> None:
    pipeline = _built(tmp_path, {"fps": 0, "realtime": False}, {"sessions": 1, "threads": 1})
    try:
        plan = pipeline.session_plan
        assert (plan.sessions, plan.threads, plan.auto) == (1, 1, False)
        assert len(_sessions(pipeline)) == 1 and _health_local(pipeline)["auto"] is False
    finally:
        pipeline.close(0.0)
