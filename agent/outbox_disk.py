"""The disk side of the outbox: what it holds, mirrored to its SQLite file in batched commits.

:class:`DiskMirror` decides what to write when; :class:`agent.outbox.Outbox` decides what is held (bounds,
expiry, drop policy). The mirror shares the outbox's lock and its ordered map of :class:`Held` entries, and
owns everything that outlives a run: the sequence numbers (a block reserved on disk ahead of use), the meta
values, the commit batching and the flusher thread. A disk error degrades it to memory only (keeping every
entry held, the committed ones read back) and the flusher tries to write everything back every
``retry_interval_s``. The meta values are also kept in a preallocated file beside the database
(:mod:`agent.outbox_sidecar`), so a frame id block reserved while the disk is full survives a SIGKILL.

Lock order: the mirror's db lock before the shared lock, never after; the shared lock is never held while
waiting on the disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from pathlib import Path

from agent.config import OutboxSettings
from agent.outbox_sidecar import GEN_KEY, MetaSidecar
from agent.outbox_store import (
    SEQ_BLOCK,
    STORE_ERRORS,
    IndexRow,
    OutboxStore,
    Row,
    describe,
    open_outbox_file,
)

__all__ = ["DiskMirror", "DiskState", "Held"]

log = logging.getLogger("agent.outbox")

_DELETE_DELAY_S = 1.0  # with commit_interval_s 0: how long deletes and meta may wait for a commit
_IDLE_WAIT_S = 60.0  # the flusher's longest sleep while nothing is dirty


class Held:
    """One entry the outbox holds: its payload in memory until it is committed, then only on disk."""

    __slots__ = ("camera", "created", "on_disk", "payload", "replayed", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes | None,
        created: float,
        *,
        replayed: bool,
        on_disk: bool,
        camera: str | None = None,
    ) -> None:
        self.topic = topic
        self.camera = camera  # whose result it is, for the age at publish (not stored: an earlier run's has None)
        self.payload = payload  # None: only on disk (read back by pending())
        self.created = created
        self.replayed = replayed
        self.on_disk = on_disk


class DiskState(StrEnum):
    MEMORY = "memory"  # no file asked for: memory only, and nothing wrong
    FILE = "file"  # mirrored to the file
    UNUSABLE = "unusable"  # the file could not be opened: memory only for this run
    FAILED = "failed"  # the file failed at run time: memory only, written back once the disk works again


class _Batch:
    """What the next commit writes. Guarded by the shared lock."""

    def __init__(self, flusher_wake: threading.Condition) -> None:
        self._flusher_wake = flusher_wake
        self.new_seqs: list[int] = []  # put, not yet committed (may include acked ones)
        self.new_live = 0  # how many of those are still held
        self.deletes: list[int] = []  # committed, then acked or dropped
        self.meta: dict[str, str] = {}
        self.reserve_due = False
        self.dirty_since: float | None = None  # monotonic time of the first uncommitted change

    def mark_dirty(self) -> None:
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()
            self._flusher_wake.notify_all()

    def maybe_clean(self) -> None:
        """Nothing left to write: forget the dirty mark so a quiet outbox sleeps."""
        if self.new_live == 0 and not self.deletes and not self.meta and not self.reserve_due:
            self.new_seqs.clear()
            self.dirty_since = None

    def clear(self) -> None:
        self.new_seqs.clear()
        self.new_live = 0
        self.deletes.clear()
        self.meta.clear()
        self.reserve_due = False
        self.dirty_since = None

    def take(self, entries: Mapping[int, Held]) -> tuple[list[Row], list[int], dict[str, str], bool]:
        """Empties the batch: the rows to insert, the seqs to delete, the meta, whether to reserve seqs."""
        new_seqs, self.new_seqs = self.new_seqs, []
        inserts: list[Row] = []
        for seq in new_seqs:
            item = entries.get(seq)
            if item is not None and not item.on_disk and item.payload is not None:
                inserts.append((seq, item.topic, item.payload, item.created))
        deletes, self.deletes = self.deletes, []
        meta, self.meta = self.meta, {}
        reserve, self.reserve_due = self.reserve_due, False
        self.dirty_since = None  # entries put during the write mark it again
        return inserts, deletes, meta, reserve

    def rewritten(self, entries: Mapping[int, Held], seqs: Iterable[int], changed_meta: dict[str, str]) -> None:
        """After the whole file was written again: what arrived meanwhile (entries, meta) is due next."""
        self.written(entries, seqs)
        self.new_seqs = [seq for seq, item in entries.items() if not item.on_disk]
        self.new_live = len(self.new_seqs)
        if self.new_live or changed_meta:
            self.meta = changed_meta
            self.mark_dirty()

    def written(self, entries: Mapping[int, Held], seqs: Iterable[int]) -> int:
        """These entries are on disk now: their payloads leave memory; returns how many are still held."""
        held = 0
        for seq in seqs:
            item = entries.get(seq)
            if item is None:
                self.deletes.append(seq)  # acknowledged while it was being written
                self.mark_dirty()
            else:
                item.on_disk = True
                item.payload = None  # read back from disk when it is published
                held += 1
        return held


class DiskMirror:
    """Keeps the outbox's SQLite file in step with what it holds. Thread-safe with the shared lock."""

    def __init__(
        self,
        path: Path | None,
        settings: OutboxSettings,
        entries: OrderedDict[int, Held],
        lock: threading.Lock,
        *,
        retry_interval_s: float,
    ) -> None:
        self._path = path
        self._settings = settings
        self._entries = entries  # the outbox's, guarded by the shared lock
        self._lock = lock
        self._retry_interval_s = retry_interval_s
        self._db_lock = threading.Lock()  # the store; taken before the shared lock, never after
        self._flusher_wake = threading.Condition(lock)
        self._store: OutboxStore | None = None
        self.state = DiskState.MEMORY
        self.error: str | None = None  # the last storage problem, if any
        self.commits = 0  # commit transactions that wrote something
        self.written = 0  # entries inserted into the database
        self._retry_at = 0.0
        self._batch = _Batch(self._flusher_wake)
        self._meta: dict[str, str] = {}
        self._meta_gen = 0  # grows with every meta change; the database and the sidecar say which they hold
        self._sidecar = None if path is None else MetaSidecar(path)
        self._next_seq = 1
        self._reserved = 0  # highest seq reserved on disk
        self._stopping = False
        self._flusher: threading.Thread | None = None

    @property
    def degraded(self) -> bool:
        """Memory only because the disk failed (read with the shared lock held)."""
        return self.state in (DiskState.UNUSABLE, DiskState.FAILED)

    def open(self) -> list[IndexRow]:
        """Opens the file before any other thread uses the outbox; returns ``(seq, topic, created)`` of what an
        earlier run left, oldest first. A path that cannot be used means memory only for this run."""
        if self._path is None or self._sidecar is None:
            return []
        try:
            opened = open_outbox_file(self._path, self._settings.synchronous)  # makes the directory
        except STORE_ERRORS as exc:
            self.state = DiskState.UNUSABLE
            self.error = f"outbox {self._path} cannot be used ({describe(exc)}); keeping results in memory only"
            log.error("%s: they will be lost if the agent stops before they are delivered", self.error)
            side_gen, side_meta = self._sidecar.open()
            with self._lock:
                self._meta, self._meta_gen = side_meta, side_gen
            return []
        meta, gen, from_sidecar = _newest_meta(opened.meta, *self._sidecar.open())
        with self._lock:
            self._store = opened.store
            self.state = DiskState.FILE
            self.error = opened.error
            self._meta, self._meta_gen = meta, gen
            if from_sidecar:  # set after the database last took the meta (the disk was full): the database too
                self._batch.meta = {**meta, GEN_KEY: str(gen)}
                self._batch.mark_dirty()
            self._next_seq = opened.next_seq
            self._reserved = opened.reserved
        if from_sidecar:
            log.info("outbox %s: meta values taken from %s (the database missed them)", self._path, self._sidecar.path)
        return opened.index

    def start(self) -> None:
        """Starts the flusher thread (only if there is a file to write). Idempotent."""
        with self._lock:
            if self._flusher is not None or self._stopping or self._store is None:
                return
            self._flusher = threading.Thread(target=self._flusher_main, name="outbox-flusher", daemon=True)
            self._flusher.start()

    def stop(self) -> None:
        """Stops the flusher, commits what is held and closes the file."""
        with self._lock:
            self._stopping = True
            self._flusher_wake.notify_all()
            flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=10.0)
        self.commit()
        with self._db_lock:
            store, self._store = self._store, None
            if store is not None:
                store.close()
        if self._sidecar is not None:
            self._sidecar.close()

    # ------------------------------------------------------------------ what the outbox tells (hold the lock)

    def take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def added(self, seq: int) -> bool:
        """A new entry is held; True: the caller commits now (``commit_interval_s: 0``)."""
        if self._store is None:
            return False
        self._batch.new_seqs.append(seq)
        self._batch.new_live += 1
        if self._next_seq > self._reserved - SEQ_BLOCK // 2:
            self._batch.reserve_due = True
        return self._changed()

    def removed(self, seq: int, item: Held) -> None:
        """An entry left the outbox (acked, dropped, expired): schedule its delete if it is on disk."""
        if item.on_disk:
            if self._store is not None:
                self._batch.deletes.append(seq)
                self._batch.mark_dirty()
        elif self._store is not None:
            self._batch.new_live -= 1
            self._batch.maybe_clean()

    # ------------------------------------------------------------------ what the outbox asks (take the locks)

    def last_seq(self) -> int:
        with self._lock:
            return self._next_seq - 1

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            if self._meta.get(key) == value:
                return
            self._meta[key] = value
            self._meta_gen += 1
            gen, meta = self._meta_gen, dict(self._meta)
            now = False
            if self._store is not None:
                self._batch.meta[key] = value
                self._batch.meta[GEN_KEY] = str(gen)
                now = self._changed()
        if self._sidecar is not None:
            self._sidecar.write(gen, meta)  # first: it is what a SIGKILL leaves if the database can't take it
        if now:
            self.commit()

    def commit(self) -> None:
        """Writes what changed in one transaction (nothing in memory-only or degraded mode)."""
        with self._db_lock:
            with self._lock:
                store = self._store
                if store is None:
                    return
                inserts, deletes, meta, reserve = self._batch.take(self._entries)
                reserved = self._next_seq - 1 + SEQ_BLOCK if reserve else None
            if not (inserts or deletes or meta or reserved is not None):
                return
            try:
                store.write(inserts, deletes, meta, reserved)
                if deletes and not self._entries:
                    store.shrink()  # the backlog has drained: once per outage, never in steady state
            except STORE_ERRORS as exc:
                self._degrade(exc, "committing")  # the batch is still in memory; recovery writes it all
                return
            with self._lock:
                self.commits += 1
                self.written += len(inserts)
                if reserved is not None:
                    self._reserved = reserved
                self._batch.new_live -= self._batch.written(self._entries, (seq for seq, *_ in inserts))
                self._batch.maybe_clean()

    def read_payloads(self, seqs: list[int]) -> dict[int, bytes]:
        """The payloads of committed entries (those the file no longer has are missing)."""
        with self._db_lock:
            store = self._store
            if store is None:
                return {}
            try:
                return store.read(seqs)
            except STORE_ERRORS as exc:
                self._degrade(exc, "reading")
                return {}

    # ------------------------------------------------------------------ bookkeeping (hold the lock)

    def _changed(self) -> bool:
        """Something is to be written: True to commit at once, else the flusher commits it in a while."""
        if self._settings.commit_interval_s <= 0:
            return True
        self._batch.mark_dirty()
        return False

    # ------------------------------------------------------------------ disk errors (hold the db lock)

    def _degrade(self, exc: BaseException, action: str) -> None:
        """Switches to memory only, keeping everything held."""
        store = self._store
        with self._lock:
            evicted = [seq for seq, item in self._entries.items() if item.payload is None]
        payloads: dict[int, bytes] = {}
        if evicted and store is not None:
            try:
                payloads = store.read(evicted)
            except STORE_ERRORS:
                payloads = {}
        with self._lock:
            lost = _restore_payloads(self._entries, evicted, payloads)
            self._store = None
            self.state = DiskState.FAILED
            self._retry_at = time.monotonic() + self._retry_interval_s
            self._batch.clear()
            self.error = f"outbox {self._path} failed while {action} ({describe(exc)}); keeping results in memory"
            if lost:
                self.error += f"; {lost} results could not be read back and are lost"
            self._flusher_wake.notify_all()
            error = self.error
        if store is not None:
            store.close()
        log.error("%s; retrying the disk every %gs", error, self._retry_interval_s)

    def _recover(self) -> None:
        """After a run-time disk error: write everything held back to a fresh connection."""
        assert self._path is not None
        with self._db_lock:
            with self._lock:
                if self._stopping or self.state is not DiskState.FAILED or self._store is not None:
                    return
                rows: list[Row] = [
                    (seq, item.topic, item.payload, item.created)
                    for seq, item in self._entries.items()
                    if item.payload is not None
                ]
                meta = dict(self._meta)
                gen = self._meta_gen
                reserved = self._next_seq - 1 + SEQ_BLOCK
            try:
                store, _, _, _ = OutboxStore.open(self._path, self._settings.synchronous)
            except STORE_ERRORS as exc:
                self._retry_later(exc)
                return
            try:
                store.rewrite(rows, {**meta, GEN_KEY: str(gen)}, reserved)
            except STORE_ERRORS as exc:
                store.close()
                self._retry_later(exc)
                return
            with self._lock:
                self._store = store
                self.state = DiskState.FILE
                self.error = None
                self._reserved = reserved
                self.commits += 1
                self.written += len(rows)
                changed = {k: v for k, v in self._meta.items() if meta.get(k) != v}
                if self._meta_gen != gen:
                    changed[GEN_KEY] = str(self._meta_gen)
                self._batch.rewritten(self._entries, (seq for seq, *_ in rows), changed)
        log.warning("outbox %s: disk usable again; %d held results written", self._path, len(rows))

    def _retry_later(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self._retry_interval_s
        log.debug("outbox %s still unusable: %s", self._path, describe(exc))

    # ------------------------------------------------------------------ the flusher thread

    def _flusher_main(self) -> None:
        interval = self._settings.commit_interval_s
        delay_s = interval if interval > 0 else _DELETE_DELAY_S
        while True:
            with self._lock:
                action: Callable[[], None] | None = None
                while not self._stopping:
                    now = time.monotonic()
                    dirty_since = self._batch.dirty_since
                    if self._store is not None and dirty_since is not None:
                        remaining = dirty_since + delay_s - now
                        if remaining <= 0:
                            action = self.commit
                            break
                    elif self.state is DiskState.FAILED:  # even with nothing held: the meta must reach the disk
                        remaining = self._retry_at - now
                        if remaining <= 0:
                            action = self._recover
                            break
                    else:
                        remaining = _IDLE_WAIT_S
                    self._flusher_wake.wait(min(remaining, _IDLE_WAIT_S))
                if action is None:
                    return
            try:
                action()
            except Exception:  # never let the flusher die silently
                log.exception("outbox flusher failed")
                time.sleep(1.0)


def _newest_meta(
    db_meta: Mapping[str, str], side_gen: int, side_meta: dict[str, str]
) -> tuple[dict[str, str], int, bool]:
    """The meta values and their generation: the database's, or the sidecar's when they are newer (True)."""
    meta = dict(db_meta)
    db_gen = _gen(meta.pop(GEN_KEY, None))
    return (dict(side_meta), side_gen, True) if side_gen > db_gen else (meta, db_gen, False)


def _restore_payloads(entries: OrderedDict[int, Held], evicted: list[int], payloads: Mapping[int, bytes]) -> int:
    """Puts the payloads read back from disk into the evicted entries; one that could not be read is dropped.
    Returns how many were dropped. The caller holds the shared lock."""
    lost = 0
    for seq in evicted:
        item = entries.get(seq)
        if item is None:
            continue
        data = payloads.get(seq)
        if data is None:
            del entries[seq]
            lost += 1
        else:
            item.payload = data
    return lost


def _gen(value: str | None) -> int:
    """The meta generation the database stored (0: none, as in a file from before the sidecar)."""
    return int(value) if value is not None and value.isdigit() else 0
