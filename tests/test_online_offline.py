"""Online/offline end to end: `seg-agent run` as a real process in ``inference.mode: auto`` against the fake
hosted API (a real HTTP server on loopback), a real Mosquitto, real video files.

What is shown: the endpoint dying and coming back mid-video (gap-free frame ids, serverless → local →
serverless, back within the probe interval, the mode changes on the health topic with their reason);
N calls in flight against a slow endpoint still publish in frame order; both sides publish the same keys
for the same frame; a 403 sends frames local and says so loudly; and the API key never shows up in the
log (debug), in any MQTT message, or in any error text.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import cv2
import pytest

from tests.fake_roboflow import CLASS_NAMES, FakeRoboflow, draw_scene
from tests.mosquitto import Mosquitto, Subscriber
from tests.onnx_models import build_yolov8_seg
from tests.test_daemon import BASE, AgentProcess, write_config

KEY = "rfKey7qZ2xW9vB4nM8pLs"  # the workspace key the fake accepts
WRONG_KEY = "rfNope5tY8uI0oP3aS6dF"  # a key it refuses (403)
MODEL_ID = "shapes/3"
LOCAL_MODEL_ID = "test-seg"  # the local model file's name: what local results say in model_id
LOCAL_CLASSES = ["circle", "rectangle", "triangle"]
PROBE_S = 1.0
PREDICTION_KEYS = {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id", "points"}
# Envelope keys that only some messages carry: why a frame went local, and late delivery.
OPTIONAL_ENVELOPE = {"fallback_reason", "replayed"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "test-seg.onnx"
    build_yolov8_seg(path, imgsz=(256, 256), class_names=LOCAL_CLASSES)
    return path


@pytest.fixture
def fake() -> Iterator[FakeRoboflow]:
    server = FakeRoboflow(api_key=KEY, model_id=MODEL_ID)
    yield server
    server.close()


@pytest.fixture
def run_agent() -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(config: Path, key: str = KEY) -> AgentProcess:
        agent = AgentProcess(config, env={"ROBOFLOW_API_KEY": key})
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()


def write_scene_video(path: Path, frames: int, fps: float, width: int = 320, height: int = 240) -> Path:
    """Red, green and blue shapes that move a little from frame to frame (the fake detects them by hue)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    try:
        for i in range(frames):
            writer.write(draw_scene(width, height, shift=(i * 7) % 120 - 60))
    finally:
        writer.release()
    return path


def online_config(
    directory: Path,
    model: Path,
    broker_port: int,
    api_url: str,
    camera: dict[str, Any],
    *,
    serverless: dict[str, Any] | None = None,
    local: dict[str, Any] | None = None,
) -> Path:
    """tests/test_daemon.py's config in mode auto; the key comes from ``${ROBOFLOW_API_KEY}``."""
    inference = {
        "mode": "auto",
        "confidence": 20,
        "serverless": {
            "api_url": api_url,
            "model_id": MODEL_ID,
            "api_key": "${ROBOFLOW_API_KEY}",
            "connect_timeout_s": 1,
            "timeout_s": 2,
            "max_in_flight": 2,
            "probe_interval_s": PROBE_S,
            "probe_max_s": PROBE_S,
            **(serverless or {}),
        },
        "local": {"model": str(model), "threads": 1, **(local or {})},
    }
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, model, broker_port, camera, inference=inference)


def detections(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(f"{BASE}/detections")]


def healths(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(f"{BASE}/health")]


def runs(values: list[str]) -> list[str]:
    """Consecutive repeats collapsed: [a, a, b, a] -> [a, b, a]."""
    out: list[str] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def capture_times(msgs: list[dict[str, Any]]) -> list[float]:
    return [datetime.fromisoformat(m["timestamp"]).timestamp() for m in msgs]


def stop_agent(agent: AgentProcess) -> None:
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log[-4000:]


def assert_key_nowhere(key: str, agent: AgentProcess, sub: Subscriber, *more: str) -> None:
    """The key, plain or URL-encoded, is in no log line, no MQTT message (every topic) and no other text."""
    forms = {key, quote(key, safe=""), quote_plus(key)}
    places: list[tuple[str, str]] = [("agent log", agent.log)]
    places += [(f"MQTT {m.topic}", m.payload.decode("utf-8", "replace")) for m in sub.received()]
    places += [("other", text) for text in more]
    for where, text in places:
        for form in forms:
            assert form not in text, f"the API key leaked into the {where}"


