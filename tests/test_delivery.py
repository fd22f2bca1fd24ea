"""Lose no data, end to end: `seg-agent run` as a real process, a real Mosquitto that goes away and comes back
on the same port, a subscriber with a persistent session on a persistent broker (so the subscriber's side
loses nothing either), a real video file played at its own pace.

Shown: a 30 s broker outage while the video runs (every frame id arrives, in order, none twice; those held
meanwhile carry ``"replayed": true``), and the same with the agent SIGKILLed during the outage and
restarted (every result committed before the kill arrives after the restart, in order; the new run's frame
ids continue past the killed run's).
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.mosquitto import Mosquitto, Subscriber
from tests.streams import write_video
from tests.test_daemon import BASE, AgentProcess, write_config

TOPIC = f"{BASE}/detections"
OUTAGE_S = 30.0
COMMIT_INTERVAL_S = 0.1  # write_config's outbox.commit_interval_s


def detections(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(TOPIC)]


def capture_time(msg: dict[str, Any]) -> float:
    return datetime.fromisoformat(msg["timestamp"]).timestamp()


def live_after(sub: Subscriber, wall: float) -> bool:
    """A result captured after ``wall`` and published live (not replayed) has arrived."""
    return any(not m.get("replayed") and capture_time(m) > wall for m in detections(sub))


def committed_frame_ids(db: Path) -> list[int]:
    """Frame ids of the results in the outbox database as committed to disk right now (read by another process)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(payload)["frame_id"] for topic, payload in rows if topic == TOPIC]


def committed_after_crash(db: Path, scratch: Path) -> list[int]:
    """Frame ids a dead agent left on disk, read from a copy (the WAL is recovered there, not in the agent's files)."""
    scratch.mkdir()
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copyfile(src, scratch / f"{db.name}{suffix}")
    conn = sqlite3.connect(scratch / db.name, timeout=5.0)
    try:
        rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(payload)["frame_id"] for topic, payload in rows if topic == TOPIC]


def stored_frame_id(db: Path) -> int:
    """The frame id a cleanly stopped agent stored for cam0."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'frame_id/cam0'").fetchone()
    finally:
        conn.close()
    return int(row[0])


def wait_for(predicate: Callable[[], bool], timeout: float, agent: AgentProcess | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if agent is not None:
            assert agent.proc.poll() is None, agent.log[-4000:]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_for(agent: AgentProcess, seconds: float) -> None:
    """Let time pass, checking that the agent stays up all along."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert agent.proc.poll() is None, agent.log[-4000:]
        time.sleep(0.1)


def stop_broker_between_results(broker: Mosquitto, sub: Subscriber) -> float:
    """SIGTERM the broker just after a result went through (5 fps: nothing in flight for the next ~150 ms), so
    that no PUBACK is lost with the connection; a lost one would mean an (allowed, QoS 1) repeat. Returns the
    wall-clock time of the stop."""
    n = len(sub.payloads(TOPIC))
    assert sub.wait_until(lambda: len(sub.payloads(TOPIC)) > n, 10)
    time.sleep(0.05)  # the agent's PUBACK and the subscriber's own acknowledgement are through
    stopped = time.time()
    broker.stop()
    return stopped


def test_broker_outage_of_30_s_loses_nothing_and_repeats_nothing(
    tmp_path: Path,
    model_path: Path,
    make_broker: Callable[..., Mosquitto],
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[[Path], AgentProcess],
) -> None:
    broker = make_broker(persistence=True)
    sub = make_subscriber(broker.port, TOPIC, client_id="watcher", clean_session=False)
    video = write_video(tmp_path / "clip.avi", frames=60, fps=30.0)  # 2 s, looped at its own pace
    config = write_config(tmp_path, model_path, broker.port, {"source": str(video), "fps": 5, "loop": True})
    agent = run_agent(config)
    assert sub.wait_until(lambda: len(detections(sub)) >= 5, 60), agent.log[-4000:]

    down_wall = stop_broker_between_results(broker, sub)
    assert wait_for(lambda: "connection to broker" in agent.log and "lost" in agent.log, 15, agent)
    run_for(agent, OUTAGE_S - (time.time() - down_wall))
    up_wall = time.time()
    broker.start()  # same port, the subscriber's session restored from the broker's persistence file
    assert sub.wait_until(lambda: live_after(sub, up_wall + 1.0), 60), agent.log[-4000:]
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log[-4000:]
    last = stored_frame_id(tmp_path / "state" / "outbox.sqlite3")
    assert sub.wait_until(lambda: len(detections(sub)) >= last, 15)
    time.sleep(0.5)  # anything extra (a repeat) would arrive now

    msgs = detections(sub)
    ids = [m["frame_id"] for m in msgs]
    assert ids == list(range(1, last + 1)), "every frame id, in order, none twice"
    during = [m for m in msgs if down_wall + 0.5 < capture_time(m) < up_wall - 0.5]
    # a third of what the agent processed at its own pace before the outage (5 fps, or less on a loaded machine)
    before = [capture_time(m) for m in msgs if capture_time(m) < down_wall]
    rate = min(5.0, (len(before) - 1) / (before[-1] - before[0]))
    assert len(during) >= OUTAGE_S * rate / 3, f"only {len(during)} frames processed during the outage ({rate:.1f}/s)"
    assert all(m.get("replayed") is True for m in during), "results held during the outage are marked replayed"
    assert not any(m.get("replayed") for m in msgs if capture_time(m) < down_wall - 1.0)
    assert "replayed" not in msgs[-1]
    assert "Traceback" not in agent.log


