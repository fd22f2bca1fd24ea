"""The outbox: every result is kept here from before it is published until the broker acknowledges it.

An SQLite database in WAL mode holds what has not been acknowledged, so results survive broker outages,
network loss, restarts and power cuts. SD cards wear with small writes, so writes are batched:

* :meth:`Outbox.put` keeps the entry in memory and marks the outbox dirty. A background flusher commits
  everything dirty ``commit_interval_s`` after the first uncommitted change (it sleeps while nothing is
  dirty). ``commit_interval_s: 0`` commits inside :meth:`put`.
* :meth:`Outbox.ack` removes an entry. One acknowledged before its commit never touches the disk, so a
  healthy broker means (almost) no disk writes. Deletes of committed entries are batched like inserts.
* Committed payloads are dropped from memory and read back when they are published, so a long outage
  costs disk, not RAM; memory holds a small index entry per result.
* A committed entry survives SIGKILL always; a power cut may lose the last commit interval
  (``synchronous: normal``) or nothing committed (``full``).
* Sequence numbers only grow, across restarts too: a block of them is reserved on disk ahead of use.
* Bounds: ``max_messages`` (``drop_oldest`` or ``drop_newest``) and ``max_age_s``, both counted.
* What an earlier run left behind comes out first, in order, with ``replayed=True``.
* Disk errors never crash the agent: the outbox degrades to memory only (loudly: ``stats().error`` and an
  error log line), keeps everything it holds, and tries to write it all back every ``retry_interval_s``.
  A database that is not a database or is corrupt is moved aside (``*.corrupt-<time>``) and a new one
  started; a path that can't be opened at all means memory only for this run.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import OutboxSettings

__all__ = ["Outbox", "OutboxEntry", "OutboxError", "OutboxStats"]

log = logging.getLogger("agent.outbox")

_WAL_LIMIT_BYTES = 4 * 1024 * 1024
_SEQ_BLOCK = 100_000  # sequence numbers reserved on disk at a time (one tiny write per block)
_DELETE_DELAY_S = 1.0  # with commit_interval_s 0: how long deletes and meta may wait for a commit
_IDLE_WAIT_S = 60.0  # the flusher's longest sleep while nothing is dirty
_READ_CHUNK = 500  # seqs per SELECT ... IN (...)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


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


class _Item:
    __slots__ = ("created", "on_disk", "payload", "replayed", "topic")

    def __init__(self, topic: str, payload: bytes | None, created: float, replayed: bool, on_disk: bool) -> None:
        self.topic = topic
        self.payload = payload  # None: only on disk (read back by pending())
        self.created = created
        self.replayed = replayed
        self.on_disk = on_disk


_Row = tuple[int, str, bytes, float]


class _Store:
    """The SQLite file. Not thread-safe by itself: the outbox serialises all use with its db lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path, synchronous: str) -> tuple[_Store, list[tuple[int, str, float]], dict[str, str], int]:
        """Opens (creating if needed); returns the store, the index of stored entries, meta, reserved seq."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            # A long outage can hold many MB; give the space back once it drains (SD cards are small): free
            # pages are released by incremental vacuum (takes effect on new files), the WAL truncated at 4 MB.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                log.warning("outbox %s: WAL mode not available (journal_mode=%s)", path, mode and mode[0])
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            conn.executescript(_SCHEMA)
            index = [
                (int(seq), str(topic), float(created))
                for seq, topic, created in conn.execute("SELECT seq, topic, created FROM outbox ORDER BY seq")
            ]
            meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            row = conn.execute("SELECT value FROM counters WHERE name = 'seq_reserved'").fetchone()
            reserved = int(row[0]) if row else 0
        except BaseException:
            conn.close()
            raise
        return cls(conn), index, meta, reserved

    def write(
        self,
        inserts: Sequence[_Row],
        deletes: Sequence[int],
        meta: dict[str, str],
        reserved: int | None,
        *,
        replace_all: bool = False,
    ) -> None:
        """One transaction: all of it or nothing."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if replace_all:
                c.execute("DELETE FROM outbox")
            if deletes:
                c.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in deletes])
            if inserts:
                c.executemany(
                    "INSERT OR REPLACE INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)", inserts
                )
            if meta:
                c.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
            if reserved is not None:
                c.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('seq_reserved', ?)", (reserved,))
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back by itself (disk full)
                c.execute("ROLLBACK")
            raise

    def shrink(self) -> None:
        """Return free pages to the file system and truncate the WAL (after a backlog has drained)."""
        self._conn.execute("PRAGMA incremental_vacuum")
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def read(self, seqs: Iterable[int]) -> dict[int, bytes]:
        wanted = sorted(seqs)
        out: dict[int, bytes] = {}
        for i in range(0, len(wanted), _READ_CHUNK):
            chunk = wanted[i : i + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))
            for seq, payload in self._conn.execute(f"SELECT seq, payload FROM outbox WHERE seq IN ({marks})", chunk):
                out[int(seq)] = bytes(payload)
        return out

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


