"""Where do duplicates after a broker restart come from? A small, fast reproduction (run by hand).

The agent's real Publisher and Outbox publish a steady stream of numbered results to a real Mosquitto
(``persistence true``); a persistent-session subscriber (``clean_session: false``, QoS 1, like the chaos
soak's verifier) records every message with its DUP flag and retain flag. The broker is restarted many
times while messages flow (SIGTERM, or SIGKILL with ``--kill``). Every message_id received more than once
is classified:

* ``agent resend``: the agent published it again (the extra copy says ``"replayed": true``);
* ``broker redelivery``: the broker sent it again to the subscriber's session (the extra copy has the
  MQTT DUP flag and no ``replayed``), confirmed in Mosquitto's log (``Sending PUBLISH to <sub> (d1, ...``);
* ``unexplained``: neither (that would be a bug of ours).

    python benchmarks/broker_restart_dups.py --restarts 30
    python benchmarks/broker_restart_dups.py --restarts 30 --kill
    python benchmarks/broker_restart_dups.py --restarts 10 --agent        # the whole agent process
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import MqttSettings, OutboxSettings
from agent.outbox import Outbox
from agent.publisher import Publisher
from tests.mosquitto import Mosquitto, Received, Subscriber

TOPIC = "seg-agent/dups/detections"
SUB_ID = "verifier"


def _settings(port: int) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        client_id="seg-agent-dups",
        keepalive_s=5,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        max_in_flight=10,
    )


def _feed(outbox: Outbox, stop: threading.Event, rate_hz: float, counter: list[int]) -> None:
    i = 0
    while not stop.is_set():
        doc = {"message_id": uuid.uuid4().hex, "frame_id": i, "predictions": []}
        outbox.put(TOPIC, json.dumps(doc, separators=(",", ":")).encode())
        i += 1
        counter[0] = i
        time.sleep(1.0 / rate_hz)


def _redelivered_mids(log_text: str) -> int:
    return len(re.findall(rf"Sending PUBLISH to {SUB_ID} \(d1, q1", log_text))


def classify(messages: list[Received]) -> dict[str, Any]:
    """Duplicates by message_id (one per result, kept in the outbox, so a resend carries it too), each
    classified by the extra copy's marks."""
    seen: Counter[str] = Counter()
    frames: set[int] = set()
    kinds: Counter[str] = Counter()
    details: list[dict[str, Any]] = []
    for m in messages:
        doc = json.loads(m.payload)
        fid = int(doc["frame_id"])
        frames.add(fid)
        seen[doc["message_id"]] += 1
        if seen[doc["message_id"]] == 1:
            continue
        replayed = bool(doc.get("replayed"))
        kind = "agent resend" if replayed else "broker redelivery" if m.dup else "unexplained"
        kinds[kind] += 1
        details.append({"frame_id": fid, "replayed": replayed, "dup": m.dup, "retain": m.retain, "kind": kind})
    assert len(frames) == len(seen), "a frame id on two messages"
    return {"distinct": len(seen), "messages": len(messages), "duplicates": dict(kinds), "details": details}


