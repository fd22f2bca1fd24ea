"""Chaos soak: the real agent under a flaky world, and an independent verifier that counts what got through.

Run by hand, as root (a network namespace, a tmpfs and tc need it), for ``--minutes`` (default 10):

    python benchmarks/chaos.py                          # 10 minutes of faults, report on stdout and --report
    python benchmarks/chaos.py --minutes 5 --seed 7
    python benchmarks/chaos.py --mode slow-api --minutes 2 --inference auto   # the slow-API target, no faults

Parts, all real and all on this machine: an MJPEG camera (tests/streams.py's server, 8 fps, sampled at
``--fps``), a hosted-API stand-in (tests/fake_roboflow.py) with injectable faults, a Mosquitto started here
(persistence on, so the verifier's persistent session survives broker restarts), and ``python -m agent run``
as a subprocess in mode auto with a small local model. The agent runs in its own network namespace, with one
veth pair for the broker link and another for the camera and the API, so the broker link alone can be
blackholed: a ``tbf`` qdisc that passes nothing on both ends drops every packet (``netem`` is not in this
kernel; a blackhole is drops, not refusals). Without namespaces everything is on loopback and that one fault
is skipped (said in the report). The state dir is a small tmpfs, so the disk can fill up.

Faults, one at a time in a shuffled round robin, each for a random few seconds with calm in between:

- ``agent_kill``: SIGKILL (the outbox file is read from a copy), restart;
- ``kill_in_outage``: the broker away a few seconds, so results wait on disk, then the SIGKILL and restart;
- ``broker_restart``: SIGTERM, down a few seconds, started again on the same port;
- ``api_refuse`` (the API's port closed), ``api_hang`` (accepts, never answers), ``api_slow`` (3 s answers);
- ``corrupt_jpeg``: two frames in three mangled (half garbage, or nothing decodable);
- ``disk_full``: the tmpfs filled to the last block while the broker is away (so the held results cannot be
  written), then the broker back with the disk still full, then room again;
- ``broker_blackhole``: every packet of the broker link dropped; ``camera_drop``: the camera's server gone.

The verifier subscribes with a persistent session (QoS 1, clean_session false) to the detections, errors and
health topics, and reports frames captured (the agent's own counters, per run), results delivered, lost,
duplicates, the order of live (not replayed) results, capture-to-delivery ages and the agent's RSS. Lost =
frame ids that were committed and never delivered: the ids found in the outbox file after each SIGKILL,
and every id of a run below one that was delivered or committed (frame ids are gap-free per run; a killed
run's successor starts past the block it had reserved). Exit status 1 if anything committed was lost, 2 if
nothing at all was delivered (the soak's own set-up failed).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from agent.outbox_sidecar import GEN_KEY, MetaSidecar  # noqa: E402
from tests.fake_roboflow import FakeRoboflow  # noqa: E402
from tests.mosquitto import MOSQUITTO, free_port, port_open  # noqa: E402
from tests.onnx_models import build_yolov8_seg  # noqa: E402
from tests.streams import MjpegServer  # noqa: E402

DEVICE = "chaos"
BASE = f"seg-agent/{DEVICE}"
CAMERA = "cam0"
KEY = "chaos-key"
MODEL_ID = "shapes/3"
FAULTS = (
    "agent_kill",
    "kill_in_outage",
    "broker_restart",
    "api_refuse",
    "api_hang",
    "api_slow",
    "corrupt_jpeg",
    "disk_full",
    "broker_blackhole",
    "camera_drop",
)
SLOW_S = 3.0
TIMEOUT_S = 5.0
KEEPALIVE_S = 5


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


# --------------------------------------------------------------------------- network: namespace and veth pairs


class Net:
    """The agent's namespace: ``broker`` link (blackholed by a tbf that passes nothing) and ``service`` link."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns = f"segchaos{tag}"
        self.pairs = {"broker": (f"scb{tag}h", f"scb{tag}n", 1), "service": (f"scs{tag}h", f"scs{tag}n", 2)}
        self.enabled = False
        self.why_not = ""
        self.net16 = _free_net16()  # two soaks at once must not share addresses (replies would go astray)
        self.host_ip = {k: f"{self.net16}.{n}.1" for k, (_, _, n) in self.pairs.items()}
        self.ns_ip = {k: f"{self.net16}.{n}.2" for k, (_, _, n) in self.pairs.items()}
        self.blackholed = False

    def setup(self) -> None:
        if shutil.which("ip") is None or shutil.which("tc") is None or os.geteuid() != 0:
            self.why_not = "needs root, ip and tc"
            return
        try:
            sh("ip", "netns", "add", self.ns)
            sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
            for host_if, ns_if, n in self.pairs.values():
                sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
                sh("ip", "link", "set", ns_if, "netns", self.ns)
                sh("ip", "addr", "add", f"{self.net16}.{n}.1/24", "dev", host_if)
                sh("ip", "link", "set", host_if, "up")
                sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.net16}.{n}.2/24", "dev", ns_if)
                sh("ip", "netns", "exec", self.ns, "ip", "link", "set", ns_if, "up")
            # the blackhole must be possible here, or the fault is skipped
            self.blackhole(True)
            self.blackhole(False)
            self.enabled = True
        except subprocess.CalledProcessError as exc:
            self.why_not = f"{' '.join(exc.cmd)}: {exc.stderr.strip()}"
            self.cleanup()

    def blackhole(self, on: bool) -> None:
        host_if, ns_if, _ = self.pairs["broker"]
        for prefix in ((), ("ip", "netns", "exec", self.ns)):
            dev = ns_if if prefix else host_if
            if on:  # a bucket of 1 byte: no packet ever fits, every one is dropped
                sh(
                    *prefix,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    "1kbit",
                    "burst",
                    "1",
                    "latency",
                    "1ms",
                )
            else:
                sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
        self.blackholed = on

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv] if self.enabled else argv

    def ip(self, link: str, side: str) -> str:
        if not self.enabled:
            return "127.0.0.1"
        return self.host_ip[link] if side == "host" else self.ns_ip[link]

    def cleanup(self) -> None:
        for host_if, _, _ in self.pairs.values():
            sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def _free_net16() -> str:
    """``10.N`` with no address of this machine in it (N from 200 on)."""
    try:
        used = sh("ip", "-o", "addr", check=False).stdout
    except OSError:
        used = ""
    for n in range(200, 255):
        if f" 10.{n}." not in used:
            return f"10.{n}"
    raise RuntimeError("no free 10.N.0.0/16 for the soak's links")


