"""Routing between the hosted API (a real loopback server) and a local detector, under faults."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from agent.config import InferenceSettings, LocalSettings, Secret, ServerlessSettings
from agent.frames import DecodePolicy, Frame
from agent.jpeg import reduction_factor
from agent.model import OnnxModel
from agent.postprocess import Detections
from agent.results import encode
from agent.router import Detector, FrameFailed, Outcome, Router
from agent.serverless import ServerlessClient
from tests.fake_roboflow import CLASS_NAMES, FakeRoboflow, draw_scene, find_blobs

KEY = "rf_RouterSecretKey_7731"
MODEL = "shapes/3"

pytestmark = pytest.mark.timeout(30)


class BlobDetector:
    """The local side: the same blob finder as the fake server, as :class:`Detections`.

    Fails the test if entered by two threads at once (the router must serialise local calls)."""

    def __init__(self, class_names: list[str] | None = None) -> None:
        self.class_names = list(class_names or CLASS_NAMES)
        self.calls = 0
        self._busy = threading.Lock()
        self.overlapped = False

    def needed_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return frame_hw

    def detect(
        self,
        image_bgr: NDArray[np.uint8],
        *,
        confidence: float,
        overlap: float,
        max_detections: int,
        frame_hw: tuple[int, int] | None = None,
    ) -> Detections:
        assert frame_hw in (None, image_bgr.shape[:2])  # this detector finds blobs in the pixels it gets
        if not self._busy.acquire(blocking=False):
            self.overlapped = True
            self._busy.acquire()
        try:
            self.calls += 1
            time.sleep(0.002)
            blobs = [b for b in find_blobs(image_bgr) if b.confidence > confidence][:max_detections]
            if not blobs:
                return Detections.empty()
            return Detections(
                boxes_xyxy=np.array([b.box_xyxy for b in blobs], np.float32),
                confidence=np.array([b.confidence for b in blobs], np.float32),
                class_id=np.array([b.class_id for b in blobs], np.int64),
                polygons=[b.polygon for b in blobs],
            )
        finally:
            self._busy.release()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class ModeLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, mode: str, reason: str) -> None:
        self.events.append((mode, reason))

    @property
    def modes(self) -> list[str]:
        return [m for m, _ in self.events]


@pytest.fixture
def fake() -> Iterator[FakeRoboflow]:
    server = FakeRoboflow(api_key=KEY, model_id=MODEL)
    yield server
    server.close()


def make_router(
    fake: FakeRoboflow | None,
    *,
    mode: str = "auto",
    local: Detector | None = None,
    with_local: bool = True,
    clock: FakeClock | None = None,
    on_mode_change: ModeLog | None = None,
    class_map: dict[str, str] | None = None,
    retry_delays: tuple[float, ...] = (0.05, 0.1),
    **serverless: Any,
) -> Router:
    opts: dict[str, Any] = dict(
        api_url=fake.url if fake else "http://127.0.0.1:9",
        model_id=MODEL,
        api_key=Secret(KEY),
        connect_timeout_s=1.0,
        timeout_s=0.4,
        probe_interval_s=10.0,
        probe_max_s=40.0,
    )
    opts.update(serverless)
    s = InferenceSettings(
        mode=mode,  # type: ignore[arg-type]
        serverless=ServerlessSettings(**opts),
        local=LocalSettings(class_map=class_map or {}),
    )
    remote = (
        ServerlessClient(s.serverless, confidence=s.confidence, overlap=s.overlap, max_detections=s.max_detections)
        if mode != "local"
        else None
    )
    if local is None and with_local:
        local = BlobDetector()
    return Router(
        s,
        local=local,
        remote=remote,
        on_mode_change=on_mode_change,
        clock=clock or time.monotonic,
        retry_delays=retry_delays,
        local_model_id="blob-detector",
    )


def frame_of(
    camera: str,
    image: NDArray[np.uint8] | None,
    frame_hw: tuple[int, int] | None = None,
    jpeg: bytes | None = None,
) -> Frame:
    """A frame as a camera hands it out: ``image`` decoded (possibly reduced from ``frame_hw``), or None
    with its ``jpeg`` only."""
    return Frame(camera, 1, time.time(), image, 0, frame_hw or (0, 0), jpeg)


def decode_policy(router: Router) -> DecodePolicy:
    """The decode policy the daemon builds from a router's parts (the client only where the router uses it:
    the daemon makes none in local mode)."""
    local = router._local
    remote = router._remote if router._policy.use_remote else None
    return DecodePolicy(
        model_hw=None if local is None else local.needed_hw,
        upload_hw=None if remote is None else remote.upload_hw,
        change_gate=router._s.change_gate > 0,
        hosted=lambda: router.mode == "serverless",
    )


def classes(outcome: Outcome) -> list[str]:
    return sorted(p["class"] for p in outcome.api["predictions"])


def assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text)
        assert "RouterSecret" not in str(text)


# --------------------------------------------------------------------------- healthy


def test_serverless_when_healthy(fake: FakeRoboflow) -> None:
    router = make_router(fake)
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "serverless"
    assert out.fallback_reason is None
    assert out.latency_ms > 0
    assert classes(out) == sorted(CLASS_NAMES)
    st = router.stats()
    assert st["mode"] == "serverless" and st["remote_ok"] == 1 and st["local_ok"] == 0
    assert router.latency["serverless"].count == 1  # the one record of latency (health reads it)
    router.close()


def test_both_sides_give_the_same_schema_and_classes(fake: FakeRoboflow) -> None:
    router = make_router(fake)
    image = draw_scene()
    remote = router.infer(frame_of("cam0", image))
    fake.set_fault("500")
    local = router.infer(frame_of("cam0", image))
    assert (remote.source, local.source) == ("serverless", "local")
    assert set(remote.api) == set(local.api) == {"inference_id", "time", "image", "predictions"}
    assert remote.api["image"] == local.api["image"]
    assert classes(remote) == classes(local)
    for a, b in zip(
        sorted(remote.api["predictions"], key=lambda p: p["class"]),
        sorted(local.api["predictions"], key=lambda p: p["class"]),
        strict=True,
    ):
        assert set(a) == set(b)
        assert a["x"] == pytest.approx(b["x"], abs=2) and a["y"] == pytest.approx(b["y"], abs=2)
    router.close()


def test_class_map_gives_hosted_names(fake: FakeRoboflow, caplog: pytest.LogCaptureFixture) -> None:
    local = BlobDetector(["r", "g", "b"])
    router = make_router(fake, local=local, class_map={"r": "red", "g": "green", "b": "blue"})
    image = draw_scene()
    assert classes(router.infer(frame_of("cam0", image))) == sorted(CLASS_NAMES)
    fake.set_fault("500")
    assert classes(router.infer(frame_of("cam0", image))) == sorted(CLASS_NAMES)
    assert "unknown_remote_classes" not in router.stats()
    router.close()

    unmapped = make_router(fake, local=BlobDetector(["r", "g", "b"]))
    fake.clear_fault()
    with caplog.at_level(logging.WARNING):
        unmapped.infer(frame_of("cam0", image))
    assert "class_map" in caplog.text
    assert unmapped.stats()["unknown_remote_classes"] == sorted(CLASS_NAMES)
    unmapped.close()


def test_local_mode_never_calls_out(fake: FakeRoboflow) -> None:
    router = make_router(fake, mode="local")
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "local" and out.fallback_reason is None
    assert classes(out) == sorted(CLASS_NAMES)
    assert router.mode == "local"
    assert fake.calls() == 0
    router.close()


# --------------------------------------------------------------------------- every fault in auto mode


FAULTS = ["stopped", "hang", "slow", "500", "503", "429", "403", "html", "truncated", "not_api_json", "reset", "tls"]


@pytest.mark.parametrize("fault", FAULTS)
def test_auto_mode_fault_still_gives_a_result(fake: FakeRoboflow, fault: str) -> None:
    modes = ModeLog()
    extra: dict[str, Any] = {}
    if fault == "tls":
        extra["api_url"] = fake.url.replace("http://", "https://")
    router = make_router(fake, on_mode_change=modes, **extra)
    if fault == "stopped":
        fake.stop()
    elif fault != "tls":
        fake.set_fault(fault, slow_s=4.0)
    image = draw_scene()
    t0 = time.perf_counter()
    out = router.infer(frame_of("cam0", image))
    # timeout 0.4 s, then local at once (measured <= 0.45 s loaded); waiting for the slow answer would take 4 s
    assert time.perf_counter() - t0 < 3.0
    assert out.source == "local"
    assert classes(out) == sorted(CLASS_NAMES)  # an outage never looks like "no objects"
    assert out.fallback_reason
    expected_mode = "auth_error" if fault == "403" else "local"
    assert router.mode == expected_mode
    assert modes.modes == [expected_mode]
    st = router.stats()
    assert st["mode"] == expected_mode
    assert st["fallbacks"] == 1 and st["failed_over"] == 1 and sum(st["remote_failed"].values()) == 1
    assert_no_key(out.fallback_reason, modes.events, json.dumps(st))
    # the next frame goes straight to the local model, no call
    calls = fake.calls()
    out2 = router.infer(frame_of("cam0", image))
    assert out2.source == "local" and fake.calls() == calls
    router.close()


def test_slow_answer_within_timeout_is_served_remotely(fake: FakeRoboflow) -> None:
    router = make_router(fake, timeout_s=5.0)
    fake.set_fault("slow", slow_s=2.0)
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "serverless" and out.latency_ms >= 2000
    assert router.mode == "serverless"
    router.close()


def test_fault_kinds_are_counted(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    router = make_router(fake, clock=clock, probe_interval_s=1.0, probe_max_s=1.0)
    for fault in ("500", "429", "html", "truncated"):
        fake.set_fault(fault, retry_after=None)
        clock.advance(1.5)
        assert router.infer(frame_of("cam0", draw_scene())).source == "local"
    assert router.stats()["remote_failed"] == {"http": 1, "rate_limited": 1, "bad_response": 2}
    router.close()


# --------------------------------------------------------------------------- probing


def test_probe_backoff_and_return(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    modes = ModeLog()
    router = make_router(fake, clock=clock, on_mode_change=modes, probe_interval_s=10.0, probe_max_s=40.0)
    image = draw_scene()
    fake.set_fault("reset")  # an outage (a 5xx on every call for a minute would be a configuration error)
    assert router.infer(frame_of("cam0", image)).source == "local"
    assert fake.calls() == 1 and router.mode == "local"

    def frame_after(dt: float) -> Outcome:
        clock.advance(dt)
        return router.infer(frame_of("cam0", image))

    # backoff 10 -> 20 -> 40 -> 40: no call before each interval has passed, one probe when it has
    for interval in (10.0, 20.0, 40.0, 40.0):
        calls = fake.calls()
        assert frame_after(interval - 0.5).source == "local"
        assert fake.calls() == calls
        assert router.stats()["probe"]["next_in_s"] == pytest.approx(0.5)
        assert frame_after(0.6).source == "local"  # the probe: a real frame, failed, run locally
        assert fake.calls() == calls + 1
    assert router.stats()["probe"]["interval_s"] == 40.0
    assert router.stats()["probes"] == 4

    fake.clear_fault()
    assert frame_after(39.0).source == "local"
    out = frame_after(1.1)
    assert out.source == "serverless" and out.fallback_reason is None
    assert router.mode == "serverless"
    assert modes.modes == ["local", "serverless"]
    assert "again" in modes.events[-1][1]
    # back to normal: every frame remote, and the backoff starts again at probe_interval_s
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    fake.set_fault("500")
    router.infer(frame_of("cam0", image))
    assert router.stats()["probe"]["interval_s"] == 10.0
    st = router.stats()
    assert st["probes_ok"] == 1 and st["fallbacks"] == 2
    router.close()


def test_return_to_serverless_within_the_probe_interval(fake: FakeRoboflow) -> None:
    clock = FakeClock()  # the router's clock: frames 20 ms apart however slowly this machine runs them
    router = make_router(fake, clock=clock, probe_interval_s=0.3, probe_max_s=2.0)
    image = draw_scene()
    fake.stop()
    assert router.infer(frame_of("cam0", image)).source == "local"
    fake.start()
    t0 = clock()
    sources = []
    while clock() - t0 < 3.0:
        out = router.infer(frame_of("cam0", image))
        sources.append(out.source)
        if out.source == "serverless":
            break
        clock.advance(0.02)
    back_after = clock() - t0
    assert sources[-1] == "serverless"
    assert back_after < 0.3 + 0.2
    assert fake.calls() == 1  # exactly one call: the probe (the refused one never reached the server)
    router.close()


def test_one_probe_at_a_time(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    router = make_router(fake, clock=clock, timeout_s=1.0, probe_interval_s=5.0)
    image = draw_scene()
    fake.set_fault("500")
    router.infer(frame_of("cam0", image))
    fake.set_fault("hang")
    clock.advance(6.0)
    probe_out: list[Outcome] = []
    probe = threading.Thread(target=lambda: probe_out.append(router.infer(frame_of("cam0", image))))
    probe.start()
    deadline = time.monotonic() + 10  # returns as soon as the probe's call arrives (~ms)
    while fake.calls() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert router.stats()["probe"]["in_flight"]
    for _ in range(5):  # meanwhile, frames go local without calls
        assert router.infer(frame_of("cam0", image)).source == "local"
    assert fake.calls() == 2
    probe.join()
    assert probe_out[0].source == "local" and probe_out[0].latency_ms >= 1000
    assert not router.stats()["probe"]["in_flight"]
    fake.clear_fault()
    router.close()


@pytest.mark.parametrize("fault", ["429", "503"])
def test_retry_after_is_honoured(fake: FakeRoboflow, fault: str) -> None:
    clock = FakeClock()
    router = make_router(fake, clock=clock, probe_interval_s=1.0, probe_max_s=2.0)
    image = draw_scene()
    fake.set_fault(fault, retry_after="30")
    assert router.infer(frame_of("cam0", image)).source == "local"
    fake.clear_fault()
    for _ in range(29):
        clock.advance(1.0)
        assert router.infer(frame_of("cam0", image)).source == "local"
    assert fake.calls() == 1
    clock.advance(1.1)
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    assert fake.calls() == 2
    router.close()


def test_403_is_a_configuration_error(fake: FakeRoboflow, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    modes = ModeLog()
    router = make_router(fake, clock=clock, on_mode_change=modes, probe_interval_s=10.0, probe_max_s=30.0)
    image = draw_scene()
    fake.set_fault("403")
    with caplog.at_level(logging.DEBUG):
        out = router.infer(frame_of("cam0", image))
    assert out.source == "local" and classes(out) == sorted(CLASS_NAMES)
    assert router.mode == "auth_error"
    st = router.stats()
    assert st["mode"] == "auth_error" and "refused the key" in st["reason"]
    assert "not authorized" in st["reason"]
    assert any(r.levelno == logging.ERROR and "refused the key" in r.getMessage() for r in caplog.records)
    assert modes.modes == ["auth_error"]
    # a configuration error is probed every probe_max_s, not after probe_interval_s
    clock.advance(10.1)
    router.infer(frame_of("cam0", image))
    assert fake.calls() == 1
    # a probe failing for another reason doesn't hide the auth error
    fake.set_fault("500")
    clock.advance(20.0)
    router.infer(frame_of("cam0", image))
    assert router.mode == "auth_error" and fake.calls() == 2
    # key fixed server-side: the next probe brings it back
    fake.clear_fault()
    clock.advance(30.1)
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    assert modes.modes == ["auth_error", "serverless"]
    assert_no_key(caplog.text, modes.events, json.dumps(router.stats()))
    router.close()


# --------------------------------------------------------------------------- cost control


def test_per_minute_cap_per_camera(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    router = make_router(fake, clock=clock, max_calls_per_minute=3)
    image = draw_scene()
    sources = []
    for _ in range(5):
        clock.advance(1.0)
        sources.append(router.infer(frame_of("cam0", image)))
    assert [o.source for o in sources] == ["serverless"] * 3 + ["local"] * 2
    assert sources[-1].fallback_reason == "capped_minute"
    assert classes(sources[-1]) == sorted(CLASS_NAMES)
    assert router.infer(frame_of("cam1", image)).source == "serverless"  # another camera has its own budget
    st = router.stats()
    assert st["capped_minute"] == 2 and st["saved"]["remote_calls_capped"] == 2
    assert st["cameras"]["cam0"]["calls_last_minute"] == 3 and st["cameras"]["cam0"]["capped_minute"] == 2
    assert st["mode"] == "serverless"  # a cap is not an outage
    # sliding window: the first call leaves the window 60 s after it was made
    clock.advance(55.5)  # 59.5 s after the first call
    assert router.infer(frame_of("cam0", image)).source == "local"
    clock.advance(1.0)
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    assert fake.calls() == 5
    router.close()


def test_per_day_cap(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    router = make_router(fake, clock=clock, max_calls_per_day=4)
    image = draw_scene()
    out = []
    for _ in range(6):
        clock.advance(600.0)
        out.append(router.infer(frame_of("cam0", image)).source)
    assert out == ["serverless"] * 4 + ["local"] * 2
    clock.advance(86400 - 6 * 600 + 600 - 1)  # 1 s short of a day after the first call
    assert router.infer(frame_of("cam0", image)).source == "local"
    clock.advance(2.0)
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    st = router.stats()
    assert st["capped_day"] == 3 and st["cameras"]["cam0"]["calls_today"] == 1
    router.close()


def test_cap_also_bounds_probes(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    router = make_router(fake, clock=clock, max_calls_per_minute=1, probe_interval_s=1.0)
    image = draw_scene()
    fake.set_fault("500")
    router.infer(frame_of("cam0", image))
    fake.clear_fault()
    clock.advance(2.0)
    assert router.infer(frame_of("cam0", image)).source == "local"  # probe due, but the camera is at its cap
    assert fake.calls() == 1
    clock.advance(59.0)
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    router.close()


def test_change_gate(fake: FakeRoboflow) -> None:
    router = make_router(fake, change_gate=3.0)
    image = draw_scene()
    rng = np.random.default_rng(0)
    noisy = np.clip(image.astype(np.int16) + rng.integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    moved = draw_scene(shift=40)
    assert router.admit(frame_of("cam0", image))
    assert not router.admit(frame_of("cam0", image))
    assert not router.admit(frame_of("cam0", noisy))
    assert router.admit(frame_of("cam1", image))  # each camera compares with its own last frame
    assert router.admit(frame_of("cam0", moved))
    assert not router.admit(frame_of("cam0", moved))
    assert router.admit(frame_of("cam0", image))
    st = router.stats()
    assert st["gated"] == 3 and st["saved"]["frames_gated"] == 3 and st["admitted"] == 4
    assert st["cameras"]["cam0"]["gated"] == 3
    assert fake.calls() == 0
    router.close()


def test_no_gate_by_default(fake: FakeRoboflow) -> None:
    router = make_router(fake)
    image = draw_scene()
    assert all(router.admit(frame_of("cam0", image)) for _ in range(3))
    assert router.stats()["gated"] == 0
    router.close()


# --------------------------------------------------------------------------- serverless mode (no fallback)


def test_serverless_mode_retries_a_transient_failure(fake: FakeRoboflow) -> None:
    router = make_router(fake, mode="serverless", with_local=False)
    fake.set_fault("500", times=1)
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "serverless" and classes(out) == sorted(CLASS_NAMES)
    assert fake.calls() == 2 and router.mode == "serverless"
    st = router.stats()
    assert st["remote_failed"] == {"http": 1} and st["retries"] == 1 and st["frames_failed"] == 0
    router.close()


def test_serverless_mode_outage_fails_loudly_then_recovers(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    modes = ModeLog()
    router = make_router(
        fake, mode="serverless", with_local=False, clock=clock, on_mode_change=modes, probe_interval_s=5.0
    )
    image = draw_scene()
    fake.set_fault("500")
    with pytest.raises(FrameFailed) as info:
        router.infer(frame_of("cam0", image))
    assert info.value.kind == "http" and info.value.attempts == 3
    assert fake.calls() == 3
    assert router.mode == "unavailable" and modes.modes == ["unavailable"]
    # during the outage: fail at once, no call
    t0 = time.perf_counter()
    with pytest.raises(FrameFailed) as info:
        router.infer(frame_of("cam0", image))
    # at once: no call (counted below), nothing to wait for; takes well under 1 ms, 0.3 s is room for a loaded machine
    assert info.value.kind == "unavailable" and time.perf_counter() - t0 < 0.3
    assert fake.calls() == 3
    st = router.stats()
    assert st["frames_failed"] == 2 and st["remote_failed"] == {"http": 3}
    # the probe frame: one attempt, no retries
    clock.advance(5.1)
    with pytest.raises(FrameFailed):
        router.infer(frame_of("cam0", image))
    assert fake.calls() == 4
    fake.clear_fault()
    clock.advance(10.1)
    assert router.infer(frame_of("cam0", image)).source == "serverless"
    assert modes.modes == ["unavailable", "serverless"]
    assert_no_key(str(info.value), json.dumps(router.stats()))
    router.close()


def test_serverless_mode_no_retry_on_403_or_long_retry_after(fake: FakeRoboflow) -> None:
    router = make_router(fake, mode="serverless", with_local=False)
    fake.set_fault("403")
    with pytest.raises(FrameFailed) as info:
        router.infer(frame_of("cam0", draw_scene()))
    assert info.value.kind == "auth" and fake.calls() == 1 and router.mode == "auth_error"
    router.close()

    router = make_router(fake, mode="serverless", with_local=False)
    fake.set_fault("429", retry_after="60")
    with pytest.raises(FrameFailed) as info:
        router.infer(frame_of("cam0", draw_scene()))
    assert info.value.kind == "rate_limited" and fake.calls() == 2
    router.close()


def test_serverless_mode_caps_skip_frames(fake: FakeRoboflow) -> None:
    clock = FakeClock()
    router = make_router(fake, mode="serverless", with_local=False, clock=clock, max_calls_per_minute=2)
    image = draw_scene()
    for _ in range(2):
        assert router.admit(frame_of("cam0", image))
        assert router.infer(frame_of("cam0", image)).source == "serverless"
    assert not router.admit(frame_of("cam0", image))
    assert router.stats()["capped_minute"] == 1
    with pytest.raises(FrameFailed) as info:  # if a worker calls anyway
        router.infer(frame_of("cam0", image))
    assert info.value.kind == "capped_minute"
    router.close()


# --------------------------------------------------------------------------- frames decoded at a reduced size

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx"


@pytest.fixture(scope="module")
def demo_model() -> OnnxModel:
    return OnnxModel(DEMO_MODEL, threads=2)


class ReducedBlobDetector:
    """A local side that takes reduced decodes: blobs found in the pixels it gets, scaled to ``frame_hw``.

    ``need(frame_hw)`` is its :meth:`needed_hw`; every call's (image size, frame_hw) is recorded."""

    def __init__(self, need: Callable[[tuple[int, int]], tuple[int, int]]) -> None:
        self.class_names = list(CLASS_NAMES)
        self._need = need
        self.calls: list[tuple[tuple[int, int], tuple[int, int] | None]] = []

    def needed_hw(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return self._need(frame_hw)

    def detect(
        self,
        image_bgr: NDArray[np.uint8],
        *,
        confidence: float,
        overlap: float,
        max_detections: int,
        frame_hw: tuple[int, int] | None = None,
    ) -> Detections:
        h, w = image_bgr.shape[:2]
        self.calls.append(((h, w), frame_hw))
        fh, fw = frame_hw or (h, w)
        sx, sy = fw / w, fh / h
        blobs = [b for b in find_blobs(image_bgr) if b.confidence > confidence][:max_detections]
        if not blobs:
            return Detections.empty()
        return Detections(
            boxes_xyxy=np.array([b.box_xyxy for b in blobs], np.float32) * np.array([sx, sy, sx, sy], np.float32),
            confidence=np.array([b.confidence for b in blobs], np.float32),
            class_id=np.array([b.class_id for b in blobs], np.int64),
            polygons=[(b.polygon + 0.5) * np.array([sx, sy], np.float32) - 0.5 for b in blobs],
        )


def quarter(hw: tuple[int, int]) -> tuple[int, int]:
    return -(-hw[0] // 4), -(-hw[1] // 4)


def tall_strip(hw: tuple[int, int]) -> tuple[int, int]:
    return hw[0] // 2, hw[1] // 8  # needs more height than a 640 upload, less width


def jpeg_decodes(image: NDArray[np.uint8], factor: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The full decode and the 1/``factor`` decode of the image's JPEG."""
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    return cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.imdecode(jpeg, flag)


def assert_same_predictions(got: dict[str, Any], want: dict[str, Any], tol: float) -> None:
    by_class = {p["class"]: p for p in want["predictions"]}
    assert sorted(p["class"] for p in got["predictions"]) == sorted(by_class)
    assert len(by_class) == 3
    for p in got["predictions"]:
        q = by_class[p["class"]]
        for k in ("x", "y", "width", "height"):
            assert p[k] == pytest.approx(q[k], abs=tol), (p["class"], k)


@pytest.mark.parametrize(
    ("mode", "local", "max_side", "frame_hw", "expected"),
    [
        ("local", "demo", 0, (1080, 1920), (234, 416)),  # the letterbox content
        ("local", "demo", 0, (720, 1280), (234, 416)),
        ("local", "demo", 0, (1920, 1080), (416, 234)),
        ("local", "quarter", 0, (1080, 1920), (270, 480)),
        ("auto", "demo", 0, (1080, 1920), (1080, 1920)),  # uploads go at full size
        ("auto", "demo", 640, (1080, 1920), (360, 640)),  # the upload is the larger need
        ("auto", "demo", 320, (1080, 1920), (234, 416)),  # the local model is
        ("auto", "strip", 640, (1080, 1920), (540, 640)),  # each axis its own maximum
        ("auto", "none", 640, (1080, 1920), (360, 640)),
        ("serverless", "demo", 640, (720, 1280), (360, 640)),
        ("serverless", "none", 0, (720, 1280), (720, 1280)),
    ],
)
def test_needed_hw(
    demo_model: OnnxModel,
    mode: str,
    local: str,
    max_side: int,
    frame_hw: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    detectors: dict[str, Detector | None] = {
        "demo": demo_model,
        "quarter": ReducedBlobDetector(quarter),
        "strip": ReducedBlobDetector(tall_strip),
        "none": None,
    }
    detector = detectors[local]
    router = make_router(None, mode=mode, local=detector, with_local=detector is not None, upload_max_side=max_side)
    need = decode_policy(router).decode_hw(frame_hw)
    assert need == expected
    parts = [] if detector is None else [detector.needed_hw(frame_hw)]
    if mode != "local":
        client = ServerlessClient(
            ServerlessSettings(model_id=MODEL, api_key=Secret(KEY), upload_max_side=max_side),
            confidence=40,
            overlap=30,
            max_detections=300,
        )
        parts.append(client.upload_hw(frame_hw))
        client.close()
    assert need == (max(p[0] for p in parts), max(p[1] for p in parts))
    router.close()


def test_needed_hw_of_a_local_mode_router_leaves_the_client_out(demo_model: OnnxModel) -> None:
    serverless = ServerlessSettings(model_id=MODEL, api_key=Secret(KEY), upload_max_side=0)
    remote = ServerlessClient(serverless, confidence=40, overlap=30, max_detections=300)
    router = Router(InferenceSettings(mode="local", serverless=serverless), local=demo_model, remote=remote)
    assert decode_policy(router).decode_hw((1080, 1920)) == (
        234,
        416,
    )  # not the full-size upload: the API is never used
    router.close()


def test_local_infer_passes_frame_hw_and_answers_in_frame_pixels() -> None:
    local = ReducedBlobDetector(quarter)
    router = make_router(None, mode="local", local=local)
    full, reduced = jpeg_decodes(draw_scene(1920, 1080), 4)
    want = router.infer(frame_of("cam0", full))
    got = router.infer(frame_of("cam0", reduced, frame_hw=(1080, 1920)))
    plain = router.infer(frame_of("cam0", reduced))
    assert local.calls == [((1080, 1920), (1080, 1920)), ((270, 480), (1080, 1920)), ((270, 480), (270, 480))]
    assert got.source == want.source == "local"
    assert got.api["image"] == want.api["image"] == {"width": 1920, "height": 1080}
    assert plain.api["image"] == {"width": 480, "height": 270}
    assert_same_predictions(got.api, want.api, tol=12.0)  # 3 pixels of the 1/4 decode
    assert max(p["x"] + p["width"] / 2 for p in got.api["predictions"]) > 480
    router.close()


def test_local_infer_with_the_demo_model_on_a_reduced_decode(demo_model: OnnxModel) -> None:
    router = make_router(None, mode="local", local=demo_model)
    frame_hw = (1080, 1920)
    factor = reduction_factor(frame_hw, decode_policy(router).decode_hw(frame_hw))
    assert factor == 4
    full, reduced = jpeg_decodes(draw_scene(1920, 1080), factor)
    want = router.infer(frame_of("cam0", full))
    got = router.infer(frame_of("cam0", reduced, frame_hw=frame_hw))
    assert got.api["image"] == want.api["image"] == {"width": 1920, "height": 1080}
    assert_same_predictions(got.api, want.api, tol=14.0)  # 3 pixels of the model's 416 input
    points = [pt for p in got.api["predictions"] for pt in p["points"]]
    assert max(pt["x"] for pt in points) > 480 and max(pt["y"] for pt in points) > 270  # frame pixels
    router.close()


def test_auto_infer_with_frame_hw_uploads_the_reduced_image_and_falls_back_in_frame_pixels(
    fake: FakeRoboflow,
) -> None:
    local = ReducedBlobDetector(quarter)
    router = make_router(fake, local=local)
    full, reduced = jpeg_decodes(draw_scene(1920, 1080), 4)
    want = router.infer(frame_of("cam0", full))
    assert fake.requests[-1].image_wh == (1920, 1080)
    remote = router.infer(frame_of("cam0", reduced, frame_hw=(1080, 1920)))
    assert remote.source == "serverless"
    assert fake.requests[-1].image_wh == (480, 270)  # a reduced decode goes as it is
    assert remote.api["image"] == want.api["image"] == {"width": 1920, "height": 1080}
    assert_same_predictions(remote.api, want.api, tol=12.0)
    fake.set_fault("500")
    fallback = router.infer(frame_of("cam0", reduced, frame_hw=(1080, 1920)))
    assert fallback.source == "local"
    assert local.calls == [((270, 480), (1080, 1920))]
    assert fallback.api["image"] == {"width": 1920, "height": 1080}
    assert_same_predictions(fallback.api, want.api, tol=12.0)
    router.close()


def test_serverless_retry_keeps_frame_hw(fake: FakeRoboflow) -> None:
    router = make_router(fake, mode="serverless", with_local=False)
    full, reduced = jpeg_decodes(draw_scene(1920, 1080), 4)
    want = router.infer(frame_of("cam0", full))
    fake.set_fault("500", times=1)
    out = router.infer(frame_of("cam0", reduced, frame_hw=(1080, 1920)))
    assert out.source == "serverless" and router.stats()["retries"] == 1
    assert [r.image_wh for r in fake.requests[-2:]] == [(480, 270), (480, 270)]
    assert out.api["image"] == {"width": 1920, "height": 1080}
    assert_same_predictions(out.api, want.api, tol=12.0)
    router.close()


def test_cameras_jpeg_goes_to_the_api_and_through_a_retry(fake: FakeRoboflow) -> None:
    router = make_router(fake, mode="serverless", with_local=False)
    image = draw_scene()
    ok, camera_jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    digest = hashlib.sha256(base64.b64encode(camera_jpeg.tobytes())).hexdigest()
    fake.set_fault("500", times=1)
    out = router.infer(frame_of("cam0", image, jpeg=camera_jpeg.tobytes()))
    assert out.source == "serverless" and router.stats()["retries"] == 1
    assert [r.body_sha256 for r in fake.requests[-2:]] == [digest, digest]
    assert classes(out) == sorted(CLASS_NAMES)
    router.close()


def test_decode_needed_only_when_the_pixels_may_be_looked_at(fake: FakeRoboflow) -> None:
    """Frames need decoding unless they go to the hosted API as the camera's own JPEG."""
    hd = (720, 1280)
    router = make_router(fake)  # auto, hosted in use, no gate, no downscale
    assert decode_policy(router).decode_ahead(hd) is False
    fake.set_fault("500")
    router.infer(frame_of("cam0", draw_scene()))  # fails over: frames go local now
    assert router.mode == "local" and decode_policy(router).decode_ahead(hd) is True
    router.close()
    assert decode_policy(make_router(fake, upload_max_side=640)).decode_ahead(hd) is True  # the upload is a resize
    assert (
        decode_policy(make_router(fake, upload_max_side=640)).decode_ahead((480, 640)) is False
    )  # ... but not this one
    assert decode_policy(make_router(None, mode="local")).decode_ahead(hd) is True
    gated = make_router(fake)
    object.__setattr__(gated._s, "change_gate", 2.0)
    assert decode_policy(gated).decode_ahead(hd) is True  # the change gate looks at every frame


def test_an_undecoded_frame_is_decoded_when_it_goes_local(fake: FakeRoboflow) -> None:
    """A frame the capture left as its JPEG: uploaded as it is; on a failure its JPEG is decoded (at the
    reduction the local model needs) and run locally, in frame pixels, with the same result."""
    local = ReducedBlobDetector(quarter)
    router = make_router(fake, local=local)
    scene = draw_scene(1920, 1080)
    ok, buf = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    jpeg = buf.tobytes()
    nothing = None  # left undecoded by the capture: the frame is its JPEG
    remote = router.infer(frame_of("cam0", nothing, (1080, 1920), jpeg))
    assert remote.source == "serverless" and fake.requests[-1].image_wh == (1920, 1080)
    fake.set_fault("500")
    fallback = router.infer(frame_of("cam0", nothing, (1080, 1920), jpeg))
    assert fallback.source == "local" and fallback.api["image"] == {"width": 1920, "height": 1080}
    assert local.calls == [((270, 480), (1080, 1920))]  # decoded at 1/4, what the model needs
    assert_same_predictions(fallback.api, remote.api, tol=12.0)
    with pytest.raises(FrameFailed, match="could not be decoded"):
        router.infer(frame_of("cam0", nothing, (1080, 1920), b"\xff\xd8 not a picture"))
    assert router.stats()["frames_failed"] == 1
    router.close()


# --------------------------------------------------------------------------- concurrency and secrecy


def test_concurrent_frames_through_an_outage(fake: FakeRoboflow) -> None:
    local = BlobDetector()
    router = make_router(fake, local=local, probe_interval_s=0.2, timeout_s=0.3, max_in_flight=4)
    image = draw_scene()
    results: list[Outcome] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(12):
            try:
                out = router.infer(frame_of("cam0", image))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                continue
            with lock:
                results.append(out)
            time.sleep(0.01)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # the outage begins once a frame went serverless, not after a guessed time
    while not any(o.source == "serverless" for o in list(results)) and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.set_fault("hang")
    time.sleep(0.4)
    while not any(o.source == "local" for o in list(results)) and time.monotonic() < deadline:
        time.sleep(0.01)  # and lasts until a frame has gone local
    fake.set_fault("500")
    time.sleep(0.2)
    fake.clear_fault()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 48
    assert all(classes(o) == sorted(CLASS_NAMES) for o in results)
    assert {o.source for o in results} == {"serverless", "local"}
    assert not local.overlapped  # local calls were serialised
    router.close()


def test_the_key_never_shows(fake: FakeRoboflow, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    modes = ModeLog()
    router = make_router(fake, clock=clock, on_mode_change=modes, probe_interval_s=1.0, probe_max_s=1.0)
    image = draw_scene()
    texts: list[object] = []
    for fault in ("none", "500", "403", "hang", "429", "html", "truncated", "stopped", "none"):
        if fault == "stopped":
            fake.stop()
        else:
            fake.start()
            fake.set_fault(fault)
        clock.advance(2.0)
        out = router.infer(frame_of("cam0", image))
        texts += [out.fallback_reason, encode(out.api).decode()]
    texts += [json.dumps(router.stats()), modes.events, caplog.text]
    sless = make_router(fake, mode="serverless", with_local=False)
    fake.set_fault("500")
    with pytest.raises(FrameFailed) as info:
        sless.infer(frame_of("cam0", image))
    texts += [str(info.value), repr(info.value), json.dumps(sless.stats())]
    assert "api_key=***" in caplog.text
    assert_no_key(*texts)
    router.close()
    sless.close()


def test_constructor_checks() -> None:
    s = InferenceSettings(mode="local")
    with pytest.raises(ValueError):
        Router(s, local=None, remote=None)
    router = Router(InferenceSettings(mode="auto"), local=BlobDetector(), remote=None)
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "local" and out.fallback_reason is None and router.mode == "local"
    router.close()


class GateDetector(BlobDetector):
    """Counts how many calls are inside ``detect`` at once; each call waits a little for company."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most = 0
        self._count = threading.Lock()

    def detect(self, image_bgr: NDArray[np.uint8], **kw: Any) -> Detections:
        with self._count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and self.most < 2:
                time.sleep(0.005)
            blobs = [b for b in find_blobs(image_bgr) if b.confidence > kw["confidence"]]
            return Detections(
                boxes_xyxy=np.array([b.box_xyxy for b in blobs], np.float32).reshape(-1, 4),
                confidence=np.array([b.confidence for b in blobs], np.float32),
                class_id=np.array([b.class_id for b in blobs], np.int64),
                polygons=[b.polygon for b in blobs],
            )
        finally:
            with self._count:
                self.inside -= 1


@pytest.mark.parametrize(("slots", "most"), [(1, 1), (2, 2)])
def test_local_slots_bound_how_many_frames_run_locally_at_once(slots: int, most: int) -> None:
    local = GateDetector()
    router = Router(InferenceSettings(mode="local"), local=local, remote=None, local_slots=slots)
    image = draw_scene()
    outcomes: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(router.infer(frame_of("cam0", image)))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(outcomes) == 4 and all(o.source == "local" and o.api["predictions"] for o in outcomes)
    assert local.most == most
    router.close()


def test_a_slow_hosted_api_never_builds_a_queue(fake: FakeRoboflow) -> None:
    """At most max_in_flight hosted calls per camera, ever: the frames beyond them go local at once."""
    router = make_router(fake, timeout_s=5.0, max_in_flight=2)
    fake.set_fault("slow", slow_s=1.5)  # slower than the frames, well inside the timeout
    image = draw_scene()
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        outs = list(pool.map(lambda _: router.infer(frame_of("cam0", image)), range(6)))
    assert fake.calls() == 2  # two calls, the other four frames did not wait for a slot
    assert sorted(o.source for o in outs) == ["local"] * 4 + ["serverless"] * 2
    assert {o.fallback_reason for o in outs if o.source == "local"} == {"hosted_busy"}
    assert router.stats()["hosted_busy"] == 4 and router.mode == "serverless"
    fake.clear_fault()
    assert router.infer(frame_of("cam0", image)).source == "serverless"  # the slots came back
    router.close()


def test_local_results_name_the_local_model(fake: FakeRoboflow) -> None:
    router = make_router(fake)
    fake.set_fault("reset")
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "local" and out.fallback_reason == "connect" and out.model_id == "blob-detector"
    assert router.problems() and "unreachable since" in router.problems()[0]
    fake.clear_fault()
    router.close()
    hosted = make_router(fake).infer(frame_of("cam0", draw_scene()))
    assert hosted.source == "serverless" and hosted.model_id == MODEL


# --------------------------------------------------------------------------- a runtime change of mode (a command)


def test_set_mode_switches_the_way_and_refuses_missing_parts(fake: FakeRoboflow) -> None:
    modes = ModeLog()
    router = make_router(fake, on_mode_change=modes)
    assert router.modes() == ("auto", "serverless", "local") and router.configured_mode == "auto"
    assert router.infer(frame_of("cam0", draw_scene())).source == "serverless"
    router.set_mode("local")
    calls = fake.calls()
    out = router.infer(frame_of("cam0", draw_scene()))
    assert out.source == "local" and out.fallback_reason is None and fake.calls() == calls
    assert modes.modes == ["local"] and router.configured_mode == "local"
    router.set_mode("serverless")
    assert router.infer(frame_of("cam0", draw_scene())).source == "serverless"
    assert modes.modes == ["local", "serverless"] and router.stats()["configured_mode"] == "serverless"
    router.close()

    local_only = make_router(fake, mode="local")
    assert local_only.modes() == ("local",)
    with pytest.raises(ValueError, match="did not load"):
        local_only.set_mode("auto")
    assert local_only.configured_mode == "local"
    local_only.close()
