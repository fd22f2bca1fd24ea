"""agent.sdnotify against real AF_UNIX datagram sockets, with the environment set as systemd sets it."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdnotify import Notifier


class Listener:
    """The service manager's end: a bound SOCK_DGRAM socket and the value for $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536).decode("utf-8")

    def fields(self, timeout: float = 2.0) -> list[tuple[str, str]]:
        pairs = []
        for line in self.recv(timeout).splitlines():
            key, _, value = line.partition("=")
            pairs.append((key, value))
        return pairs

    def assert_nothing(self) -> None:
        self.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            self.sock.recv(65536)


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield Listener(sock, path)
        finally:
            sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"seg-agent-test/{os.getpid()}/{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Listener:
    fixture_name = "path_listener" if request.param == "path" else "abstract_listener"
    result: Listener = request.getfixturevalue(fixture_name)
    return result


@pytest.fixture
def systemd_env(monkeypatch: pytest.MonkeyPatch, listener: Listener) -> Listener:
    """The environment of a Type=notify service with WatchdogSec=30, as systemd passes it."""
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return listener


def test_ready_over_both_socket_kinds(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
        assert systemd_env.recv() == "READY=1"


def test_ready_with_status_is_one_datagram(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.ready("3 cameras, mode auto")
        assert systemd_env.fields() == [("READY", "1"), ("STATUS", "3 cameras, mode auto")]
        systemd_env.assert_nothing()


def test_watchdog_interval_and_ping(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.watchdog_interval_s == pytest.approx(15.0)
        assert notifier.watchdog()
        assert systemd_env.recv() == "WATCHDOG=1"


def test_status_stopping_and_extend_timeout(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.status("publishing 4.8 fps\nline two")
        assert systemd_env.recv() == "STATUS=publishing 4.8 fps line two"  # a newline would start a new key
        assert notifier.stopping()
        assert systemd_env.recv() == "STOPPING=1"
        assert notifier.extend_timeout(90)
        assert systemd_env.recv() == "EXTEND_TIMEOUT_USEC=90000000"


def test_several_keys_in_one_datagram_keep_their_order(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.notify(STATUS="draining outbox", STOPPING="1", ERRNO="0")
        assert systemd_env.fields() == [("STATUS", "draining outbox"), ("STOPPING", "1"), ("ERRNO", "0")]
        systemd_env.assert_nothing()


def test_invalid_key_or_no_fields_sends_nothing(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.notify() is False
        assert notifier.notify(status="lower case") is False
        systemd_env.assert_nothing()


def test_long_values_are_cut(systemd_env: Listener) -> None:
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.status("x" * 5000)
        assert systemd_env.recv() == "STATUS=" + "x" * 1024


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    monkeypatch: pytest.MonkeyPatch, path_listener: Listener
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent: not ours
    with Notifier.from_env(os.environ) as notifier:
        assert notifier.watchdog_interval_s is None
        assert notifier.watchdog() is False
        path_listener.assert_nothing()
        assert notifier.ready()  # everything else still goes through
        assert path_listener.recv() == "READY=1"


def test_watchdog_without_pid_applies_to_us(path_listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": path_listener.env_value, "WATCHDOG_USEC": "2000000"}
    with Notifier.from_env(env) as notifier:
        assert notifier.watchdog_interval_s == pytest.approx(1.0)
        assert notifier.watchdog()
        assert path_listener.recv() == "WATCHDOG=1"


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_or_invalid_watchdog_usec_means_no_watchdog(path_listener: Listener, usec: str) -> None:
    env = {"NOTIFY_SOCKET": path_listener.env_value, "WATCHDOG_USEC": usec, "WATCHDOG_PID": str(os.getpid())}
    with Notifier.from_env(env) as notifier:
        assert notifier.enabled
        assert notifier.watchdog_interval_s is None
        assert notifier.watchdog() is False
        path_listener.assert_nothing()


@pytest.mark.parametrize(
    "env",
    [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"WATCHDOG_USEC": "30000000"}],
    ids=["unset", "empty", "relative", "watchdog-only"],
)
def test_without_a_socket_everything_is_a_no_op(env: dict[str, str]) -> None:
    notifier = Notifier.from_env(env)
    assert notifier.enabled is False
    assert notifier.watchdog_interval_s is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False
    assert notifier.notify(READY="1") is False
    notifier.close()
    notifier.close()


def test_send_errors_never_raise_and_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    missing = tempfile.gettempdir() + f"/sdn-missing-{uuid.uuid4().hex}"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": missing, "WATCHDOG_USEC": "1000000"})
    assert notifier.enabled  # the socket exists on our side; nobody listens on the other
    with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG
    notifier.close()


def test_closed_notifier_sends_nothing(path_listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path_listener.env_value})
    notifier.close()
    assert notifier.enabled is False
    assert notifier.ready() is False
    path_listener.assert_nothing()


def test_concurrent_senders_each_send_whole_datagrams(path_listener: Listener) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": path_listener.env_value}) as notifier:

        def send(i: int) -> None:
            for j in range(20):
                notifier.notify(STATUS=f"thread {i} message {j}", X_SEQ=str(j))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        # Receive while they send: a full datagram queue blocks senders until the reader catches up.
        received = [path_listener.fields() for _ in range(80)]
        for t in threads:
            t.join()
        assert all([key for key, _ in fields] == ["STATUS", "X_SEQ"] for fields in received)
        path_listener.assert_nothing()


def test_repr_shows_the_abstract_name_with_at(abstract_listener: Listener) -> None:
    with Notifier.from_env({"NOTIFY_SOCKET": abstract_listener.env_value}) as notifier:
        assert abstract_listener.env_value in repr(notifier)
        assert "\\x00" not in repr(notifier)


def test_full_queue_times_out(monkeypatch: pytest.MonkeyPatch, path_listener: Listener) -> None:
    import agent.sdnotify

    monkeypatch.setattr(agent.sdnotify, "_SEND_TIMEOUT_S", 0.05)
    with Notifier.from_env({"NOTIFY_SOCKET": path_listener.env_value}) as notifier:
        # Nobody reads: the listener's queue fills up, then a send gives up after the timeout.
        assert notifier.status("first") is True
        sent = 1
        while sent < 5000 and notifier.status(f"message {sent}"):
            sent += 1
        assert sent < 5000  # it stopped at a timeout, without raising