# --------------------------------------------------------------------------- broker


class Broker:
    """Mosquitto with persistence: a listener for the agent (its link's address) and one on loopback."""

    def __init__(self, workdir: Path, agent_host: str) -> None:
        assert MOSQUITTO is not None, "mosquitto is not installed"
        self.port = free_port()
        self.local_port = self.port if agent_host == "127.0.0.1" else free_port()
        store = workdir / "broker-store"
        store.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} {agent_host}"]
        if self.local_port != self.port:
            lines.append(f"listener {self.local_port} 127.0.0.1")
        lines += [
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {store}/",
            "max_queued_messages 0",
            "user root",
            f"log_dest file {workdir / 'mosquitto.log'}",
        ]
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.agent_host = agent_host
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while not (port_open(self.local_port) and port_open(self.port, self.agent_host)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --------------------------------------------------------------------------- verifier


@dataclass
class Got:
    at: float  # time.time() at the verifier
    topic: str
    doc: dict[str, Any]
    run: int  # the agent run the script had started when it arrived
    dup: bool  # the broker's redelivery flag (it resent this message to the verifier)


class Verifier:
    """A persistent-session subscriber (clean_session false, QoS 1); subscribes once, when the broker has no
    session for it, so a retained message is not taken again on each reconnect."""

    def __init__(self, port: int) -> None:
        self.got: list[Got] = []
        self.run = 0
        self.connects = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"chaos-verifier-{os.getpid()}",
            clean_session=False,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        self._client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async("127.0.0.1", port, keepalive=10)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._lock:
            self.connects += 1
        if not flags.session_present:
            client.subscribe([(f"{BASE}/detections", 1), (f"{BASE}/errors", 1), (f"{BASE}/health", 1)])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.topic.endswith("/health"):
            return  # an old value, not this moment's
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self.got.append(Got(time.time(), msg.topic, doc, self.run, bool(msg.dup)))

    def messages(self, suffix: str) -> list[Got]:
        with self._lock:
            return [g for g in self.got if g.topic.endswith(suffix)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


# --------------------------------------------------------------------------- the agent


@dataclass
class Run:
    index: int
    started: float
    pid: int
    ended: float | None = None
    end: str = ""  # "kill" or "clean"
    committed: list[int] = field(default_factory=list)  # frame ids on disk after a SIGKILL
    reserved: int | None = None  # the frame id block it had reserved (where the next run starts)
    rss_kb: list[tuple[float, int]] = field(default_factory=list)


class AgentProc:
    def __init__(self, net: Net, config: Path, workdir: Path) -> None:
        self.net = net
        self.config = config
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs: list[Run] = []
        self._log = (workdir / "agent.log").open("ab")

    def start(self, verifier: Verifier) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "ROBOFLOW_API_KEY": KEY}
        argv = self.net.wrap([sys.executable, "-m", "agent", "run", "--config", str(self.config)])
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        verifier.run = len(self.runs)
        self.runs.append(Run(len(self.runs), time.time(), self.proc.pid))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kb(self) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def sample_rss(self) -> None:
        kb = self.rss_kb()
        if kb is not None and self.runs:
            self.runs[-1].rss_kb.append((time.time(), kb))

    def kill(self, db: Path) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        run = self.runs[-1]
        run.ended, run.end = time.time(), "kill"
        run.committed, run.reserved = read_outbox_copy(db, self.workdir / f"killed-{run.index}")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        run = self.runs[-1]
        run.ended, run.end = time.time(), "clean"
        return rc


def read_outbox_copy(db: Path, scratch: Path) -> tuple[list[int], int | None]:
    """Frame ids a dead agent left committed, and its reserved frame id, from a copy (WAL recovered there); the
    reservation from the meta sidecar when it is newer than the database's (reserved while the disk was full)."""
    scratch.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-meta"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copyfile(src, scratch / f"{db.name}{suffix}")
    if not (scratch / db.name).exists():
        return [], None
    conn = sqlite3.connect(scratch / db.name, timeout=5.0)
    try:
        rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY seq").fetchall()
        meta = conn.execute("SELECT value FROM meta WHERE key = ?", (f"frame_id/{CAMERA}",)).fetchone()
        gen = conn.execute("SELECT value FROM meta WHERE key = ?", (GEN_KEY,)).fetchone()
    except sqlite3.DatabaseError:
        return [], None
    finally:
        conn.close()
    sidecar = MetaSidecar(scratch / db.name)
    side_gen, side_meta = sidecar.open()
    sidecar.close()
    if side_gen > (int(gen[0]) if gen and str(gen[0]).isdigit() else 0) and f"frame_id/{CAMERA}" in side_meta:
        meta = (side_meta[f"frame_id/{CAMERA}"],)
    ids = []
    for topic, payload in rows:
        if topic.endswith(("/detections", "/errors")):
            with contextlib.suppress(ValueError, KeyError):
                ids.append(int(json.loads(payload)["frame_id"]))
    return ids, (int(meta[0]) if meta and str(meta[0]).isdigit() else None)


def write_agent_config(
    workdir: Path,
    *,
    net: Net,
    broker: Broker,
    cam: MjpegServer,
    api: FakeRoboflow,
    args: argparse.Namespace,
    model: Path,
    state: Path,
) -> Path:
    doc: dict[str, Any] = {
        "device_id": DEVICE,
        "log_level": "info",
        "cameras": [
            {
                "name": CAMERA,
                "source": cam.url(),
                "fps": args.fps,
                "stall_timeout_s": 3,
                "open_timeout_s": 3,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 2,
            }
        ],
        "inference": {
            "mode": args.inference,
            "confidence": 20,
            "serverless": {
                "api_url": api.url,
                "model_id": MODEL_ID,
                "api_key": "${ROBOFLOW_API_KEY}",
                "connect_timeout_s": 1,
                "timeout_s": TIMEOUT_S,
                "max_in_flight": 2,
                "probe_interval_s": 2,
                "probe_max_s": 10,
            },
            "local": {"model": str(model), "threads": 1},
        },
        "mqtt": {
            "host": broker.agent_host,
            "port": broker.port,
            "keepalive_s": KEEPALIVE_S,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 2,
        },
        "state_dir": str(state),
        "outbox": {"commit_interval_s": 0.5},
        "health": {"interval_s": 1},
    }
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --------------------------------------------------------------------------- faults


class World:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.net = Net()
        self.state = workdir / "state"
        self.tmpfs = False
        self.broker: Broker | None = None
        self.cam: MjpegServer | None = None
        self.api: FakeRoboflow | None = None
        self.agent: AgentProc | None = None
        self.verifier: Verifier | None = None
        self.faults: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}

    @contextlib.contextmanager
    def up(self) -> Iterator[World]:
        try:
            for kind in filter(None, self.args.skip.split(",")):
                if kind not in FAULTS:
                    raise SystemExit(f"--skip: unknown fault {kind!r}; one of {', '.join(FAULTS)}")
                self.skipped[kind] = "--skip"
            self.net.setup()
            if not self.net.enabled:
                self.skipped["broker_blackhole"] = f"no network namespace: {self.net.why_not}"
            self.state.mkdir(parents=True)
            mounted = sh(
                "mount", "-t", "tmpfs", "-o", f"size={self.args.tmpfs_mb}m", "tmpfs", str(self.state), check=False
            )
            self.tmpfs = mounted.returncode == 0
            if not self.tmpfs:
                self.skipped["disk_full"] = f"no tmpfs: {mounted.stderr.strip()}"
            model = self.workdir / "chaos-seg.onnx"
            build_yolov8_seg(model, imgsz=(256, 256), class_names=["circle", "rectangle", "triangle"])
            service = self.net.ip("service", "host")
            self.cam = MjpegServer(fps=8.0, width=320, height=240, tag=1, host=service).start()
            self.api = FakeRoboflow(api_key=KEY, model_id=MODEL_ID, host=service)
            self.api.hang_s = 3600.0  # a hang lasts until the fault ends
            self.broker = Broker(self.workdir, self.net.ip("broker", "host"))
            self.broker.start()
            self.verifier = Verifier(self.broker.local_port)
            config = write_agent_config(
                self.workdir,
                net=self.net,
                broker=self.broker,
                cam=self.cam,
                api=self.api,
                args=self.args,
                model=model,
                state=self.state,
            )
            self.agent = AgentProc(self.net, config, self.workdir)
            yield self
        finally:
            self.teardown()

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            if self.agent is not None and self.agent.alive():
                assert self.agent.proc is not None
                self.agent.proc.kill()
        if self.net.blackholed:
            self.net.blackhole(False)
        for part in (self.verifier, self.api):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()
        if self.cam is not None:
            self.cam.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.tmpfs:
            sh("umount", "-l", str(self.state), check=False)
        if self.net.enabled:
            self.net.cleanup()

    # -- one fault: begin, hold, end

    def fault(self, kind: str, hold_s: float) -> None:
        assert self.agent and self.broker and self.api and self.cam and self.verifier
        record: dict[str, Any] = {"fault": kind, "at": round(time.time() - self.t0, 1), "hold_s": round(hold_s, 1)}
        log(f"fault {kind} for {hold_s:.1f} s")
        if kind == "agent_kill":
            self.agent.kill(self.state / "outbox.sqlite3")
            run = self.agent.runs[-1]
            record.update(committed_on_disk=len(run.committed), reserved=run.reserved)
            self.wait(hold_s)
            self.agent.start(self.verifier)
        elif kind == "kill_in_outage":  # results pile up on disk, then the agent dies with them there
            self.broker.stop()
            self.wait(hold_s)
            self.agent.kill(self.state / "outbox.sqlite3")
            run = self.agent.runs[-1]
            record.update(committed_on_disk=len(run.committed), reserved=run.reserved)
            self.agent.start(self.verifier)
            self.wait(2.0)
            self.broker.start()
        elif kind == "broker_restart":
            self.broker.stop()
            self.wait(hold_s)
            self.broker.start()
        elif kind == "api_refuse":
            self.api.stop()
            self.wait(hold_s)
            self.api.start()
        elif kind in ("api_hang", "api_slow"):
            self.api.set_fault("hang" if kind == "api_hang" else "slow", slow_s=SLOW_S)
            self.wait(hold_s)
            self.api.clear_fault()
        elif kind == "corrupt_jpeg":
            self.cam.corrupt = True
            self.wait(hold_s)
            self.cam.corrupt = False
        elif kind == "camera_drop":
            self.cam.stop()
            self.wait(hold_s)
            self.cam.start()
        elif kind == "disk_full":  # full while the broker is away (so results must be written), then back
            filler = self.state / "filler"
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            record["filler_mb"] = round(filler.stat().st_size / 1e6, 1)
            self.broker.stop()
            self.wait(hold_s)
            self.broker.start()
            self.wait(hold_s / 2)  # delivered from memory while the disk is still full
            filler.unlink()
        elif kind == "broker_blackhole":
            self.net.blackhole(True)
            self.wait(hold_s)
            self.net.blackhole(False)
        self.faults.append(record)

    def wait(self, seconds: float) -> None:
        """Let time pass, sampling the agent's RSS; a crashed agent is a finding, restarted and recorded."""
        assert self.agent and self.verifier
        end = time.monotonic() + seconds
        while True:
            self.agent.sample_rss()
            if self.agent.proc is not None and self.agent.proc.poll() is not None and self.agent.runs[-1].ended is None:
                run = self.agent.runs[-1]
                run.ended, run.end = time.time(), f"crashed rc={self.agent.proc.returncode}"
                run.committed, run.reserved = read_outbox_copy(
                    self.state / "outbox.sqlite3", self.workdir / f"crashed-{run.index}"
                )
                log(f"agent exited by itself: {run.end}; restarting")
                self.agent.start(self.verifier)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(1.0, left))

    # -- the soak

    def soak(self) -> int:
        assert self.agent and self.verifier and self.api
        args = self.args
        rng = random.Random(args.seed)
        self.t0 = time.time()
        self.agent.start(self.verifier)
        if args.mode == "slow-api":
            self.api.set_fault("slow", slow_s=SLOW_S)
        self.wait(args.warmup_s)
        end = time.monotonic() + args.minutes * 60.0
        kinds = [k for k in FAULTS if k not in self.skipped]
        bag: list[str] = []
        while args.mode == "chaos" and time.monotonic() < end:
            if not bag:
                bag = kinds[:]
                rng.shuffle(bag)
            kind = bag.pop()
            hold = rng.uniform(12.0, 25.0) if kind == "broker_blackhole" else rng.uniform(2.0, 12.0)
            self.fault(kind, min(hold, max(1.0, end - time.monotonic())))
            self.wait(rng.uniform(4.0, 12.0))
        if args.mode == "slow-api":
            self.wait(max(0.0, end - time.monotonic()))
            self.api.clear_fault()
        log("faults over: letting the agent catch up, then a clean stop")
        self.wait(15.0)
        self.agent.sample_rss()
        rc = self.agent.stop()
        self.wait_quiet(10.0)
        report = analyse(self, rc)
        text = json.dumps(report, indent=2, default=str)
        print(text)
        if args.report:
            Path(args.report).write_text(text + "\n")
        if args.markdown:
            Path(args.markdown).write_text(render_markdown(report))
        if not report["results"]["messages"]:
            log("no result was delivered at all: the soak itself is broken")
            return 2
        return 1 if report["lost"]["total"] else 0

    def wait_quiet(self, seconds: float) -> None:
        """Until no message arrived for ``seconds`` (what is still in flight lands)."""
        assert self.verifier
        last = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            n = len(self.verifier.got)
            if n == last:
                return
            last = n
            time.sleep(seconds)


