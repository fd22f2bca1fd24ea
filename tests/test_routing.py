"""agent.routing: the routing policy as tables, on an injected clock; no HTTP server, no model."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agent.camera_budget import CallBudget, ChangeGate, thumbnail
from agent.config import ServerlessSettings
from agent.routing import Mode, RoutePolicy, Way


def policy(configured: str = "auto", *, local: bool = True, remote: bool = True, **kw: float) -> RoutePolicy:
    s = ServerlessSettings(model_id="p/1", probe_interval_s=10.0, probe_max_s=40.0, **kw)  # type: ignore[arg-type]
    return RoutePolicy(s, configured=configured, has_local=local, has_remote=remote, now=0.0)


@pytest.mark.parametrize(
    ("configured", "local", "remote", "mode", "way"),
    [
        ("auto", True, True, Mode.SERVERLESS, Way.REMOTE),
        ("auto", True, False, Mode.LOCAL, Way.LOCAL),  # no client: local from the start
        ("local", True, True, Mode.LOCAL, Way.LOCAL),
        ("serverless", False, True, Mode.SERVERLESS, Way.REMOTE),
    ],
)
def test_first_decision(configured: str, local: bool, remote: bool, mode: Mode, way: Way) -> None:
    p = policy(configured, local=local, remote=remote)
    assert p.mode == mode
    plan = p.decide(0.0, "cam")
    assert plan.way == way and not plan.probe


def test_failover_probe_backoff_and_recovery() -> None:
    p = policy()
    assert p.decide(0.0, "cam").way == Way.REMOTE
    p.call_done("cam")
    v = p.failed(0.1, kind="connect", detail="cannot reach", retry_after=None, probe=False)
    assert [c.mode for c in v.changes] == [Mode.LOCAL]
    assert v.log is not None and v.log[0] == logging.WARNING and "next probe in 10.0 s" in v.log[1]
    assert p.counters["fallbacks"] == 1
    # until the probe is due, frames go local with the outage's code as their reason
    plan = p.decide(5.0, "cam")
    assert plan.way == Way.LOCAL and plan.reason == "connect"
    # due: exactly one probe at a time
    probe = p.decide(10.1, "cam")
    assert probe.way == Way.REMOTE and probe.probe
    meanwhile = p.decide(10.2, "cam")  # another frame meanwhile: local, and it says why
    assert meanwhile.way == Way.LOCAL and meanwhile.reason == "probe_in_flight"
    # the probe fails: the interval doubles, capped at probe_max_s
    table = [(10.3, 20.0), (30.4, 40.0), (70.5, 40.0)]
    for now, interval in table:
        p.call_done("cam")
        v = p.failed(now, kind="timeout", detail="timed out", retry_after=None, probe=True)
        assert p.probe_interval == interval and p.next_probe_at == pytest.approx(now + interval)
        assert v.log is not None and v.log[0] == logging.INFO and v.changes == ()
        assert p.decide(p.next_probe_at, "cam").probe
    # the probe answers: back to serverless, interval reset
    p.call_done("cam")
    v = p.succeeded(200.0, probe=True, endpoint="http://x")
    assert [c.mode for c in v.changes] == [Mode.SERVERLESS] and p.probe_interval == 10.0
    assert p.decide(200.1, "cam").way == Way.REMOTE
    assert p.counters["probes"] == 4 and p.counters["probes_ok"] == 1


def test_retry_after_delays_the_next_probe() -> None:
    p = policy()
    p.decide(0.0, "cam")
    p.failed(0.0, kind="rate_limited", detail="429", retry_after=30.0, probe=False)
    assert p.next_probe_at == 30.0
    assert p.next_probe_in(12.0) == 18.0


def test_auth_error_holds_until_a_probe_answers() -> None:
    p = policy()
    p.decide(0.0, "cam")
    p.call_done("cam")
    v = p.failed(0.0, kind="auth", detail="403", retry_after=None, probe=False)
    assert p.mode == Mode.AUTH_ERROR and v.log is not None and v.log[0] == logging.ERROR
    assert p.problem(0.0, 1000.0) == "serverless API key rejected"
    assert not p.decide(10.0, "cam").probe  # a configuration error is probed at probe_max_s
    assert p.decide(40.0, "cam").probe
    p.call_done("cam")
    v = p.failed(40.0, kind="timeout", detail="timed out", retry_after=None, probe=True)
    assert p.mode == Mode.AUTH_ERROR  # a weaker failure doesn't hide the key problem
    assert v.log is not None and v.log[0] == logging.DEBUG  # said once at ERROR already
    assert p.decide(80.0, "cam").probe
    p.call_done("cam")
    p.succeeded(80.0, probe=True, endpoint="e")
    assert p.mode == Mode.SERVERLESS


def test_late_failure_after_the_switch_changes_nothing_but_auth() -> None:
    p = policy()
    p.decide(0.0, "cam")
    p.decide(0.0, "cam")  # two calls in flight
    p.failed(1.0, kind="connect", detail="a", retry_after=None, probe=False)
    v = p.failed(1.1, kind="connect", detail="b", retry_after=None, probe=False)
    assert v.changes == () and v.log is None and p.counters["fallbacks"] == 1
    v = p.failed(1.2, kind="auth", detail="403", retry_after=None, probe=False)
    assert [c.mode for c in v.changes] == [Mode.AUTH_ERROR]


def test_hosted_only_fails_frames_while_down() -> None:
    p = policy("serverless", local=False)
    p.decide(0.0, "cam")
    p.failed(0.0, kind="connect", detail="x", retry_after=None, probe=False)
    assert p.mode == Mode.UNAVAILABLE
    plan = p.decide(1.0, "cam")
    assert plan.way == Way.FAIL and plan.kind == "unavailable"
    assert not p.may_retry(1.0, "cam")  # the outage is declared: no more retries


@pytest.mark.parametrize(
    ("per_minute", "per_day", "calls", "now", "capped"),
    [
        (0, 0, [0.0] * 100, 1.0, None),
        (3, 0, [0.0, 1.0, 2.0], 3.0, "capped_minute"),
        (3, 0, [0.0, 1.0, 2.0], 60.0, None),  # the first call left the window
        (0, 2, [0.0, 100.0], 3600.0, "capped_day"),
        (0, 2, [0.0, 100.0], 86400.0, None),  # a new day
    ],
)
def test_call_budget(per_minute: int, per_day: int, calls: list[float], now: float, capped: str | None) -> None:
    b = CallBudget(per_minute, per_day)
    for t in calls:
        b.spend(t)
    got = b.capped(now)
    assert (got[0] if got else None) == capped
    assert b.stats(now)["remote_calls"] == len(calls)


def test_caps_send_frames_local_in_auto_and_skip_them_hosted_only() -> None:
    auto = policy(max_calls_per_minute=1)
    assert auto.decide(0.0, "cam").way == Way.REMOTE
    auto.call_done("cam")
    plan = auto.decide(1.0, "cam")
    assert plan.way == Way.LOCAL and plan.reason == "capped_minute"
    assert auto.decide(1.0, "other").way == Way.REMOTE  # budgets are per camera
    hosted = policy("serverless", local=False, max_calls_per_minute=1)
    assert hosted.admit(0.0, "cam", None)
    hosted.decide(0.0, "cam")
    assert not hosted.admit(1.0, "cam", None)
    assert hosted.counters["capped_minute"] == 1 and hosted.camera_stats(1.0)["cam"]["capped_minute"] == 1


def test_change_gate() -> None:
    still = np.full((48, 64, 3), 100, np.uint8)
    moved = still.copy()
    moved[:, :32] = 200
    gate = ChangeGate(5.0)
    assert gate.enabled and not ChangeGate(0.0).enabled
    assert not gate.unchanged(thumbnail(still))  # nothing to compare with yet
    gate.admitted(thumbnail(still))
    assert gate.unchanged(thumbnail(still + 1))
    assert not gate.unchanged(thumbnail(moved))
    assert not gate.unchanged(thumbnail(np.full((10, 64, 3), 100, np.uint8)))  # another size: compare nothing
    p = policy(change_gate=5.0)
    assert p.admit(0.0, "cam", thumbnail(still))
    assert not p.admit(0.1, "cam", thumbnail(still))
    assert p.counters["gated"] == 1 and p.counters["admitted"] == 1


def test_at_most_max_in_flight_hosted_calls_per_camera() -> None:
    p = policy(max_in_flight=2)
    assert [p.decide(0.0, "cam").way for _ in range(2)] == [Way.REMOTE, Way.REMOTE]
    busy = p.decide(0.0, "cam")
    assert busy.way == Way.LOCAL and busy.reason == "hosted_busy"  # never queued behind the slow calls
    assert p.decide(0.0, "other").way == Way.REMOTE  # per camera
    p.call_done("cam")
    assert p.decide(0.1, "cam").way == Way.REMOTE
    assert p.counters["hosted_busy"] == 1 and p.camera_stats(0.1)["cam"]["hosted_in_flight"] == 2
    hosted = policy("serverless", local=False, max_in_flight=1)
    hosted.decide(0.0, "cam")
    assert hosted.decide(0.0, "cam").kind == "hosted_busy"


@pytest.mark.parametrize(
    ("failures", "mode", "problem"),
    [
        ([("http", 404, 0.0)], Mode.CONFIG_ERROR, "model p/1 not found (HTTP 404)"),
        ([("http", 405, 0.0)], Mode.CONFIG_ERROR, "HTTP 405"),
        ([("http", 400, 0.0)], Mode.LOCAL, "unreachable"),  # one bad frame is not a bad set-up
        ([("http", 400, t) for t in (0.0, 10.0, 30.0)], Mode.CONFIG_ERROR, "every call rejected (HTTP 400"),
        ([("http", 503, t) for t in (0.0, 10.0, 30.0)], Mode.LOCAL, "unreachable"),  # under a minute: outage
        ([("http", 503, t) for t in (0.0, 10.0, 30.0, 70.0)], Mode.CONFIG_ERROR, "same failure on every call"),
        ([("connect", None, t) for t in (0.0, 10.0, 30.0, 70.0, 150.0)], Mode.LOCAL, "unreachable"),
        ([("rate_limited", 429, t) for t in (0.0, 10.0, 30.0, 70.0)], Mode.LOCAL, "(http_429), serving local"),
    ],
)
def test_failures_classified(failures: list[tuple[str, int | None, float]], mode: Mode, problem: str) -> None:
    p = policy()
    for i, (kind, status, now) in enumerate(failures):
        plan = p.decide(now, "cam")
        assert plan.way == Way.REMOTE, (i, plan)
        p.call_done("cam")
        p.failed(now, kind=kind, detail=f"HTTP {status}", retry_after=None, probe=i > 0, status=status)
    assert p.mode == mode
    text = p.problem(200.0, 1_000_000.0)
    assert text is not None and problem in text
    if mode == Mode.CONFIG_ERROR:
        assert p.probe_interval == p._s.probe_max_s
        assert p.decide(failures[-1][2] + 1.0, "cam").reason == "config"  # the next probe is probe_max_s away


def test_no_problem_and_an_honest_reason_before_the_first_answer() -> None:
    p = policy()
    assert p.reason == "serverless API not called yet" and p.problem(0.0, 0.0) is None
    p.decide(0.0, "cam")
    p.call_done("cam")
    p.succeeded(0.1, probe=False, endpoint="e")
    assert p.reason == "serverless API answers"


# --------------------------------------------------------------------------- a runtime change of mode (a command)


@pytest.mark.parametrize(
    ("start", "down", "to", "mode", "way", "changed"),
    [
        ("auto", False, "local", Mode.LOCAL, Way.LOCAL, True),
        ("auto", False, "serverless", Mode.SERVERLESS, Way.REMOTE, False),
        ("auto", True, "serverless", Mode.UNAVAILABLE, Way.FAIL, True),  # still down, no local fallback now
        ("auto", True, "local", Mode.LOCAL, Way.LOCAL, False),
        ("local", False, "auto", Mode.SERVERLESS, Way.REMOTE, True),  # hosted again: tried on the next frame
        ("serverless", True, "auto", Mode.LOCAL, Way.LOCAL, True),  # down: the local model takes over
        ("local", False, "local", Mode.LOCAL, Way.LOCAL, False),  # no change
    ],
)
def test_reconfigure(start: str, down: bool, to: str, mode: Mode, way: Way, changed: bool) -> None:
    p = policy(start)
    if down:
        p.decide(0.0, "cam")
        p.call_done("cam")
        p.failed(0.1, kind="connect", detail="cannot reach", retry_after=None, probe=False)
        assert p.mode in (Mode.LOCAL, Mode.UNAVAILABLE)
    changes = p.reconfigure(1.0, to, has_local=True, has_remote=True)
    assert p.configured == to and p.mode == mode
    assert [c.mode for c in changes] == ([mode] if changed else [])
    assert p.decide(1.0, "cam").way == way


def test_reconfigure_keeps_a_configuration_error_until_a_probe_answers() -> None:
    p = policy("auto")
    p.decide(0.0, "cam")
    p.call_done("cam")
    p.failed(0.1, kind="auth", detail="403", retry_after=None, probe=False, status=403)
    assert p.mode == Mode.AUTH_ERROR
    assert p.reconfigure(1.0, "serverless", has_local=True, has_remote=True) == ()
    assert p.mode == Mode.AUTH_ERROR and not p.fallback
