"""Measurements the daemon keeps while it runs, and the health message made from them.

The stages feed the accumulators of :mod:`agent.measures`; :func:`status_line` turns a health document into
systemd's one-line ``STATUS=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["status_line"]


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