def test_agent_killed_during_outage_delivers_every_committed_result_after_restart(
    tmp_path: Path,
    model_path: Path,
    make_broker: Callable[..., Mosquitto],
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[[Path], AgentProcess],
) -> None:
    broker = make_broker(persistence=True)
    sub = make_subscriber(broker.port, TOPIC, client_id="watcher", clean_session=False)
    video = write_video(tmp_path / "clip.avi", frames=60, fps=30.0)
    config = write_config(tmp_path, model_path, broker.port, {"source": str(video), "fps": 5, "loop": True})
    db = tmp_path / "state" / "outbox.sqlite3"
    agent = run_agent(config)
    assert sub.wait_until(lambda: len(detections(sub)) >= 5, 60), agent.log[-4000:]

    stop_broker_between_results(broker, sub)
    assert wait_for(lambda: len(committed_frame_ids(db)) >= 15, 30, agent), "results pile up on disk"
    snapshot = committed_frame_ids(db)
    time.sleep(10 * COMMIT_INTERVAL_S)  # what is processed now is committed within the interval
    agent.signal(signal.SIGKILL)
    agent.wait(10)
    committed = committed_after_crash(db, tmp_path / "copy")  # what the killed run left: all of it must arrive
    assert set(snapshot) <= set(committed)
    assert max(committed) > max(snapshot), "results processed up to the kill were committed too"

    agent2 = run_agent(config)  # the broker is still away
    assert wait_for(lambda: "from an earlier run will be sent first" in agent2.log, 30, agent2), agent2.log
    # the new run processes frames into the outbox meanwhile: wait until one is on disk
    assert wait_for(lambda: max(committed_frame_ids(db), default=0) > max(committed), 30, agent2), agent2.log
    up_wall = time.time()
    broker.start()
    assert sub.wait_until(lambda: live_after(sub, up_wall + 1.0), 60), agent2.log[-4000:]
    agent2.signal(signal.SIGTERM)
    assert agent2.wait(30) == 0, agent2.log[-4000:]
    last = stored_frame_id(db)
    assert sub.wait_until(lambda: last in {m["frame_id"] for m in detections(sub)}, 15)
    time.sleep(0.5)

    msgs = detections(sub)
    ids = [m["frame_id"] for m in msgs]
    assert ids == sorted(set(ids)), "in order, none twice"
    split = next((k for k in range(1, len(ids)) if ids[k] != ids[k - 1] + 1), len(ids))
    killed_run, new_run = ids[:split], ids[split:]
    assert killed_run == list(range(1, len(killed_run) + 1)), "nothing of the killed run is missing"
    assert set(committed) <= set(killed_run)
    assert new_run, "the restarted run published"
    assert new_run == list(range(new_run[0], new_run[0] + len(new_run))), "gap-free after the restart"
    assert new_run[0] > killed_run[-1], "ids after the restart continue past the killed run's, never reused"
    assert new_run[-1] == last
    by_id = {m["frame_id"]: m for m in msgs}
    assert all(by_id[i].get("replayed") is True for i in committed), "left by the killed run: replayed"
    assert by_id[new_run[0]].get("replayed") is True, "held while the broker was away"
    assert "replayed" not in msgs[-1]
    assert "Traceback" not in agent2.log
