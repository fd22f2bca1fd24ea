"""The health message, built from what the stages measure, and systemd's one-line status made from it.

The stages feed the accumulators of :mod:`agent.measures`; :func:`report` reads them (through each stage's
``status()``/``stats()``) into the retained health document; :func:`status_line` turns that document into
systemd's ``STATUS=`` line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from agent import __version__
from agent.config import Settings
from agent.measures import PublishAges
from agent.outbox import OutboxStats
from agent.publisher import PublisherStats
from agent.results import iso_utc
from agent.router import Router
from agent.session_plan import SessionPlan
from agent.worker import CameraWorker

__all__ = ["report", "status_line"]

_SLOW_SHARE = 0.5  # hosted answers slower than this share of the timeout (p50) are named a problem


def _camera(w: CameraWorker, counted: dict[str, Any], ages: PublishAges | None) -> dict[str, Any]:
    """One camera's part of the health document: its capture status and what became of its frames."""
    cam = asdict(w.camera.status())
    cam.pop("name", None)
    cam["detect"] = w.detecting
    cam["frames_paused"] = w.frames_paused
    cam["fps_processed"] = w.processed.rate()
    cam["frames_processed"] = w.processed.total
    cam["frames_gated"] = counted.get("gated", 0)
    cam["frames_failed"] = counted.get("frames_failed", 0) + int(w.crashed)
    if ages is not None:
        cam["age_at_publish"] = ages.summary(w.name)
    return cam


def report(
    *,
    state: str,
    settings: Settings,
    uptime_s: float,
    workers: Sequence[CameraWorker],
    router: Router,
    outbox: OutboxStats,
    mqtt: PublisherStats,
    ages: PublishAges | None = None,
    local: SessionPlan | None = None,
) -> dict[str, Any]:
    """The retained health document: ``state`` is the daemon's (``running`` becomes ``degraded`` when
    something is wrong), ``problems`` says what. ``ages``: each camera's age of results at publish
    (capture to the broker's acknowledgement), shown per camera as ``age_at_publish``. ``local``: the local
    model's sessions and threads and why (``sessions: auto``, :mod:`agent.session_plan`), shown as
    ``inference.local``."""
    routing = router.stats()
    cameras = {w.name: _camera(w, routing["cameras"].get(w.name, {}), ages) for w in workers}
    problems = [f"camera {n} {c['state']}" for n, c in cameras.items() if c["state"] != "streaming"]
    if outbox.degraded:
        problems.append("outbox in memory only")
    if not mqtt.connected:
        problems.append("broker disconnected")
    mode = routing["mode"]
    problems += router.problems()
    hosted = router.latency["serverless"].summary()
    timeout_s = settings.inference.serverless.timeout_s
    p50 = hosted["p50_ms"]
    if p50 is not None and p50 >= _SLOW_SHARE * timeout_s * 1000.0 and mode == "serverless":
        problems.append(f"hosted API slow: answers take {p50 / 1000:.1f} s (p50) of a {timeout_s:g} s timeout")
    inference: dict[str, Any] = {
        "latency": {k: v.summary() for k, v in router.latency.items()},
        "router": routing,
    }
    if local is not None:
        inference["local"] = local.as_dict()
    return {
        "state": str(state) if state != "running" or not problems else "degraded",
        "problems": problems,
        "mode": mode,
        "device_id": settings.device_id,
        "model_id": settings.model_id,
        "version": __version__,
        "uptime_s": round(uptime_s, 1),
        "timestamp": iso_utc(time.time()),
        "cameras": cameras,
        "inference": inference,
        "outbox": asdict(outbox),
        "mqtt": asdict(mqtt),
    }


def status_line(health: Mapping[str, Any]) -> str:
    """A short human line for ``systemctl status``: state, mode, rates and outbox depth."""
    cameras = health.get("cameras", {})
    fps_out = sum(float(c.get("fps_out") or 0.0) for c in cameras.values())
    streaming = sum(1 for c in cameras.values() if c.get("state") == "streaming")
    outbox = health.get("outbox", {})
    parts = [
        str(health.get("state", "?")),
        f"mode {health.get('mode', '?')}",
        f"cameras {streaming}/{len(cameras)} streaming",
        f"{fps_out:.1f} fps out",
        f"outbox {outbox.get('depth', 0)}",
    ]
    if not health.get("mqtt", {}).get("connected", False):
        parts.append("broker disconnected")
    return ", ".join(parts)
