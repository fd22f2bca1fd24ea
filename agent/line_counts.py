"""Line counts that survive a restart: ``{state_dir}/line_counts.json``.

The crossings of each camera's lines (``{line}/{in|out}/{class|all}``, :meth:`agent.events.CameraEvents.
crossed`) are written to one small JSON file, whole or not at all (a temporary file, fsync, rename), when
they changed, at most once per ``interval_s`` (2 s), and always when the cameras stop; they are read at the
next start, so the counts go on from where they were. A count of a camera or a line no longer in config.yaml
is dropped at start (and so from the file at its next write). After a ``kill -9`` or a power loss the
crossings of the last ``interval_s`` at most (those not yet written) are lost.

Live counts (tracks in a zone or in the camera now) are not kept: they are what is in view, and a restart
starts with no tracks.

File layout: ``{"cameras": {camera: {"gate/in/person": 3, "gate/in/all": 3, ...}}}``. No I/O at import;
one :class:`LineCountStore` is shared by the cameras' workers (a lock guards it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.state_files import load_json, save_json_atomic

__all__ = ["FILE_NAME", "LineCountStore"]

log = logging.getLogger(__name__)

FILE_NAME = "line_counts.json"
_DIRECTIONS = ("in", "out")


class LineCountStore:
    """Each camera's line counts, read once at start, written when they change (throttled) and at stop."""

    def __init__(
        self,
        path: Path,
        lines: Mapping[str, set[str]],
        *,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``lines``: each configured camera's line names (counts of others are dropped)."""
        self._path = path
        self._lines = {cam: set(names) for cam, names in lines.items()}
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}
        self._dirty = False
        self._written_at: float | None = None
        self._warned = False

    def load(self) -> dict[str, dict[str, int]]:
        """The kept counts of the configured cameras and lines (nothing if the file is missing or unreadable:
        the log says why)."""
        doc = load_json(self._path, log, "line counts start at 0")
        cams = doc.get("cameras")
        kept: dict[str, dict[str, int]] = {}
        dropped = 0
        for cam, counts in (cams if isinstance(cams, dict) else {}).items():
            if not isinstance(counts, dict):
                continue
            for key, value in counts.items():
                if self._valid(cam, key, value):
                    kept.setdefault(cam, {})[key] = value
                else:
                    dropped += 1
        if dropped:
            log.info("%d kept line count(s) dropped: their camera or line is no longer configured", dropped)
            self._dirty = True  # the file loses them at the next write
        with self._lock:
            self._counts = {cam: dict(c) for cam, c in kept.items()}
        return kept

    def _valid(self, cam: str, key: object, value: object) -> bool:
        if not isinstance(key, str) or not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return False
        parts = key.split("/")
        return len(parts) == 3 and parts[0] in self._lines.get(cam, ()) and parts[1] in _DIRECTIONS and bool(parts[2])

    def update(self, camera: str, counts: Mapping[str, int]) -> bool:
        """A camera's line counts now; written if they changed and the last write is ``interval_s`` old.
        Returns whether the file was written."""
        with self._lock:
            if self._counts.get(camera, {}) != counts:
                self._counts[camera] = dict(counts)
                self._dirty = True
            now = self._clock()
            if not self._dirty or (self._written_at is not None and now - self._written_at < self._interval):
                return False
            return self._write(now)

    def flush(self) -> bool:
        """Write what changed since the last write (the cameras stopped)."""
        with self._lock:
            return self._dirty and self._write(self._clock())

    def _write(self, now: float) -> bool:
        self._written_at = now  # a failed write is not tried again at once either
        try:
            save_json_atomic(self._path, {"cameras": self._counts})
        except OSError as exc:
            if not self._warned:  # once: state_dir may be unwritable for good (the outbox says so too)
                log.warning("line counts can't be kept in %s (%s): they will start at 0 next run", self._path, exc)
                self._warned = True
            return False
        self._dirty = False
        return True
