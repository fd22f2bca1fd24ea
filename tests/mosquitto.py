"""Throwaway real Mosquitto brokers and a recording subscriber, for tests.

``Mosquitto(workdir)`` writes a config file (loopback listener on a free port, optional TLS listener,
optional password file, ``persistence`` off unless asked) and runs ``mosquitto -c``; ``stop()`` sends
SIGTERM (an outage), ``start()`` brings it back on the same port. ``Subscriber`` is a paho client that
records every message (topic, payload, retain) and (re)subscribes on every connect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A test CA and a server certificate for localhost / 127.0.0.1 (EC keys: fast), via the openssl CLI."""
    if OPENSSL is None:
        raise RuntimeError("openssl is not installed")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = d / "server.ext"
    ext.write_text(
        "basicConstraints = CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-x509", *ec, *ca_ext, "-keyout", str(ca_key), "-out", str(ca), "-days", "3", "-subj", "/CN=test CA")
    openssl("req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    signing = ("-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "3", "-extfile", str(ext))
    openssl("x509", "-req", "-in", str(csr), *signing, "-out", str(cert))
    return TlsFiles(ca=ca, cert=cert, key=key)


class Mosquitto:
    """One broker process. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        acl_file: Path | None = None,
    ) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls_port = free_port() if tls is not None else None
        self.tls = tls
        self.users = dict(users or {})
        self.persistence = persistence
        self.acl_file = acl_file
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.users:
            if MOSQUITTO_PASSWD is None:
                raise RuntimeError("mosquitto_passwd is not installed")
            pwfile = self.workdir / "passwd"
            pwfile.unlink(missing_ok=True)
            for i, (user, password) in enumerate(self.users.items()):
                args = [MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(pwfile), user, password]
                subprocess.run(args, check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence:
            store = self.workdir / "store"
            store.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/", "max_queued_messages 0"]
        else:
            lines.append("persistence false")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")
        lines += [f"log_dest file {self.log_path}", "log_type all"]
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
                "tls_version tlsv1.2",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        assert MOSQUITTO is not None
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        while not all(port_open(p) for p in ports):
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mosquitto did not open port {self.port} in {timeout}s:\n{self.log()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (a clean broker shutdown; with persistence it saves sessions)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5.0)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    dup: bool


class Subscriber:
    """Records every message on ``topics`` (QoS 1 by default); resubscribes after every reconnect.

    ``client_id`` with ``clean_session=False`` keeps the session (and messages queued for it) across
    disconnects, on a broker started with ``persistence=True`` across broker restarts too.
    """

    def __init__(
        self,
        port: int,
        topics: str | Iterable[str],
        *,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "",
        clean_session: bool = True,
        timeout: float = 5.0,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self.messages: list[Received] = []
        self.connects = 0
        self._cond = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._subscribed = 0
        self._client.connect_async("127.0.0.1", port, keepalive=10)
        self._client.loop_start()
        if not self.wait_until(lambda: self._subscribed > 0, timeout):
            self.close()
            raise TimeoutError(f"subscriber could not subscribe on port {port}")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        with self._cond:
            self.connects += 1
        client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, rcs: object, props: object) -> None:
        with self._cond:
            self._subscribed += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup)))
            self._cond.notify_all()

    @property
    def subscriptions(self) -> int:
        """How many SUBACKs arrived (one per (re)connect)."""
        with self._cond:
            return self._subscribed

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))
            return True

    def received(self, topic: str | None = None) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.received(topic)]

    def wait_for_count(self, count: int, topic: str | None = None, timeout: float = 5.0) -> bool:
        return self.wait_until(
            lambda: sum(1 for m in self.messages if topic is None or m.topic == topic) >= count, timeout
        )

    def wait_for_payload(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: any(m.topic == topic and m.payload == payload for m in self.messages), timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpProxy:
    """A loopback TCP relay to a broker port, for network faults that a broker restart can't give.

    ``drop_upstream`` discards what clients send (PUBLISHes vanish, nothing is acknowledged),
    ``drop_downstream`` discards what the broker sends (PUBACKs are lost); ``cut()`` closes every relayed
    connection without a word, like a dead link; new connections are relayed as the flags say.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_upstream = False
        self.drop_downstream = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not (self.drop_upstream if up else self.drop_downstream):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()
