"""The agent's MQTT control side, attached to a built pipeline: commands and Home Assistant discovery.

:func:`attach` makes what the settings turn on (``commands.enabled``, ``home_assistant.discovery``), re-applies
the runtime changes kept from earlier runs and registers the subscriptions, all before the pipeline starts
(so the cameras open with those changes, and the first connect subscribes). Both share one
:class:`agent.inbox.Inbox` thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.commands import Commands
from agent.config import Settings
from agent.homeassistant import Discovery, withdraw_when_connected
from agent.inbox import Inbox
from agent.pipeline import Pipeline

__all__ = ["Remote", "attach"]


@dataclass
class Remote:
    inbox: Inbox
    commands: Commands | None
    discovery: Discovery | None

    def stats(self) -> dict[str, Any] | None:
        """The health topic's ``commands`` section (None with commands off)."""
        return None if self.commands is None else self.commands.stats()

    def stop(self) -> None:
        self.inbox.stop()


def _snapshots_on(settings: Settings) -> bool:
    snapshots = getattr(settings, "snapshots", None)  # the snapshots section (issue 16, item 2) where it exists
    return bool(getattr(snapshots, "enabled", False))


def attach(settings: Settings, pipeline: Pipeline) -> Remote | None:
    """Commands and discovery for ``pipeline`` as the settings ask, not yet running; None if both are off (and
    no discovery from an earlier run is left to withdraw)."""
    inbox = Inbox()
    withdrawing = not settings.home_assistant.discovery and withdraw_when_connected(settings, pipeline.publisher, inbox)
    if not (settings.commands.enabled or settings.home_assistant.discovery or withdrawing):
        return None
    commands = None
    if settings.commands.enabled:
        commands = Commands(
            settings, workers=pipeline.workers, router=pipeline.router, publisher=pipeline.publisher, inbox=inbox
        )
        commands.restore()
        commands.start()
    discovery = None
    if settings.home_assistant.discovery:
        discovery = Discovery(
            settings,
            publisher=pipeline.publisher,
            inbox=inbox,
            classes=settings.home_assistant.classes or pipeline.router.class_names(),
            modes=pipeline.router.modes(),
            commands=commands is not None,
            snapshots=_snapshots_on(settings),
        )
        discovery.start()
    inbox.start()
    return Remote(inbox, commands, discovery)
