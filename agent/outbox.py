"""The outbox: every result is kept here from before it is published until the broker acknowledges it.

An SQLite database in WAL mode holds what has not been acknowledged, so results survive broker outages,
network loss, restarts and power cuts. SD cards wear with small writes, so writes are batched:

* :meth:`Outbox.put` keeps the entry in memory and marks the outbox dirty. A background flusher (started by
  :meth:`Outbox.start`, stopped by :meth:`Outbox.stop`) commits everything dirty ``commit_interval_s`` after
  the first uncommitted change (it sleeps while nothing is dirty). ``commit_interval_s: 0`` commits inside
  :meth:`put`.
* :meth:`Outbox.ack` removes an entry. One acknowledged before its commit never touches the disk, so a
  healthy broker means (almost) no disk writes. Deletes of committed entries are batched like inserts.
* Committed payloads are dropped from memory and read back when they are published, so a long outage
  costs disk, not RAM; memory holds a small index entry per result.
* A committed entry survives SIGKILL always; a power cut may lose the last commit interval
  (``synchronous: normal``) or nothing committed (``full``).
* Sequence numbers only grow, across restarts too: a block of them is reserved on disk ahead of use.
* Meta values (the cameras' frame id reservations) are also written, in place, to a preallocated file
  beside the database (:mod:`agent.outbox_sidecar`), so one set while the disk is full survives a SIGKILL.
* Bounds: ``max_messages`` (``drop_oldest`` or ``drop_newest``) and ``max_age_s``, both counted.
* What an earlier run left behind comes out first, in order, with ``replayed=True``.
* Disk errors never crash the agent: the outbox degrades to memory only (loudly: ``stats().error`` and an
  error log line), keeps everything it holds, and tries to write it all back every ``retry_interval_s``.
  A database that is not a database or is corrupt is moved aside (``*.corrupt-<time>``) and a new one
  started; a path that can't be opened at all means memory only for this run.

This module is the queue policy: what is held, in which order, bounds and expiry. Writing it to disk is
:mod:`agent.outbox_disk`'s, the SQL :mod:`agent.outbox_store`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import OutboxSettings
from agent.outbox_disk import DiskMirror, Held
from agent.outbox_store import IndexRow

__all__ = ["Outbox", "OutboxEntry", "OutboxError", "OutboxStats"]

log = logging.getLogger("agent.outbox")


class OutboxError(Exception):
    """Misuse of the outbox (a put after close); disk problems never raise."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    topic: str
    payload: bytes
    created: float
    replayed: bool  # written by an earlier run of the process


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  # entries held (not yet acknowledged), in flight included
    dropped_full: int
    dropped_age: int
    degraded: bool  # memory only because the disk failed
    error: str | None  # the last storage problem, if any
    oldest_age_s: float | None
    committed: int  # commit transactions that wrote something
    written_to_disk: int  # entries inserted into the database