# --------------------------------------------------------------------------- analysis


def capture_time(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(doc["timestamp"])).timestamp()


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def _second_half_growth(samples: list[tuple[float, int]]) -> float:
    t0, t1 = samples[0][0], samples[-1][0]
    half = next(kb for t, kb in samples if t >= (t0 + t1) / 2)
    return round(100.0 * (samples[-1][1] - half) / half, 1)


def analyse(world: World, rc: int | None) -> dict[str, Any]:
    assert world.agent and world.verifier
    results = [g for g in world.verifier.got if g.topic.endswith(("/detections", "/errors"))]
    healths = world.verifier.messages("/health")
    runs = world.agent.runs
    seen: dict[int, float] = {}
    duplicates = reused = redelivered = 0
    details: list[dict[str, Any]] = []  # each duplicate and each live result out of order, for the reader
    for g in results:
        fid, ts = int(g.doc["frame_id"]), capture_time(g.doc)
        if fid in seen:
            duplicates += 1
            reused += int(abs(seen[fid] - ts) > 1e-3)  # the same id on another frame: an id used twice
            redelivered += int(g.dup and not g.doc.get("replayed"))  # the broker's, not the agent's
            details.append(
                {
                    "duplicate": fid,
                    "replayed": bool(g.doc.get("replayed")),
                    "dup": g.dup,
                    "at": round(g.at - world.t0, 1),
                }
            )
        else:
            seen[fid] = ts
    delivered = set(seen)
    # order: live results (not replayed) must come in frame order, across restarts too
    live = [g for g in results if not g.doc.get("replayed")]
    breaks = [(a, b) for a, b in itertools.pairwise(live) if int(b.doc["frame_id"]) <= int(a.doc["frame_id"])]
    order_breaks = len(breaks)
    details += [
        {"out_of_order": int(b.doc["frame_id"]), "after": int(a.doc["frame_id"]), "at": round(b.at - world.t0, 1)}
        for a, b in breaks
    ]
    # lost: per run, every id from its first to the highest delivered or committed one
    lost_on_disk: list[int] = []
    gaps: list[int] = []
    lower = 1
    for run in runs:
        upper = run.reserved if run.reserved is not None else max(delivered, default=0)
        mine = [i for i in delivered if lower <= i <= upper]
        top = max([*mine, *run.committed], default=lower - 1)
        lost_on_disk += [i for i in run.committed if i not in delivered]
        gaps += [i for i in range(lower, top + 1) if i not in delivered and i not in run.committed]
        if run.end == "kill" and run.reserved is not None:
            lower = run.reserved + 1
        elif mine:
            lower = max(mine) + 1
    ages = [g.at - capture_time(g.doc) for g in results]
    live_ages = [g.at - capture_time(g.doc) for g in live]
    gaps_between = [b.at - a.at for a, b in itertools.pairwise(live)]
    # the agent's own counters, per run: the last (largest) value each run reported
    per_run: dict[int, dict[str, Any]] = {}
    unaccounted = 0
    problems: set[str] = set()
    for h in healths:
        cam = h.doc.get("cameras", {}).get(CAMERA, {})
        per_run[h.run] = cam
        open_frames = cam.get("frames_sampled", 0) - cam.get("frames_processed", 0) - cam.get("frames_gated", 0)
        unaccounted = max(unaccounted, open_frames)
        problems.update(str(p).split(" since ")[0] for p in h.doc.get("problems", []))
    totals = {
        k: sum(int(c.get(k, 0)) for c in per_run.values())
        for k in (
            "frames_read",
            "frames_sampled",
            "frames_skipped",
            "frames_processed",
            "frames_gated",
            "frames_failed",
        )
    }
    sources: dict[str, int] = {}
    for g in results:
        key = "error" if g.topic.endswith("/errors") else str(g.doc.get("source"))
        sources[key] = sources.get(key, 0) + 1
    rss = [(r.index, r.rss_kb) for r in runs if len(r.rss_kb) >= 2]
    longest = max(rss, key=lambda x: x[1][-1][0] - x[1][0][0], default=None)
    rss_report: dict[str, Any] = {}
    if longest is not None:
        samples = longest[1]
        t0 = samples[0][0]
        settled = [kb for t, kb in samples if t - t0 >= 30.0] or [kb for _, kb in samples]
        rss_report = {
            "run": longest[0],
            "run_s": round(samples[-1][0] - t0, 1),
            "start_mb": round(settled[0] / 1024, 1),
            "end_mb": round(samples[-1][1] / 1024, 1),
            "peak_mb": round(max(kb for _, kb in samples) / 1024, 1),
            "growth_pct": round(100.0 * (samples[-1][1] - settled[0]) / settled[0], 1),
            # the second half alone: what is left once the warm-up (the local model's first runs) is over
            "second_half_growth_pct": _second_half_growth(samples),
            "series_mb": [(round(t - t0), round(kb / 1024, 1)) for t, kb in samples[:: max(1, len(samples) // 12)]],
        }
    fault_counts: dict[str, int] = {}
    for f in world.faults:
        fault_counts[f["fault"]] = fault_counts.get(f["fault"], 0) + 1
    return {
        "mode": world.args.mode,
        "inference": world.args.inference,
        "minutes": world.args.minutes,
        "seed": world.args.seed,
        "fps": world.args.fps,
        "network_namespace": world.net.enabled,
        "skipped_faults": world.skipped,
        "fault_counts": fault_counts,
        "faults": world.faults,
        "agent_runs": [
            {
                "run": r.index,
                "s": round((r.ended or time.time()) - r.started, 1),
                "end": r.end,
                "committed_on_disk": len(r.committed),
                "reserved": r.reserved,
            }
            for r in runs
        ],
        "last_exit_status": rc,
        "frames": totals,
        "max_frames_open": unaccounted,
        "results": {
            "messages": len(results),
            "distinct": len(delivered),
            "by_source": sources,
            "duplicates": duplicates,
            "duplicates_redelivered_by_broker": redelivered,
            "ids_used_twice": reused,
            "live": len(live),
            "replayed": len(results) - len(live),
            "live_order_breaks": order_breaks,
            "details": details[:50],
        },
        "lost": {
            "total": len(lost_on_disk) + len(gaps),
            "committed_at_kill": sorted(lost_on_disk)[:50],
            "gaps": sorted(gaps)[:50],
        },
        "age_s": {
            "worst": _pct(ages, 100),
            "worst_live": _pct(live_ages, 100),
            "live_p50": _pct(live_ages, 50),
            "live_p90": _pct(live_ages, 90),
            "longest_live_silence": _pct(gaps_between, 100),
        },
        "health_problems_seen": sorted(problems),
        "last_health_age_at_publish": (per_run.get(len(runs) - 1) or {}).get("age_at_publish"),
        "rss": rss_report,
        "verifier_connects": world.verifier.connects,
        "load_average": os.getloadavg(),
        "command": " ".join(sys.argv),
    }


def render_markdown(r: dict[str, Any]) -> str:
    """The report as a Markdown section: the faults, what was lost, the figures, the command."""
    held: dict[str, float] = {}
    for f in r["faults"]:
        held[f["fault"]] = held.get(f["fault"], 0.0) + float(f["hold_s"])
    lines = [
        f"### `{r['mode']}` run, {r['minutes']:g} min, inference `{r['inference']}`, seed {r['seed']}",
        "",
        f"Command: `{r['command']}`; load average at the end {', '.join(f'{x:.1f}' for x in r['load_average'])}"
        f" (2 cores shared with other work).",
        "",
    ]
    if r["faults"]:
        lines += ["| fault | times | seconds in all |", "|---|---|---|"]
        lines += [f"| {k} | {n} | {held[k]:.0f} |" for k, n in r["fault_counts"].items()]
        lines.append("")
    for kind, why in r["skipped_faults"].items():
        lines.append(f"- skipped: {kind} ({why})")
    res, fr, age, lost = r["results"], r["frames"], r["age_s"], r["lost"]
    lines += [
        f"- agent runs: {len(r['agent_runs'])} ({sum(1 for a in r['agent_runs'] if a['end'] == 'kill')} SIGKILLed,"
        f" ends: {', '.join(sorted({a['end'] for a in r['agent_runs']}))}); last exit status {r['last_exit_status']}",
        f"- frames read {fr['frames_read']}, sampled and taken {fr['frames_sampled']}, skipped (slot replaced)"
        f" {fr['frames_skipped']}, processed {fr['frames_processed']}, gated {fr['frames_gated']}; at most"
        f" {r['max_frames_open']} taken frames were still under way or waiting for an earlier one at any health report",
        f"- results delivered: {res['distinct']} distinct in {res['messages']} messages ({res['by_source']});"
        f" {res['replayed']} replayed, {res['duplicates']} duplicates"
        f" ({res.get('duplicates_redelivered_by_broker', 0)} redelivered by the broker: DUP flag, not replayed),"
        f" {res['ids_used_twice']} ids used twice",
        f"- **lost (committed, never delivered): {lost['total']}** (on disk at a kill:"
        f" {len(lost['committed_at_kill'])}, gaps below a delivered id: {len(lost['gaps'])})",
        f"- live results out of frame order: {res['live_order_breaks']}"
        + (f" (duplicates and breaks: {res['details']})" if res.get("details") else ""),
        f"- capture to delivery: worst {age['worst']} s, worst live {age['worst_live']} s, live p50"
        f" {age['live_p50']} s, p90 {age['live_p90']} s; longest silence between live results"
        f" {age['longest_live_silence']} s",
        f"- health `age_at_publish` at the end: {r['last_health_age_at_publish']}",
        f"- health problems seen: {', '.join(r['health_problems_seen']) or 'none'}",
    ]
    rss = r["rss"]
    if rss:
        lines.append(
            f"- RSS of the longest run ({rss['run_s']} s): {rss['start_mb']} MB after 30 s, {rss['end_mb']} MB at the"
            f" end, peak {rss['peak_mb']} MB: {rss['growth_pct']:+.1f} %; over its second half"
            f" {rss['second_half_growth_pct']:+.1f} %; (s, MB): {rss['series_mb']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected (default 10)")
    p.add_argument(
        "--mode",
        choices=("chaos", "slow-api"),
        default="chaos",
        help="slow-api: 3 s answers throughout, no other fault",
    )
    p.add_argument("--inference", choices=("auto", "serverless"), default="auto")
    p.add_argument("--fps", type=float, default=4.0, help="the agent's sample rate of the 8 fps camera")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--skip",
        default="",
        help="faults to leave out, comma-separated (agent_kill,kill_in_outage: one agent run, for RSS)",
    )
    p.add_argument("--warmup-s", type=float, default=20.0)
    p.add_argument("--tmpfs-mb", type=int, default=16)
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument("--markdown", help="also write the report as a Markdown section here (for RELIABILITY.md)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, broker store)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="seg-chaos-"))
    log(f"work directory {workdir}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        with World(args, workdir).up() as world:
            return world.soak()
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
