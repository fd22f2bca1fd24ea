"""agent.health through the real pipeline: `seg-agent run` as a real process, a real Mosquitto, a real
subscriber reading the retained health topic.

Shown: each camera's age of results at publish (capture to the broker's PUBACK) counts the time a result was
held through a broker outage; the frames the camera's newest-frame slot replaced while a hosted-only worker
waited for its one call are counted per camera (``frames_skipped``), and every frame the worker took got a
frame id (no gap).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fake_roboflow import FakeRoboflow
from tests.mosquitto import Mosquitto, Subscriber
from tests.streams import MjpegServer, write_video
from tests.test_daemon import BASE, AgentProcess, write_config

KEY = "health-key"
MODEL_ID = "shapes/3"


def healths(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(f"{BASE}/health")]


def detections(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.payloads(f"{BASE}/detections")]


def test_age_at_publish_counts_the_time_results_were_held_through_an_outage(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    video = write_video(tmp_path / "v.avi", frames=40, fps=10.0, width=320, height=240)
    camera = {"source": str(video), "fps": 4, "realtime": True, "loop": True}
    agent = run_agent(write_config(tmp_path, model_path, broker.port, camera), {"ROBOFLOW_API_KEY": KEY})
    sub = make_subscriber(broker.port, f"{BASE}/#")

    def age(h: dict[str, Any]) -> dict[str, Any]:
        return dict(h["cameras"]["cam0"]["age_at_publish"])

    # live: results reach the broker a model run after capture (well under the outage below)
    assert sub.wait_until(lambda: any(age(h)["count"] >= 4 for h in healths(sub)), 60), agent.log[-4000:]
    live = next(age(h) for h in healths(sub) if age(h)["count"] >= 4)
    assert live["p50_ms"] is not None and 0 < live["p50_ms"] <= live["p90_ms"]
    broker.stop()
    held_s = 4.0  # results captured during these seconds wait for the broker; the first waits ~all of it
    assert not sub.wait_until(lambda: agent.proc.poll() is not None, held_s), agent.log[-4000:]
    broker.start()
    seen = len(healths(sub))
    # once the held results are acknowledged, the camera's window holds their ages: the oldest about held_s,
    # half of them at least half of it on average, so p90 is well past a second (room for a loaded machine)
    assert sub.wait_until(
        lambda: any((age(h)["p90_ms"] or 0) >= 1000.0 * held_s / 2 for h in healths(sub)[seen:]), 60
    ), [age(h) for h in healths(sub)[-5:]]
    after = next(age(h) for h in healths(sub)[seen:] if (age(h)["p90_ms"] or 0) >= 1000.0 * held_s / 2)
    assert after["count"] > live["count"]
    assert after["p90_ms"] > live["p90_ms"], "held results count with their wait, not from the moment they left"
    ids = [m["frame_id"] for m in detections(sub)]
    assert sorted(set(ids)) == list(range(1, max(ids) + 1)), "nothing lost across the outage"


def test_hosted_only_counts_the_frames_it_skipped_while_its_one_call_ran(
    tmp_path: Path,
    model_path: Path,
    broker: Mosquitto,
    make_subscriber: Callable[..., Subscriber],
    run_agent: Callable[..., AgentProcess],
) -> None:
    fake = FakeRoboflow(api_key=KEY, model_id=MODEL_ID)
    fake.set_fault("slow", slow_s=1.0)  # answers take 1 s; the camera is sampled at 10 fps
    cam = MjpegServer(fps=10.0, tag=1).start()
    try:
        inference = {
            "mode": "serverless",
            "confidence": 20,
            "serverless": {
                "api_url": fake.url,
                "model_id": MODEL_ID,
                "api_key": "${ROBOFLOW_API_KEY}",
                "timeout_s": 5,
                "max_in_flight": 1,
            },
        }
        camera = {"source": cam.url(), "fps": 10}
        agent = run_agent(
            write_config(tmp_path, model_path, broker.port, camera, inference=inference), {"ROBOFLOW_API_KEY": KEY}
        )
        sub = make_subscriber(broker.port, f"{BASE}/#")

        def cam0(h: dict[str, Any]) -> dict[str, Any]:
            return dict(h["cameras"]["cam0"])

        assert sub.wait_until(lambda: any(cam0(h)["frames_processed"] >= 4 for h in healths(sub)), 90), agent.log[
            -4000:
        ]
        last = cam0(next(h for h in healths(sub) if cam0(h)["frames_processed"] >= 4))
        # one call a second against ten frames a second: most sampled frames were replaced in the slot, counted
        assert last["frames_skipped"] >= 2 * last["frames_processed"], last
        # what the worker took got a result: handed out = processed, plus at most the one call under way
        assert 0 <= last["frames_sampled"] - last["frames_processed"] <= 1, last
        ids = [m["frame_id"] for m in detections(sub)]
        assert ids == list(range(1, len(ids) + 1)), "skipped frames take no frame id: no gap"
        assert {m["source"] for m in detections(sub)} == {"serverless"}
    finally:
        cam.stop()
        fake.close()
