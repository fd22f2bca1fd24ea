"""The daemon end to end: `seg-agent run` as a real process, a real Mosquitto, a real subscriber, real
video files and a loopback MJPEG camera, NOTIFY_SOCKET as systemd would set it."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.mosquitto import Mosquitto, Subscriber
from tests.streams import MjpegServer, write_video

DEVICE = "dev1"
BASE = f"seg-agent/{DEVICE}"


class AgentProcess:
    """`python -m agent run` in a subprocess, its stderr collected in a file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = config.with_suffix(f".{time.monotonic_ns()}.log")
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def write_config(tmp_path: Path, model: Path, port: int, camera: dict[str, Any], **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "device_id": DEVICE,
        "log_level": "debug",
        "cameras": [{"name": "cam0", **camera}],
        "inference": {"mode": "local", "confidence": 20, "local": {"model": str(model), "threads": 1}},
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "state_dir": str(tmp_path / "state"),
        "outbox": {"commit_interval_s": 0.1},
        "health": {"interval_s": 1},
    }
    doc.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def detections(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(f"{BASE}/detections")]


def statuses(sub: Subscriber) -> list[bytes]:
    return sub.payloads(f"{BASE}/status")


def assert_api_format(msg: dict[str, Any], width: int, height: int) -> None:
    """What a consumer that only knows the hosted API's format reads (supervision's from_inference)."""
    assert msg["image"] == {"width": width, "height": height}
    assert isinstance(msg["predictions"], list)
    for p in msg["predictions"]:
        for key in ("x", "y", "width", "height", "confidence", "class", "class_id", "points"):
            assert key in p, key
        assert len(p["points"]) >= 3
        assert all(set(q) == {"x", "y"} for q in p["points"])
        assert 0 <= p["confidence"] <= 1
        assert -1 <= p["x"] <= width + 1 and -1 <= p["y"] <= height + 1
    for key in ("device_id", "camera", "frame_id", "timestamp", "source", "model_id", "message_id"):
        assert key in msg, key