class Outbox:
    """A persistent FIFO of results awaiting acknowledgement. Thread-safe.

    The file is opened here, so what an earlier run left is held (and ``stats()``, ``last_seq()`` and
    ``get_meta()`` say so) from the start; :meth:`start` only starts the flusher thread. Until then entries are
    written by :meth:`flush`, :meth:`stop` and ``commit_interval_s: 0`` alone. ``with Outbox(...)`` starts it
    and stops it.
    """

    def __init__(
        self,
        path: Path | None,
        settings: OutboxSettings,
        *,
        clock: Callable[[], float] = time.time,
        retry_interval_s: float = 60.0,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()  # the in-memory state, shared with the disk mirror
        self._changed = threading.Condition(self._lock)  # wait(): new entries and wake()
        self._entries: OrderedDict[int, Held] = OrderedDict()
        self._topics: dict[str, str] = {}
        self._woken = False
        self._closed = False
        self._dropped_full = 0
        self._dropped_age = 0
        self._delivered: Callable[[str, float], None] | None = None
        self._disk = DiskMirror(
            None if path is None else Path(path), settings, self._entries, self._lock, retry_interval_s=retry_interval_s
        )
        index = self._disk.open()
        if index:
            self._restore(path, index)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Starts the flusher thread that commits in batches (none without a usable file). Idempotent."""
        self._disk.start()

    def stop(self) -> None:
        """Stops the flusher, commits what is held and closes the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._disk.stop()
        with self._lock:
            lost = len(self._entries) if self._disk.degraded else 0
        if lost:
            log.error("outbox closed in memory-only mode: %d undelivered results are lost", lost)

    def close(self) -> None:
        """The same as :meth:`stop`."""
        self.stop()

    def __enter__(self) -> Outbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ public API

    def put(self, topic: str, payload: bytes, *, created: float | None = None, camera: str | None = None) -> int:
        """Keeps a result until it is acknowledged; returns its seq (with ``drop_newest`` on a full outbox
        the seq of a result that was dropped at once). ``camera``: whose result it is; its acknowledgement
        is then reported to :meth:`on_delivered`'s listener."""
        if not topic:
            raise ValueError("empty topic")
        data = bytes(payload)
        with self._lock:
            if self._closed:
                raise OutboxError("outbox is closed")
            now = self._clock()
            stamp = now if created is None else float(created)
            seq = self._disk.take_seq()
            self._expire(now)
            if len(self._entries) >= self._settings.max_messages:
                if self._settings.drop_policy == "drop_newest":
                    self._dropped_full += 1
                    log.debug("outbox full (%d): dropped the newest result, seq %d", len(self._entries), seq)
                    return seq
                while len(self._entries) >= self._settings.max_messages:
                    old_seq, old = self._entries.popitem(last=False)
                    self._disk.removed(old_seq, old)
                    self._dropped_full += 1
            self._entries[seq] = Held(
                self._topics.setdefault(topic, topic), data, stamp, replayed=False, on_disk=False, camera=camera
            )
            self._changed.notify_all()
            commit_now = self._disk.added(seq)
        if commit_now:
            self._disk.commit()
        return seq

    def wait(self, after_seq: int, timeout: float) -> bool:
        """Blocks until an entry with seq > after_seq is held (True), or until timeout or wake() (False)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                if self._entries and next(reversed(self._entries)) > after_seq:
                    return True
                if self._woken:
                    self._woken = False
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)

    def wake(self) -> None:
        """Makes the current (or next) wait() return at once."""
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    def pending(self, after_seq: int, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` held entries with seq > after_seq, oldest first."""
        if limit <= 0:
            return []
        picked: list[tuple[int, Held, bytes | None]] = []
        with self._lock:
            now = self._clock()
            self._expire(now)
            expired: list[int] = []
            horizon = self._age_horizon(now)
            for seq, item in self._entries.items():
                if seq <= after_seq:
                    continue
                if horizon is not None and item.created < horizon:
                    expired.append(seq)  # older than the front (a caller-given created): expire it too
                    continue
                picked.append((seq, item, item.payload))
                if len(picked) >= limit:
                    break
            for seq in expired:
                self._disk.removed(seq, self._entries.pop(seq))
                self._dropped_age += 1
        missing = [seq for seq, _, payload in picked if payload is None]
        loaded: dict[int, bytes] = {}
        if missing:
            loaded = self._disk.read_payloads(missing)
        out: list[OutboxEntry] = []
        for seq, item, payload in picked:
            data = payload if payload is not None else loaded.get(seq)
            if data is None:
                with self._lock:
                    data = item.payload if self._entries.get(seq) is item else None
            if data is None:
                continue  # acknowledged or dropped meanwhile
            out.append(OutboxEntry(seq, item.topic, data, item.created, item.replayed))
        return out

    def on_delivered(self, listener: Callable[[str, float], None] | None) -> None:
        """``listener(camera, created)`` is called for each acknowledged entry put with a ``camera`` (on the
        acknowledging thread, outside the outbox's lock: it must be quick and must not call the outbox).
        Entries dropped by the bounds and an earlier run's entries are not reported."""
        self._delivered = listener

    def ack(self, seq: int) -> None:
        """The entry was delivered: remove it (from disk at the next commit). Unknown seqs are ignored."""
        with self._lock:
            item = self._entries.pop(seq, None)
            if item is not None:
                self._disk.removed(seq, item)
            listener = self._delivered
        if item is not None and item.camera is not None and listener is not None:
            listener(item.camera, item.created)

    def flush(self) -> None:
        """Commits now (no-op in memory-only or degraded mode)."""
        self._disk.commit()

    def last_seq(self) -> int:
        """The highest seq handed out so far (0 before the first put of a new database)."""
        return self._disk.last_seq()

    def stats(self) -> OutboxStats:
        with self._lock:
            now = self._clock()
            if not self._closed:
                self._expire(now)
            oldest = None
            if self._entries:
                oldest = max(0.0, now - self._entries[next(iter(self._entries))].created)
            return OutboxStats(
                depth=len(self._entries),
                dropped_full=self._dropped_full,
                dropped_age=self._dropped_age,
                degraded=self._disk.degraded,
                error=self._disk.error,
                oldest_age_s=oldest,
                committed=self._disk.commits,
                written_to_disk=self._disk.written,
            )

    def get_meta(self, key: str) -> str | None:
        return self._disk.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        """A small persistent value, written with the next commit (at once with commit_interval_s 0)."""
        self._disk.set_meta(key, value)

    # ------------------------------------------------------------------ bounds (hold _lock)

    def _restore(self, path: Path | None, index: list[IndexRow]) -> None:
        """Holds what an earlier run left (marked replayed), within this run's bounds."""
        with self._lock:
            for seq, topic, created in index:
                self._entries[seq] = Held(
                    self._topics.setdefault(topic, topic), None, created, replayed=True, on_disk=True
                )
            trimmed = 0
            while len(self._entries) > self._settings.max_messages:
                seq, item = self._entries.popitem(last=self._settings.drop_policy == "drop_newest")
                self._disk.removed(seq, item)
                trimmed += 1
            self._dropped_full += trimmed
            self._expire(self._clock())
            held = len(self._entries)
        log.info(
            "outbox %s: %d results from an earlier run will be sent first%s",
            path,
            held,
            f" ({trimmed} over max_messages dropped)" if trimmed else "",
        )

    def _age_horizon(self, now: float) -> float | None:
        max_age = self._settings.max_age_s
        return now - max_age if max_age > 0 else None

    def _expire(self, now: float) -> None:
        horizon = self._age_horizon(now)
        if horizon is None:
            return
        while self._entries:
            seq = next(iter(self._entries))
            item = self._entries[seq]
            if item.created >= horizon:
                break
            del self._entries[seq]
            self._disk.removed(seq, item)
            self._dropped_age += 1
