"""Shared fixtures. Sections: MQTT (real Mosquitto brokers and subscribers); the agent as a process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mosquitto import MOSQUITTO, OPENSSL, Mosquitto, Subscriber, TlsFiles, make_tls_files
from tests.onnx_models import build_yolov8_seg
from tests.test_daemon import AgentProcess

# --------------------------------------------------------------------------- MQTT


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """``make_broker(**Mosquitto kwargs, start=True)``: brokers stopped at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    brokers: list[Mosquitto] = []

    def make(*, start: bool = True, **kwargs: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"broker{len(brokers)}", **kwargs)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def broker(make_broker: Callable[..., Mosquitto]) -> Mosquitto:
    """A running anonymous broker on a free loopback port."""
    return make_broker()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA and a server certificate for localhost/127.0.0.1."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def make_subscriber() -> Iterator[Callable[..., Subscriber]]:
    """``make_subscriber(port, topics, **Subscriber kwargs)``: subscribers closed at teardown."""
    subscribers: list[Subscriber] = []

    def make(port: int, topics: str | list[str], **kwargs: Any) -> Subscriber:
        sub = Subscriber(port, topics, **kwargs)
        subscribers.append(sub)
        return sub

    yield make
    for sub in subscribers:
        sub.close()


# --------------------------------------------------------------------------- the agent as a process


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small YOLOv8-seg-layout model (256 input) that finds circles, rectangles and triangles."""
    path = tmp_path_factory.mktemp("model") / "test-seg.onnx"
    build_yolov8_seg(path, imgsz=(256, 256), class_names=["circle", "rectangle", "triangle"])
    return path


@pytest.fixture
def run_agent() -> Iterator[Callable[..., AgentProcess]]:
    """``run_agent(config, env=None)``: ``seg-agent run`` processes, closed at teardown."""
    agents: list[AgentProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(config, env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.close()
