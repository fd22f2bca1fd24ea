"""agent.measures: rates and latency windows, on an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from agent.measures import LatencyWindow, PublishAges, Rate


class _Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("marks", "now", "expected"),
    [
        ([], 100.0, 0.0),  # nothing yet
        ([100.0], 100.0, 0.0),  # one event, no span, under a second in: no rate yet
        ([100.0, 100.5], 100.5, 2.0),  # under a second in: between the first and last event
        ([100.0 + i * 0.1 for i in range(30)], 103.0, 10.0),  # 30 events in 3 s of window
        ([100.0 + i * 0.1 for i in range(30)], 110.0, 0.0),  # the source went quiet: falls to 0
        ([100.0 + i * 0.2 for i in range(50)], 110.0, 5.0),  # only the last 5 s count: 25 events
    ],
)
def test_rate_table(marks: list[float], now: float, expected: float) -> None:
    clock = _Clock(100.0)
    rate = Rate(window_s=5.0, clock=clock)
    for t in marks:
        clock.t = t
        rate.mark()
    clock.t = now
    assert rate.rate() == pytest.approx(expected, abs=0.05)
    assert rate.total == len(marks)


def test_rate_age_and_restart() -> None:
    clock = _Clock(10.0)
    rate = Rate(clock=clock)
    assert rate.age() is None
    rate.mark()
    clock.t = 12.5
    assert rate.age() == pytest.approx(2.5)
    rate.restart()
    assert rate.rate() == 0.0
    assert rate.total == 1  # all-time count kept


def test_rate_bounded_memory_uses_span() -> None:
    clock = _Clock(0.0)
    rate = Rate(window_s=5.0, maxlen=10, clock=clock)
    for i in range(100):  # 1000 fps: more than the deque keeps
        clock.t = 2.0 + i * 0.001
        rate.mark()
    assert rate.rate() == pytest.approx(1000.0, rel=0.01)


def test_latency_window_percentiles_and_count() -> None:
    w = LatencyWindow(size=4)
    assert w.summary() == {"count": 0, "p50_ms": None, "p90_ms": None}
    for v in (1.0, 2.0, 3.0, 4.0, 100.0):
        w.add(v)
    s = w.summary()
    assert s["count"] == 5  # all time
    assert s["p50_ms"] == 3.5  # of the last 4 only
    assert s["p90_ms"] is not None and s["p90_ms"] > 50


# --------------------------------------------------------------------------- age at publish


@pytest.mark.parametrize(
    ("delivered", "camera", "expected"),
    [
        ([], "cam0", {"count": 0, "p50_ms": None, "p90_ms": None}),  # nothing delivered yet
        ([("cam0", 99.5)], "cam0", {"count": 1, "p50_ms": 500.0, "p90_ms": 500.0}),
        ([("cam0", 99.5)], "cam1", {"count": 0, "p50_ms": None, "p90_ms": None}),  # per camera
        ([("cam0", 100.0 - i / 10) for i in range(1, 11)], "cam0", {"count": 10, "p50_ms": 550.0, "p90_ms": 910.0}),
        ([("cam0", 101.0)], "cam0", {"count": 1, "p50_ms": 0.0, "p90_ms": 0.0}),  # a clock step back: never < 0
    ],
)
def test_publish_ages_table(delivered: list[tuple[str, float]], camera: str, expected: dict[str, object]) -> None:
    ages = PublishAges(clock=_Clock(100.0))
    for cam, captured in delivered:
        ages.delivered(cam, captured)
    assert ages.summary(camera) == expected


def test_publish_ages_keep_the_last_results_and_count_all() -> None:
    clock = _Clock(100.0)
    ages = PublishAges(size=4, clock=clock)
    for _ in range(10):
        ages.delivered("cam0", 90.0)  # 10 s old: an outage
    for _ in range(4):
        ages.delivered("cam0", 99.9)  # then live again
    assert ages.summary("cam0") == {"count": 14, "p50_ms": pytest.approx(100.0), "p90_ms": pytest.approx(100.0)}
