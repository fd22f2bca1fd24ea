"""Outbox soak: many results through the Outbox + Publisher to a real Mosquitto restarted every N messages.

A child process owns the :class:`agent.outbox.Outbox` (SQLite file, the daemon's default commit interval) and
the :class:`agent.publisher.Publisher`, and puts ``--messages`` detection-sized results at ``--rate`` per
second; after every ``--restart-every`` puts (but the last) it asks the parent to restart the broker (SIGTERM, down for
``--down`` s, started again on the same port) while it keeps putting. The parent holds the broker (with
persistence) and a subscriber with a persistent session, so the subscriber side loses nothing either.
Reported: delivered (distinct), missing, duplicates (by frame_id: resent by the publisher after a lost
PUBACK, marked ``replayed``, or redelivered by the broker with DUP), order, RSS and outbox file size of the
child at start, peak and end, wall time.

    python benchmarks/outbox_soak.py                                  # 20,000 messages, restart every 2,000
    python benchmarks/outbox_soak.py --messages 5000 --restart-every 1000 --rate 2000
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import shlex
import sys
import tempfile
import threading
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from tests.mosquitto import MOSQUITTO, Mosquitto  # noqa: E402

TOPIC = "seg-agent/soak/detections"
STATUS = "seg-agent/soak/status"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def file_mb(db: Path) -> float:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(db) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total / 1e6


def detection_message(frame_id: int) -> bytes:
    """A published result of typical size: three predictions with 20-point polygons."""
    from agent.results import encode, to_message

    predictions = [
        {
            "x": 100.5 + k,
            "y": 200.5,
            "width": 80.0,
            "height": 60.0,
            "confidence": 0.9 - 0.1 * k,
            "class": ("red", "green", "blue")[k],
            "class_id": k,
            "detection_id": str(uuid.uuid4()),
            "points": [{"x": 100.0 + i, "y": 200.0 + (i % 5)} for i in range(20)],
        }
        for k in range(3)
    ]
    api = {"inference_id": str(uuid.uuid4()), "time": 0.012, "image": {"width": 640, "height": 480}}
    api["predictions"] = predictions
    message = to_message(
        api,
        device_id="soak",
        camera="cam0",
        frame_id=frame_id,
        timestamp=time.time(),
        source="local",
        model_id="shapes/3",
        latency_ms=12.0,
    )
    return encode(message)


def child(conn: Connection, state_dir: str, port: int, opts: dict[str, Any]) -> None:
    """Outbox + Publisher + the put loop; measured on its own so the subscriber's memory doesn't count."""
    from agent.config import MqttSettings, OutboxSettings
    from agent.logs import setup_logging
    from agent.outbox import Outbox
    from agent.publisher import Publisher

    setup_logging(opts["log_level"])  # the agent's own format; warnings say every outage, errors would be bugs

    db = Path(state_dir) / "outbox.sqlite3"
    outbox = Outbox(db, OutboxSettings(commit_interval_s=opts["commit_interval"]))
    outbox.start()
    settings = MqttSettings(
        port=port, client_id="seg-agent-soak", keepalive_s=5, reconnect_min_s=0.1, reconnect_max_s=0.5
    )
    publisher = Publisher(settings, outbox, status_topic=STATUS)
    publisher.start()
    deadline = time.monotonic() + 10
    while not publisher.stats().connected and time.monotonic() < deadline:
        time.sleep(0.05)
    outbox.put(TOPIC, detection_message(0))  # warm up the code paths before the baseline
    while outbox.stats().depth and time.monotonic() < deadline:
        time.sleep(0.05)
    peak = {"rss": 0.0, "file": 0.0, "depth": 0}
    start = {"rss": rss_mb(), "file": file_mb(db)}
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.2):
            peak["rss"] = max(peak["rss"], rss_mb())
            peak["file"] = max(peak["file"], file_mb(db))
            peak["depth"] = max(peak["depth"], outbox.stats().depth)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    rate = opts["rate"]
    for n in range(1, opts["messages"] + 1):
        if rate > 0:
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        outbox.put(TOPIC, detection_message(n))
        if n % opts["restart_every"] == 0 and n < opts["messages"]:
            conn.send(("restart", n))
    put_s = time.monotonic() - t0
    conn.send(("puts_done", n))
    drained = publisher.drain(opts["drain_timeout"])
    wall_s = time.monotonic() - t0
    stop_sampling.set()
    sampler.join()
    end = {"rss": rss_mb(), "file": file_mb(db)}
    stats = publisher.stats()
    ostats = outbox.stats()
    publisher.stop(timeout=5)
    outbox.close()
    conn.send(
        (
            "done",
            {
                "drained": drained,
                "put_s": put_s,
                "wall_s": wall_s,
                "start": start,
                "end": end,
                "peak": peak,
                "end_closed_file_mb": file_mb(db),
                "published": stats.published,
                "acked": stats.acked,
                "reconnects": stats.reconnects,
                "committed": ostats.committed,
                "written_to_disk": ostats.written_to_disk,
                "dropped": ostats.dropped_full + ostats.dropped_age,
                "depth_end": ostats.depth,
            },
        )
    )


class Watcher:
    """A persistent-session subscriber that keeps (frame_id, replayed, dup) of every message."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[int, bool, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="soak-watcher",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        obj = json.loads(msg.payload)
        with self._lock:
            self.got.append((int(obj["frame_id"]), obj.get("replayed") is True, bool(msg.dup)))

    def snapshot(self) -> list[tuple[int, bool, bool]]:
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--restart-every", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="puts per second (0: as fast as possible)")
    parser.add_argument("--down", type=float, default=1.0, help="seconds the broker stays down per restart")
    parser.add_argument("--commit-interval", type=float, default=0.5, help="outbox.commit_interval_s")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--log-level", default="error", help="the agent modules' log level (default: %(default)s)")
    args = parser.parse_args()
    if MOSQUITTO is None:
        print("mosquitto is not installed", file=sys.stderr)
        return 2
    command = " ".join(["python benchmarks/outbox_soak.py", shlex.join(sys.argv[1:])]).strip()
    opts = {
        "messages": args.messages,
        "restart_every": args.restart_every,
        "rate": args.rate,
        "commit_interval": args.commit_interval,
        "drain_timeout": args.drain_timeout,
        "log_level": args.log_level,
    }
    with tempfile.TemporaryDirectory(prefix="seg-soak-") as tmp:
        broker = Mosquitto(Path(tmp) / "broker", persistence=True).start()
        watcher = Watcher(broker.port)
        restarts = 0
        t0 = time.monotonic()
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=child, args=(child_end, tmp, broker.port, opts), daemon=True)
        proc.start()
        result: dict[str, Any] | None = None
        try:
            while result is None:
                if not parent_end.poll(300):
                    raise RuntimeError("the child went quiet")
                kind, value = parent_end.recv()
                if kind == "restart":
                    broker.stop()
                    time.sleep(args.down)
                    broker.start()
                    restarts += 1
                elif kind == "done":
                    result = value
            proc.join(30)
            expected = set(range(1, args.messages + 1))
            deadline = time.monotonic() + 60
            while not expected <= {f for f, _, _ in watcher.snapshot()} and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # late repeats
            wall = time.monotonic() - t0
        finally:
            watcher.close()
            broker.kill()
            if proc.is_alive():
                proc.kill()

    got = [g for g in watcher.snapshot() if g[0] != 0]
    ids = [f for f, _, _ in got]
    distinct = set(ids)
    seen: set[int] = set()
    firsts: list[int] = []
    dup_replayed = dup_broker = 0
    for frame_id, replayed, dup in got:
        if frame_id in seen:
            dup_replayed += replayed
            dup_broker += dup and not replayed
            continue
        seen.add(frame_id)
        firsts.append(frame_id)
    out_of_order = sum(1 for a, b in itertools.pairwise(firsts) if b < a)
    r = result
    print(
        f"outbox soak: {args.messages} messages at {args.rate:g}/s, broker restarted {restarts} times "
        f"(every {args.restart_every}, down {args.down:g} s), commit_interval_s {args.commit_interval:g}"
    )
    print(f"  delivered (distinct): {len(distinct & set(range(1, args.messages + 1)))} / {args.messages}")
    print(f"  missing:              {len(set(range(1, args.messages + 1)) - distinct)}")
    print(
        f"  duplicates:           {len(ids) - len(distinct)} ({dup_replayed} resent by the publisher (replayed), "
        f"{dup_broker} redelivered by the broker (DUP))"
    )
    print(f"  replayed-marked:      {sum(1 for _, rp, _ in got if rp)} messages")
    print(f"  out of order (first arrivals): {out_of_order}")
    print(f"  publisher: published {r['published']}, acked {r['acked']}, reconnects {r['reconnects']}")
    print(
        f"  outbox: commits {r['committed']}, rows written to disk {r['written_to_disk']}, "
        f"dropped {r['dropped']}, peak depth {r['peak']['depth']}, depth at end {r['depth_end']}"
    )
    print(
        f"  RSS (child): start {r['start']['rss']:.1f} MB, peak {r['peak']['rss']:.1f} MB, end {r['end']['rss']:.1f} MB"
    )
    print(
        f"  outbox file (db+wal+shm): start {r['start']['file']:.2f} MB, peak {r['peak']['file']:.2f} MB, "
        f"end {r['end']['file']:.2f} MB, after close {r['end_closed_file_mb']:.2f} MB"
    )
    print(
        f"  wall: puts {r['put_s']:.1f} s, puts + drain {r['wall_s']:.1f} s, whole run {wall:.1f} s; "
        f"drained: {r['drained']}"
    )
    print(f"\nreproduce: {command}")
    return 0 if not (set(range(1, args.messages + 1)) - distinct) else 1


if __name__ == "__main__":
    raise SystemExit(main())