def test_video_file_gives_one_message_per_sampled_frame_in_order(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_video(tmp_path / "clip.avi", frames=60, fps=30.0, width=320, height=240)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = write_config(
        tmp_path, model_path, broker.port, {"source": str(video), "fps": 5, "loop": False, "realtime": False}
    )
    agent = run_agent(config)
    assert agent.wait(60) == 0, agent.log  # a file without loop ends, the agent drains and exits 0
    assert sub.wait_until(lambda: statuses(sub)[-1:] == [b"offline"], 5)
    msgs = detections(sub)
    assert [m["frame_id"] for m in msgs] == list(range(1, 11)), "60 frames at 30 fps sampled at 5 fps"
    for m in msgs:
        assert_api_format(m, 320, 240)
        assert m["source"] == "local" and m["camera"] == "cam0" and m["device_id"] == DEVICE
        assert m["model_id"] == "test-seg"
        assert "replayed" not in m
    assert any(m["predictions"] for m in msgs), "the test model detects something"
    stamps = [m["timestamp"] for m in msgs]
    assert stamps == sorted(stamps)
    assert len({m["message_id"] for m in msgs}) == len(msgs)
    assert statuses(sub)[0] == b"online" and statuses(sub)[-1] == b"offline"
    assert "Traceback" not in agent.log

    health = json.loads(sub.payloads(f"{BASE}/health")[-1])
    assert health["device_id"] == DEVICE and health["mode"] == "local"
    assert health["cameras"]["cam0"]["frames_processed"] == 10
    assert health["outbox"]["depth"] == 0
    assert health["inference"]["latency"]["local"]["count"] == 10

    # frame_id carries on across a restart
    agent2 = run_agent(config)
    assert agent2.wait(60) == 0, agent2.log
    assert sub.wait_until(lambda: len(detections(sub)) == 20, 5)
    assert [m["frame_id"] for m in detections(sub)] == list(range(1, 21))


def test_large_mjpeg_frames_are_decoded_reduced_and_published_in_full_frame_pixels(
    tmp_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    """1920x1080 frames for the 416x416 demo model are decoded at 1/4; subscribers still get 1920x1080."""
    from agent.synth import render_video

    demo = Path(__file__).resolve().parent.parent / "models" / "demo-seg.onnx"
    video = render_video(tmp_path / "big.avi", seconds=1.0, fps=10.0, size=(1920, 1080), seed=3, quality=85)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = write_config(
        tmp_path, demo, broker.port, {"source": str(video), "fps": 5, "loop": False, "realtime": False}
    )
    agent = run_agent(config)
    assert agent.wait(60) == 0, agent.log
    assert "1920x1080 JPEG frames decoded at 1/4 (480x270)" in agent.log
    msgs = detections(sub)
    assert [m["frame_id"] for m in msgs] == [1, 2, 3, 4, 5]
    xs, ys = [], []
    for m in msgs:
        assert_api_format(m, 1920, 1080)
        for p in m["predictions"]:
            xs += [q["x"] for q in p["points"]]
            ys += [q["y"] for q in p["points"]]
    assert xs and max(xs) > 480 and max(ys) > 270, "points are in the full frame's pixels, not the decode's"
    assert max(xs) <= 1920 and max(ys) <= 1080


def test_two_local_sessions_keep_every_frame_in_order(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    """``sessions: 2``: two frames in flight on two ONNX Runtime sessions; results still one per frame, in order."""
    video = write_video(tmp_path / "clip.avi", frames=90, fps=30.0, width=320, height=240)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = write_config(
        tmp_path, model_path, broker.port, {"source": str(video), "fps": 0, "loop": False, "realtime": False}
    )
    doc = yaml.safe_load(config.read_text())
    doc["inference"]["local"]["sessions"] = 2
    config.write_text(yaml.safe_dump(doc))
    agent = run_agent(config)
    assert agent.wait(60) == 0, agent.log
    msgs = detections(sub)
    assert [m["frame_id"] for m in msgs] == list(range(1, 91))
    assert [m["timestamp"] for m in msgs] == sorted(m["timestamp"] for m in msgs)
    for m in msgs:
        assert_api_format(m, 320, 240)
    assert any(m["predictions"] for m in msgs)
    assert "2 sessions of the local model run frames side by side" in agent.log
    assert agent.log.count("3 classes, input 256x256") == 1, "the model's load is told once"


def test_status_offline_by_last_will_when_killed_and_on_clean_stop(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_video(tmp_path / "clip.avi", frames=30, fps=30.0)
    sub = make_subscriber(broker.port, f"{BASE}/#")
    config = write_config(tmp_path, model_path, broker.port, {"source": str(video), "fps": 10, "loop": True})

    agent = run_agent(config)
    assert sub.wait_until(lambda: len(detections(sub)) >= 3, 30), agent.log
    assert statuses(sub) == [b"online"]
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    assert sub.wait_until(lambda: statuses(sub)[-1:] == [b"offline"], 15), "the broker's last will"

    agent = run_agent(config)
    assert sub.wait_until(lambda: statuses(sub)[-1:] == [b"online"], 30), agent.log
    n = len(detections(sub))
    assert sub.wait_until(lambda: len(detections(sub)) >= n + 3, 30)
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log
    assert sub.wait_until(lambda: statuses(sub)[-1:] == [b"offline"], 5)
    msgs = detections(sub)
    first_run = [m["frame_id"] for m in msgs[:n]]
    # The killed run's unacknowledged results come first, replayed from the outbox; then the new run's.
    second_run = [m["frame_id"] for m in msgs[n:] if not m.get("replayed")]
    assert second_run == list(range(second_run[0], second_run[0] + len(second_run))), "no gap, in order"
    assert second_run[0] > max(first_run), "a killed run's ids are never reused"
    assert "Traceback" not in agent.log


def test_mjpeg_stream_that_stops_and_comes_back_resumes_without_restart(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    camera = MjpegServer(fps=15, tag=1)
    camera.start()
    try:
        sub = make_subscriber(broker.port, f"{BASE}/#")
        config = write_config(
            tmp_path,
            model_path,
            broker.port,
            {
                "source": f"http://127.0.0.1:{camera.port}/stream.mjpg",
                "fps": 5,
                "stall_timeout_s": 2,
                "open_timeout_s": 2,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1,
            },
        )
        agent = run_agent(config)
        assert sub.wait_until(lambda: len(detections(sub)) >= 3, 30), agent.log
        camera.stop()
        seen = len(sub.payloads(f"{BASE}/health"))  # the outage lasts until a health message shows it (1 s apart)
        assert sub.wait_until(
            lambda: any(
                json.loads(p)["cameras"]["cam0"]["state"] != "streaming" for p in sub.payloads(f"{BASE}/health")[seen:]
            ),
            30,
        ), agent.log
        before = len(detections(sub))
        camera.tag = 2
        camera.start()
        assert sub.wait_until(lambda: len(detections(sub)) >= before + 3, 30), agent.log
        assert agent.proc.poll() is None, "still the same process"
        ids = [m["frame_id"] for m in detections(sub)]
        assert ids == list(range(1, len(ids) + 1))
        assert "reconnecting" in agent.log or "stalled" in agent.log
        health = [json.loads(p) for p in sub.payloads(f"{BASE}/health")]
        assert any(h["cameras"]["cam0"]["state"] != "streaming" for h in health), "the outage was reported"
        assert sub.wait_until(
            lambda: json.loads(sub.payloads(f"{BASE}/health")[-1])["cameras"]["cam0"]["state"] == "streaming", 5
        )
        agent.signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        camera.stop()


def test_broker_unreachable_at_start_is_a_state_not_a_crash(
    tmp_path: Path,
    model_path: Path,
    make_broker: Callable[..., Mosquitto],
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    # A subscriber with a persistent session on a persistent broker, so nothing it should get is missed
    # while the broker is down; then the broker goes away before the agent starts.
    broker = make_broker(persistence=True)
    port = broker.port
    make_subscriber(port, f"{BASE}/#", client_id="watcher", clean_session=False).close()
    broker.stop()
    video = write_video(tmp_path / "clip.avi", frames=120, fps=30.0)  # 4 s played at its own pace
    config = write_config(tmp_path, model_path, port, {"source": str(video), "fps": 5, "loop": False})
    agent = run_agent(config)
    deadline = time.monotonic() + 20
    while "unreachable" not in agent.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "unreachable" in agent.log and f"127.0.0.1:{port}" in agent.log
    assert agent.proc.poll() is None
    db = tmp_path / "state" / "outbox.sqlite3"
    deadline = time.monotonic() + 30
    while not held_detections(db) and time.monotonic() < deadline:
        time.sleep(0.1)  # results pile up in the outbox meanwhile: wait until one is on disk
    broker.start()
    sub = make_subscriber(port, f"{BASE}/#", client_id="watcher", clean_session=False)
    assert agent.wait(60) == 0, agent.log
    assert sub.wait_until(lambda: len(detections(sub)) >= 15, 10)
    assert sub.wait_until(lambda: statuses(sub)[-1:] == [b"offline"], 10)  # the agent's last word: all arrived
    msgs = detections(sub)
    assert [m["frame_id"] for m in msgs] == list(range(1, len(msgs) + 1))
    assert msgs[0].get("replayed") is True, "held while the broker was away"
    assert "replayed" not in msgs[-1], "published live once the broker is back"
    assert "Traceback" not in agent.log


def held_detections(db: Path) -> int:
    """Results the (running) agent has committed to its outbox file, 0 while there is no file yet."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE topic = ?", (f"{BASE}/detections",)).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


class NotifySocket:
    """The datagram socket systemd listens on for sd_notify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until()):
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, line: str) -> list[float]:
        return [t for t, m in self.messages if line in m.splitlines()]

    def close(self) -> None:
        self.sock.close()


def test_sd_notify_ready_watchdog_while_frames_flow_and_silence_when_capture_stalls(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    camera = MjpegServer(fps=10)
    camera.start()
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        sub = make_subscriber(broker.port, f"{BASE}/#")
        config = write_config(
            tmp_path,
            model_path,
            broker.port,
            {
                "source": f"http://127.0.0.1:{camera.port}/",
                "fps": 5,
                "stall_timeout_s": 1.5,
                "open_timeout_s": 1.5,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 0.5,
            },
        )
        agent = run_agent(config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        # READY=1 comes with the first frame (however long a loaded machine takes to get there); then 5 s of pings
        notify.collect(60.0, until=lambda: any(t + 5.0 < time.monotonic() for t in notify.times("READY=1")))
        ready = notify.times("READY=1")
        assert len(ready) == 1, notify.messages
        pings = notify.times("WATCHDOG=1")
        assert len(pings) >= 6, f"every 0.5 s while frames flow: {notify.messages}"
        assert all(t > ready[0] for t in pings)
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in notify.messages)

        camera.hang = True  # the camera wedges: new connections get headers and then nothing
        camera.hang_after = 0
        camera.stop()
        camera.start()
        notify.messages.clear()
        notify.collect(8.0)
        # the stall is declared 1.5 s after the last frame; 4 s leaves a loaded machine room for that timer
        late = [t for t in notify.times("WATCHDOG=1") if t > notify.messages[0][0] + 4.0] if notify.messages else []
        assert late == [], f"no pings once capture has stalled: {notify.messages}"
        health = json.loads(sub.payloads(f"{BASE}/health")[-1])
        assert health["state"] == "degraded" and health["cameras"]["cam0"]["state"] in ("stalled", "reconnecting")
        assert any("camera cam0" in p for p in health["problems"])
        agent.signal(signal.SIGTERM)
        notify.collect(30.0, until=lambda: bool(notify.times("STOPPING=1")))
        assert notify.times("STOPPING=1"), notify.messages
        assert agent.wait(30) == 0
    finally:
        notify.close()
        camera.stop()
