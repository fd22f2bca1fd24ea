"""One operator thread for what arrives from the broker: paho's callbacks only post work here, never block.

MQTT handlers (commands, Home Assistant's birth message) and connect hooks run on paho's network thread;
what they trigger (validating, calling a stage, writing a small file, publishing) runs here, one job at a
time, in the order posted. The queue is bounded: a flood of messages is dropped and counted, not queued.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["Inbox"]

log = logging.getLogger("agent.daemon")

_POLL_S = 0.5


class Inbox:
    """A bounded job queue and the thread that runs it. ``post`` is safe from any thread, never blocks."""

    def __init__(self, *, size: int = 256) -> None:
        self._jobs: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-inbox", daemon=True)
        self.dropped = 0  # jobs refused because the queue was full

    def post(self, job: Callable[[], object]) -> bool:
        """Queue ``job``; False (and counted) when the queue is full or the inbox stopped."""
        if self._stop.is_set():
            return False
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the job under way (jobs still queued are dropped)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            try:
                job()
            except Exception:  # a bug in one job must not end the others
                log.exception("MQTT inbox job failed")