def cmdline(agent: AgentProcess) -> str:
    try:
        return Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_endpoint_dies_and_returns_mid_video(
    tmp_path: Path,
    model_path: Path,
    fake: FakeRoboflow,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_scene_video(tmp_path / "scene.avi", frames=40, fps=20.0)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = online_config(tmp_path, model_path, broker.port, fake.url, {"source": str(video), "fps": 5, "loop": True})
    agent = run_agent(config)

    def count(source: str, start: int = 0) -> int:
        return sum(1 for m in detections(sub)[start:] if m["source"] == source)

    assert sub.wait_until(lambda: count("serverless") >= 3, 60), agent.log[-4000:]
    assert sub.wait_until(lambda: any(h["mode"] == "serverless" for h in healths(sub)), 10)
    process_line = cmdline(agent)

    fake.stop()  # connection refused from now on; open keep-alive connections are cut
    down_at = len(detections(sub))
    # two probe intervals and more: the probes made meanwhile fail
    assert sub.wait_until(lambda: count("local", down_at) >= int(3 * PROBE_S * 5), 60), agent.log[-4000:]
    assert "probe failed" in agent.log

    back_at = len(detections(sub))
    t_back = time.monotonic()
    fake.start()  # same port
    assert sub.wait_until(lambda: count("serverless", back_at) >= 1, 30), agent.log[-4000:]
    # timed where the agent acts, at the endpoint (its first call after the restart: the probe that succeeded),
    # not after the result's trip through the outbox and MQTT
    returned_after_s = min(r.at for r in fake.requests if r.at >= t_back) - t_back
    assert sub.wait_until(lambda: count("serverless", back_at) >= 4, 30)
    stop_agent(agent)

    msgs = detections(sub)
    ids = [m["frame_id"] for m in msgs]
    assert ids == list(range(1, len(ids) + 1)), "gap-free and in order across both switches"
    times = capture_times(msgs)
    assert times == sorted(times)
    assert runs([m["source"] for m in msgs]) == ["serverless", "local", "serverless"]
    # the probe rides on the first frame after the interval (5 fps: <= 0.2 s later), which may wait behind a
    # local inference; 3 s is room for that on a loaded machine
    assert returned_after_s <= PROBE_S + 3.0, f"back to serverless {returned_after_s:.1f} s after the endpoint"
    for m in msgs:
        if m["source"] == "local":  # a short code: the endpoint refused or timed out, or a probe was under way
            assert m["fallback_reason"] in {"connect", "timeout", "probe_in_flight"}, m["fallback_reason"]
            assert m["model_id"] == LOCAL_MODEL_ID
        else:
            assert "fallback_reason" not in m
            assert m["model_id"] == MODEL_ID

    # the mode changes on the (retained, at once on a change) health topic, with the reason
    hs = healths(sub)
    assert runs([h["mode"] for h in hs]) == ["serverless", "local", "serverless"]
    went_local = next(h for h in hs if h["mode"] == "local")
    assert went_local["inference"]["router"]["reason"].startswith("serverless API unavailable: ")
    # the first failure may be a cut response; the probes made while the port is closed are refused
    assert any(
        h["inference"]["router"]["reason"].startswith(f"serverless API unavailable: connect: cannot reach {fake.url}")
        for h in hs
        if h["mode"] == "local"
    )
    back = next(h for h in hs if h["mode"] == "serverless" and hs.index(h) > hs.index(went_local))
    assert "answers again" in back["inference"]["router"]["reason"]
    assert "inference mode is now local" in agent.log and "inference mode is now serverless" in agent.log

    assert "Traceback" not in agent.log
    assert_key_nowhere(KEY, agent, sub, process_line, config.read_text())


def test_n_in_flight_against_a_slow_endpoint_publishes_in_frame_order(
    tmp_path: Path,
    model_path: Path,
    fake: FakeRoboflow,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    fake.set_fault("slow", slow_s=0.3)
    video = write_scene_video(tmp_path / "scene.avi", frames=60, fps=30.0)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = online_config(
        tmp_path,
        model_path,
        broker.port,
        fake.url,
        {"source": str(video), "fps": 10, "loop": True},
        serverless={"max_in_flight": 4, "timeout_s": 5},
    )
    agent = run_agent(config)
    assert sub.wait_until(lambda: len(detections(sub)) >= 30, 90), agent.log[-4000:]
    stop_agent(agent)

    msgs = detections(sub)
    ids = [m["frame_id"] for m in msgs]
    assert ids == list(range(1, len(ids) + 1)), "strictly increasing, no gap"
    times = capture_times(msgs)
    assert all(a < b for a, b in itertools.pairwise(times)), "capture times strictly increasing"
    assert {m["source"] for m in msgs} == {"serverless"}
    assert all(m["latency_ms"] >= 290 for m in msgs), "every call took the endpoint's 0.3 s"
    # the endpoint saw calls overlap: more than one in flight (each is recorded as it arrives, then sleeps 0.3 s)
    starts = sorted(r.at for r in fake.requests)
    overlapping = max(sum(1 for t in starts[i:] if t < s + 0.3) for i, s in enumerate(starts))
    assert overlapping >= 2, "calls were made one at a time"
    assert "Traceback" not in agent.log
    assert_key_nowhere(KEY, agent, sub)


def test_same_frame_has_the_same_keys_from_either_side_and_class_mismatch_is_reported(
    tmp_path: Path,
    model_path: Path,
    fake: FakeRoboflow,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    # Every sampled frame of the file exactly once, in order: frame_id N is the same picture in both runs.
    video = write_scene_video(tmp_path / "scene.avi", frames=30, fps=15.0)
    camera = {"source": str(video), "fps": 5, "loop": False, "realtime": False}
    sub = make_subscriber(broker.port, f"{BASE}/#")

    # Run 1: the hosted API answers every frame; its class names are not the local model's.
    config = online_config(tmp_path / "online", model_path, broker.port, fake.url, camera)
    agent = run_agent(config)
    assert agent.wait(90) == 0, agent.log[-4000:]
    assert sub.wait_until(lambda: sub.payloads(f"{BASE}/status")[-1:] == [b"offline"], 10)
    remote = detections(sub)
    remote_health = healths(sub)[-1]
    assert [m["frame_id"] for m in remote] == list(range(1, 11))
    assert {m["source"] for m in remote} == {"serverless"}
    remote_classes = sorted({p["class"] for m in remote for p in m["predictions"]})
    assert remote_classes and set(remote_classes) <= set(CLASS_NAMES)
    assert remote_health["inference"]["router"]["unknown_remote_classes"] == remote_classes
    for name in remote_classes:  # said once per name, not once per frame
        assert agent.log.count(f"hosted model returned class {name!r}") == 1, name
    log1 = agent.log

    # Run 2: the same frames with the endpoint gone, through the local model, its names mapped to the hosted ones.
    fake.stop()
    config = online_config(
        tmp_path / "offline",
        model_path,
        broker.port,
        fake.url,
        camera,
        local={"class_map": dict(zip(LOCAL_CLASSES, ["green", "red", "blue"], strict=True))},
    )
    agent2 = run_agent(config)
    assert agent2.wait(90) == 0, agent2.log[-4000:]
    assert sub.wait_until(lambda: len(detections(sub)) == 20, 10)
    local = detections(sub)[len(remote) :]
    assert [m["frame_id"] for m in local] == list(range(1, 11))
    assert {m["source"] for m in local} == {"local"}
    assert any(m["predictions"] for m in local), "the test model detects something"
    assert {p["class"] for m in local for p in m["predictions"]} <= set(CLASS_NAMES)

    for a, b in zip(remote, local, strict=True):
        assert a["frame_id"] == b["frame_id"] and a["image"] == b["image"] == {"width": 320, "height": 240}
        assert set(a) - OPTIONAL_ENVELOPE == set(b) - OPTIONAL_ENVELOPE, a["frame_id"]
        assert set(b) - set(a) <= {"fallback_reason"}, "the only extra key of a local result says why"
        for p in a["predictions"] + b["predictions"]:
            assert set(p) == PREDICTION_KEYS
            assert all(set(q) == {"x", "y"} for q in p["points"]) and len(p["points"]) >= 3
        assert a["model_id"] == MODEL_ID and b["model_id"] == LOCAL_MODEL_ID  # each names the model that made it
    assert "Traceback" not in log1 + agent2.log
    assert_key_nowhere(KEY, agent, sub, agent2.log)


def test_api_key_never_in_logs_messages_or_error_texts_through_every_failure(
    tmp_path: Path,
    model_path: Path,
    fake: FakeRoboflow,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_scene_video(tmp_path / "scene.avi", frames=40, fps=20.0)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = online_config(
        tmp_path,
        model_path,
        broker.port,
        fake.url,
        {"source": str(video), "fps": 10, "loop": True},
        serverless={"probe_interval_s": 0.2, "probe_max_s": 0.2, "timeout_s": 0.5, "connect_timeout_s": 0.5},
    )
    agent = run_agent(config)
    assert sub.wait_until(lambda: len(detections(sub)) >= 3, 60), agent.log[-4000:]

    def hit(fault: str) -> int:
        return sum(1 for r in fake.requests if r.fault == fault)

    # Every kind of failure the client knows, each until the endpoint has answered with it twice.
    for fault in ("500", "503", "429", "html", "truncated", "not_api_json", "reset", "hang", "403"):
        fake.set_fault(fault, retry_after=None)
        assert sub.wait_until(lambda f=fault: hit(f) >= 2, 30), (fault, agent.log[-4000:])  # type: ignore[misc]
    fake.clear_fault()
    n = len(detections(sub))
    assert sub.wait_until(lambda: any(m["source"] == "serverless" for m in detections(sub)[n:]), 30)
    fake.stop()  # connection refused
    n = len(detections(sub))
    assert sub.wait_until(lambda: sum(m["source"] == "local" for m in detections(sub)[n:]) >= 3, 30)
    fake.start()
    n = len(detections(sub))
    assert sub.wait_until(lambda: any(m["source"] == "serverless" for m in detections(sub)[n:]), 30)
    process_line = cmdline(agent)
    stop_agent(agent)

    log = agent.log
    ids = [m["frame_id"] for m in detections(sub)]
    assert ids == list(range(1, len(ids) + 1))
    assert "api_key=***" in log, "urllib3's debug lines with the request URL are there, redacted"
    for kind in ("http", "rate_limited", "bad_response", "connect", "timeout", "auth"):
        assert f"{kind}: " in log, kind
    assert "Traceback" not in log
    reasons = [m.get("fallback_reason", "") for m in detections(sub)]
    assert "http_500" in reasons and "connect" in reasons  # short codes; the detail is in the log
    assert_key_nowhere(KEY, agent, sub, process_line, config.read_text())


def test_forbidden_key_sends_frames_local_says_so_loudly_and_never_prints_the_key(
    tmp_path: Path,
    model_path: Path,
    fake: FakeRoboflow,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_scene_video(tmp_path / "scene.avi", frames=40, fps=20.0)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = online_config(tmp_path, model_path, broker.port, fake.url, {"source": str(video), "fps": 5, "loop": True})
    agent = run_agent(config, key=WRONG_KEY)  # the fake answers 403 {"Message": "User is not authorized ..."}

    def key_problem(h: dict[str, Any]) -> bool:
        return h["state"] == "degraded" and h["mode"] == "auth_error" and any("key" in p for p in h["problems"])

    assert sub.wait_until(lambda: len(detections(sub)) >= 5 and any(key_problem(h) for h in healths(sub)), 60), (
        agent.log[-4000:]
    )
    msgs = detections(sub)
    assert {m["source"] for m in msgs} == {"local"}
    assert all(m["fallback_reason"] == "auth" for m in msgs)
    health = next(h for h in healths(sub) if key_problem(h))
    assert "serverless API key rejected" in health["problems"]
    assert "refused the key" in health["inference"]["router"]["reason"]
    assert health["inference"]["router"]["remote_failed"].get("auth", 0) >= 1
    errors = [line for line in agent.log.splitlines() if " ERROR " in line]
    assert any("refused the key" in line and "403" in line for line in errors), "said loudly, at ERROR"

    # The key is allowed server-side: the next probe picks it up, no restart needed.
    fake.api_key = WRONG_KEY
    n = len(detections(sub))
    assert sub.wait_until(lambda: any(m["source"] == "serverless" for m in detections(sub)[n:]), 30)
    assert sub.wait_until(lambda: healths(sub)[-1]["mode"] == "serverless", 10)
    assert not any("key" in p for p in healths(sub)[-1]["problems"])
    stop_agent(agent)
    assert "Traceback" not in agent.log
    assert_key_nowhere(WRONG_KEY, agent, sub, config.read_text())
    assert_key_nowhere(KEY, agent, sub)