def _is_corrupt(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorname", "") in _CORRUPT


class Outbox:
    """A persistent FIFO of results awaiting acknowledgement. Thread-safe."""

    def __init__(
        self,
        path: Path | None,
        settings: OutboxSettings,
        *,
        clock: Callable[[], float] = time.time,
        retry_interval_s: float = 60.0,
    ) -> None:
        self._path = path
        self._settings = settings
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._lock = threading.Lock()  # the in-memory state; never held while waiting on the disk
        self._db_lock = threading.Lock()  # the store; taken before _lock, never after
        self._changed = threading.Condition(self._lock)  # wait(): new entries and wake()
        self._flusher_wake = threading.Condition(self._lock)
        self._items: OrderedDict[int, _Item] = OrderedDict()
        self._new_seqs: list[int] = []  # put, not yet committed (may include acked ones)
        self._new_live = 0  # how many of those are still held
        self._deletes: list[int] = []  # committed, then acked or dropped
        self._meta: dict[str, str] = {}
        self._meta_dirty: dict[str, str] = {}
        self._topics: dict[str, str] = {}
        self._next_seq = 1
        self._reserved = 0  # highest seq reserved on disk
        self._reserve_due = False
        self._dirty_since: float | None = None  # monotonic time of the first uncommitted change
        self._woken = False
        self._closed = False
        self._store: _Store | None = None
        self._degraded = False
        self._recoverable = False  # degraded at run time (the file is ours): rewrite everything later
        self._retry_at = 0.0
        self._error: str | None = None
        self._dropped_full = 0
        self._dropped_age = 0
        self._commits = 0
        self._written = 0
        self._flusher: threading.Thread | None = None
        if path is not None:
            self._open(Path(path))
            if self._store is not None:
                self._flusher = threading.Thread(target=self._flusher_main, name="outbox-flusher", daemon=True)
                self._flusher.start()

    # ------------------------------------------------------------------ public API

    def put(self, topic: str, payload: bytes, *, created: float | None = None) -> int:
        """Keeps a result until it is acknowledged; returns its seq (with ``drop_newest`` on a full outbox
        the seq of a result that was dropped at once)."""
        if not topic:
            raise ValueError("empty topic")
        data = bytes(payload)
        sync = False
        with self._lock:
            if self._closed:
                raise OutboxError("outbox is closed")
            now = self._clock()
            stamp = now if created is None else float(created)
            seq = self._next_seq
            self._next_seq += 1
            self._expire(now)
            if len(self._items) >= self._settings.max_messages:
                if self._settings.drop_policy == "drop_newest":
                    self._dropped_full += 1
                    log.debug("outbox full (%d): dropped the newest result, seq %d", len(self._items), seq)
                    return seq
                while len(self._items) >= self._settings.max_messages:
                    old_seq, old = self._items.popitem(last=False)
                    self._forget(old_seq, old)
                    self._dropped_full += 1
            item = _Item(self._topics.setdefault(topic, topic), data, stamp, False, False)
            self._items[seq] = item
            self._changed.notify_all()
            if self._store is not None:
                self._new_seqs.append(seq)
                self._new_live += 1
                if self._next_seq > self._reserved - _SEQ_BLOCK // 2:
                    self._reserve_due = True
                if self._settings.commit_interval_s <= 0:
                    sync = True
                else:
                    self._mark_dirty()
        if sync:
            self._commit()
        return seq

    def wait(self, after_seq: int, timeout: float) -> bool:
        """Blocks until an entry with seq > after_seq is held (True), or until timeout or wake() (False)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                if self._items and next(reversed(self._items)) > after_seq:
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
        picked: list[tuple[int, _Item, bytes | None]] = []
        with self._lock:
            now = self._clock()
            self._expire(now)
            expired: list[int] = []
            horizon = self._age_horizon(now)
            for seq, item in self._items.items():
                if seq <= after_seq:
                    continue
                if horizon is not None and item.created < horizon:
                    expired.append(seq)  # older than the front (a caller-given created): expire it too
                    continue
                picked.append((seq, item, item.payload))
                if len(picked) >= limit:
                    break
            for seq in expired:
                self._forget(seq, self._items.pop(seq))
                self._dropped_age += 1
        missing = [seq for seq, _, payload in picked if payload is None]
        loaded: dict[int, bytes] = {}
        if missing:
            loaded = self._read_payloads(missing)
        out: list[OutboxEntry] = []
        for seq, item, payload in picked:
            data = payload if payload is not None else loaded.get(seq)
            if data is None:
                with self._lock:
                    data = item.payload if self._items.get(seq) is item else None
            if data is None:
                continue  # acknowledged or dropped meanwhile
            out.append(OutboxEntry(seq, item.topic, data, item.created, item.replayed))
        return out

    def ack(self, seq: int) -> None:
        """The entry was delivered: remove it (from disk at the next commit). Unknown seqs are ignored."""
        with self._lock:
            item = self._items.pop(seq, None)
            if item is not None:
                self._forget(seq, item)

    def flush(self) -> None:
        """Commits now (no-op in memory-only or degraded mode)."""
        self._commit()

    def last_seq(self) -> int:
        """The highest seq handed out so far (0 before the first put of a new database)."""
        with self._lock:
            return self._next_seq - 1

    def stats(self) -> OutboxStats:
        with self._lock:
            now = self._clock()
            if not self._closed:
                self._expire(now)
            oldest = None
            if self._items:
                oldest = max(0.0, now - self._items[next(iter(self._items))].created)
            return OutboxStats(
                depth=len(self._items),
                dropped_full=self._dropped_full,
                dropped_age=self._dropped_age,
                degraded=self._degraded,
                error=self._error,
                oldest_age_s=oldest,
                committed=self._commits,
                written_to_disk=self._written,
            )

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        """A small persistent value, written with the next commit (at once with commit_interval_s 0)."""
        sync = False
        with self._lock:
            if self._meta.get(key) == value:
                return
            self._meta[key] = value
            if self._store is not None:
                self._meta_dirty[key] = value
                if self._settings.commit_interval_s <= 0:
                    sync = True
                else:
                    self._mark_dirty()
        if sync:
            self._commit()

    def close(self) -> None:
        """Commits what is held and closes the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._flusher_wake.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(timeout=10.0)
        self._commit()
        with self._db_lock:
            store, self._store = self._store, None
            if store is not None:
                store.close()
        with self._lock:
            lost = len(self._items) if self._degraded else 0
        if lost:
            log.error("outbox closed in memory-only mode: %d undelivered results are lost", lost)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ in-memory bookkeeping (hold _lock)

    def _forget(self, seq: int, item: _Item) -> None:
        """An entry left the index (acked, dropped, expired): schedule its delete if it is on disk."""
        if item.on_disk:
            if self._store is not None:
                self._deletes.append(seq)
                self._mark_dirty()
        elif self._store is not None:
            self._new_live -= 1
            self._maybe_clean()

    def _maybe_clean(self) -> None:
        """Nothing left to write: forget the dirty mark so a quiet outbox sleeps."""
        if self._new_live == 0 and not self._deletes and not self._meta_dirty and not self._reserve_due:
            self._new_seqs.clear()
            self._dirty_since = None

    def _mark_dirty(self) -> None:
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
            self._flusher_wake.notify_all()

    def _age_horizon(self, now: float) -> float | None:
        max_age = self._settings.max_age_s
        return now - max_age if max_age > 0 else None

    def _expire(self, now: float) -> None:
        horizon = self._age_horizon(now)
        if horizon is None:
            return
        while self._items:
            seq = next(iter(self._items))
            item = self._items[seq]
            if item.created >= horizon:
                break
            del self._items[seq]
            self._forget(seq, item)
            self._dropped_age += 1

    # ------------------------------------------------------------------ disk

    def _open(self, path: Path) -> None:
        sync = self._settings.synchronous
        try:
            try:
                store, index, meta, reserved = _Store.open(path, sync)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                aside = self._move_aside(path)
                self._error = f"outbox {path} was unreadable ({exc}); moved aside to {aside.name}"
                log.error("%s; starting a new one", self._error)
                store, index, meta, reserved = _Store.open(path, sync)
            start = max(reserved, index[-1][0] if index else 0)
            new_reserved = start + _SEQ_BLOCK
            store.write([], [], {}, new_reserved)
        except (sqlite3.Error, OSError) as exc:
            self._degraded = True
            self._error = f"outbox {path} cannot be used ({_describe(exc)}); keeping results in memory only"
            log.error("%s: they will be lost if the agent stops before they are delivered", self._error)
            return
        with self._lock:
            self._store = store
            self._meta = meta
            self._next_seq = start + 1
            self._reserved = new_reserved
            for seq, topic, created in index:
                self._items[seq] = _Item(self._topics.setdefault(topic, topic), None, created, True, True)
            trimmed = 0
            while len(self._items) > self._settings.max_messages:
                last = self._settings.drop_policy == "drop_newest"
                seq, item = self._items.popitem(last=last)
                self._forget(seq, item)
                trimmed += 1
            self._dropped_full += trimmed
            self._expire(self._clock())
        if index:
            log.info(
                "outbox %s: %d results from an earlier run will be sent first%s",
                path,
                len(self._items),
                f" ({trimmed} over max_messages dropped)" if trimmed else "",
            )

    @staticmethod
    def _move_aside(path: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        return aside

    def _commit(self) -> None:
        with self._db_lock:
            with self._lock:
                store = self._store
                if store is None:
                    return
                new_seqs, self._new_seqs = self._new_seqs, []
                inserts: list[_Row] = []
                for seq in new_seqs:
                    item = self._items.get(seq)
                    if item is not None and not item.on_disk and item.payload is not None:
                        inserts.append((seq, item.topic, item.payload, item.created))
                deletes, self._deletes = self._deletes, []
                meta, self._meta_dirty = self._meta_dirty, {}
                reserved = None
                if self._reserve_due:
                    reserved = self._next_seq - 1 + _SEQ_BLOCK
                    self._reserve_due = False
                self._dirty_since = None  # entries put during the write mark it again
            if not (inserts or deletes or meta or reserved is not None):
                return
            try:
                store.write(inserts, deletes, meta, reserved)
                if deletes and not self._items:
                    store.shrink()  # the backlog has drained: once per outage, never in steady state
            except (sqlite3.Error, OSError) as exc:
                self._degrade(exc, "committing")  # the batch is still in memory; recovery writes it all
                return
            with self._lock:
                self._commits += 1
                self._written += len(inserts)
                if reserved is not None:
                    self._reserved = reserved
                for seq, *_ in inserts:
                    item = self._items.get(seq)
                    if item is None:
                        self._deletes.append(seq)  # acknowledged while it was being written
                        self._mark_dirty()
                    else:
                        item.on_disk = True
                        item.payload = None  # read back from disk when it is published
                        self._new_live -= 1
                self._maybe_clean()

    def _read_payloads(self, seqs: list[int]) -> dict[int, bytes]:
        with self._db_lock:
            store = self._store
            if store is None:
                return {}
            try:
                return store.read(seqs)
            except (sqlite3.Error, OSError) as exc:
                self._degrade(exc, "reading")
                return {}

    def _degrade(self, exc: BaseException, action: str) -> None:
        """Switches to memory only, keeping everything held. Caller holds _db_lock (not _lock)."""
        store = self._store
        with self._lock:
            evicted = [seq for seq, item in self._items.items() if item.payload is None]
        payloads: dict[int, bytes] = {}
        if evicted and store is not None:
            try:
                payloads = store.read(evicted)
            except (sqlite3.Error, OSError):
                payloads = {}
        lost = 0
        with self._lock:
            for seq in evicted:
                item = self._items.get(seq)
                if item is None:
                    continue
                data = payloads.get(seq)
                if data is None:
                    del self._items[seq]
                    lost += 1
                else:
                    item.payload = data
            self._store = None
            self._degraded = True
            self._recoverable = True
            self._retry_at = time.monotonic() + self._retry_interval_s
            self._new_seqs.clear()
            self._new_live = 0
            self._deletes.clear()
            self._meta_dirty.clear()
            self._reserve_due = False
            self._dirty_since = None
            self._error = f"outbox {self._path} failed while {action} ({_describe(exc)}); keeping results in memory"
            if lost:
                self._error += f"; {lost} results could not be read back and are lost"
            self._flusher_wake.notify_all()
            error = self._error
        if store is not None:
            store.close()
        log.error("%s; retrying the disk every %gs", error, self._retry_interval_s)

    def _recover(self) -> None:
        """After a run-time disk error: write everything held back to a fresh connection."""
        assert self._path is not None
        with self._db_lock:
            with self._lock:
                if self._closed or not self._recoverable or self._store is not None:
                    return
                rows: list[_Row] = [
                    (seq, item.topic, item.payload, item.created)
                    for seq, item in self._items.items()
                    if item.payload is not None
                ]
                meta = dict(self._meta)
                reserved = self._next_seq - 1 + _SEQ_BLOCK
            try:
                store, _, _, _ = _Store.open(self._path, self._settings.synchronous)
            except (sqlite3.Error, OSError) as exc:
                self._retry_later(exc)
                return
            try:
                store.write(rows, [], meta, reserved, replace_all=True)
            except (sqlite3.Error, OSError) as exc:
                store.close()
                self._retry_later(exc)
                return
            with self._lock:
                self._store = store
                self._degraded = False
                self._recoverable = False
                self._error = None
                self._reserved = reserved
                self._commits += 1
                self._written += len(rows)
                for seq, *_ in rows:
                    item = self._items.get(seq)
                    if item is None:
                        self._deletes.append(seq)
                        self._mark_dirty()
                    else:
                        item.on_disk = True
                        item.payload = None
                self._new_seqs = [seq for seq, item in self._items.items() if not item.on_disk]
                self._new_live = len(self._new_seqs)
                if self._new_live or self._meta != meta:
                    self._meta_dirty = {k: v for k, v in self._meta.items() if meta.get(k) != v}
                    self._mark_dirty()
        log.warning("outbox %s: disk usable again; %d held results written", self._path, len(rows))

    def _retry_later(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self._retry_interval_s
        log.debug("outbox %s still unusable: %s", self._path, _describe(exc))

    def _flusher_main(self) -> None:
        interval = self._settings.commit_interval_s
        delay_s = interval if interval > 0 else _DELETE_DELAY_S
        while True:
            with self._lock:
                action = None
                while not self._closed:
                    now = time.monotonic()
                    if self._store is not None and self._dirty_since is not None:
                        remaining = self._dirty_since + delay_s - now
                        if remaining <= 0:
                            action = self._commit
                            break
                    elif self._recoverable and self._items:
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