def run(restarts: int, kill: bool, rate_hz: float, workdir: Path) -> dict[str, Any]:
    broker = Mosquitto(workdir / "broker", persistence=True).start()
    sub = Subscriber(broker.port, TOPIC, client_id=SUB_ID, clean_session=False)
    outbox = Outbox(workdir / "outbox.db", OutboxSettings())
    outbox.start()
    pub = Publisher(_settings(broker.port), outbox, status_topic="seg-agent/dups/status")
    pub.start()
    stop = threading.Event()
    counter = [0]
    feeder = threading.Thread(target=_feed, args=(outbox, stop, rate_hz, counter), daemon=True)
    feeder.start()
    logs: list[str] = []
    try:
        for _ in range(restarts):
            time.sleep(0.7)
            (broker.kill if kill else broker.stop)()
            logs.append(broker.log_path.read_text(errors="replace"))
            broker.log_path.rename(broker.log_path.with_suffix(f".{len(logs)}.log"))
            time.sleep(0.3)
            broker.start()
        time.sleep(0.5)
        stop.set()
        feeder.join()
        put = counter[0]
        pub.drain(20.0)
        sub.wait_for_count(put, TOPIC, timeout=20.0)
        time.sleep(0.5)
    finally:
        stop.set()
        pub.stop(timeout=2.0)
        outbox.close()
        sub.close()
        logs.append(broker.log_path.read_text(errors="replace"))
        broker.stop()
    result = classify(sub.received(TOPIC))
    result["lost_ids"] = sorted(set(range(put)) - {int(json.loads(m.payload)["frame_id"]) for m in sub.received(TOPIC)})
    result.update(
        restarts=restarts,
        signal="SIGKILL" if kill else "SIGTERM",
        put=put,
        lost=put - result["distinct"],
        broker_log_dup_sends=sum(_redelivered_mids(t) for t in logs),
    )
    return result


def run_agent(restarts: int, kill: bool, workdir: Path) -> dict[str, Any]:
    """The same with the whole agent (``python -m agent run``): a looped video at 10 fps, a local model."""
    from tests.onnx_models import build_yolov8_seg
    from tests.streams import write_video
    from tests.test_daemon import BASE, AgentProcess, write_config

    model = workdir / "test-seg.onnx"
    build_yolov8_seg(model, imgsz=(256, 256), class_names=["circle", "rectangle", "triangle"])
    broker = Mosquitto(workdir / "broker", persistence=True).start()
    topic = f"{BASE}/detections"
    sub = Subscriber(broker.port, topic, client_id=SUB_ID, clean_session=False)
    video = write_video(workdir / "clip.avi", frames=60, fps=30.0)
    config = write_config(workdir, model, broker.port, {"source": str(video), "fps": 10, "loop": True})
    agent = AgentProcess(config)
    logs: list[str] = []
    try:
        if not sub.wait_for_count(5, topic, timeout=60.0):
            raise RuntimeError(agent.log[-3000:])
        for _ in range(restarts):
            time.sleep(1.5)
            (broker.kill if kill else broker.stop)()
            logs.append(broker.log_path.read_text(errors="replace"))
            broker.log_path.rename(broker.log_path.with_suffix(f".{len(logs)}.log"))
            time.sleep(0.5)
            broker.start()
        time.sleep(2.0)
        agent.signal(signal.SIGTERM)
        agent.wait(30.0)
        time.sleep(1.0)
    finally:
        agent.close()
        sub.close()
        logs.append(broker.log_path.read_text(errors="replace"))
        broker.stop()
    got = sub.received(topic)
    result = classify(got)
    ids = {int(json.loads(m.payload)["frame_id"]) for m in got}
    result.update(
        restarts=restarts,
        signal="SIGKILL" if kill else "SIGTERM",
        gaps=sorted(set(range(min(ids), max(ids) + 1)) - ids),
        broker_log_dup_sends=sum(_redelivered_mids(t) for t in logs),
        agent_traceback="Traceback" in agent.log,
    )
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restarts", type=int, default=30)
    ap.add_argument("--kill", action="store_true", help="SIGKILL the broker instead of SIGTERM")
    ap.add_argument("--rate", type=float, default=200.0, help="results per second")
    ap.add_argument("--agent", action="store_true", help="the whole agent process instead of the Publisher")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep the broker logs there")
    args = ap.parse_args()

    def go(workdir: Path) -> dict[str, Any]:
        if args.agent:
            return run_agent(args.restarts, args.kill, workdir)
        return run(args.restarts, args.kill, args.rate, workdir)

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = go(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="dups-") as tmp:
            result = go(Path(tmp))
    details = result.pop("details")
    print(json.dumps(result, indent=1))
    for d in details[:40]:
        print(d)
    return 1 if result["duplicates"].get("unexplained") or result.get("lost") or result.get("gaps") else 0


if __name__ == "__main__":
    raise SystemExit(main())
