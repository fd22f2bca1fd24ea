"""The outbox's SQLite file: schema, transactions, reading payloads back, and opening it safely.

:class:`OutboxStore` is the SQL and nothing else; what to write when is the outbox's business
(:mod:`agent.outbox_disk`). :func:`open_outbox_file` opens a file for a new run: it moves a database that is
not a database or is corrupt aside (``*.corrupt-<time>``) and starts a new one, and reserves the next block of
sequence numbers on disk. Errors a disk can cause are :data:`STORE_ERRORS`; the callers degrade to memory on
them, they never crash the agent.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SEQ_BLOCK", "STORE_ERRORS", "IndexRow", "OpenedFile", "OutboxStore", "Row", "describe", "open_outbox_file"]

log = logging.getLogger("agent.outbox")

SEQ_BLOCK = 100_000  # sequence numbers reserved on disk at a time (one tiny write per block)
STORE_ERRORS = (sqlite3.Error, OSError)
_WAL_LIMIT_BYTES = 4 * 1024 * 1024
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

Row = tuple[int, str, bytes, float]  # seq, topic, payload, created
IndexRow = tuple[int, str, float]  # seq, topic, created: what is kept in memory of a stored entry


@dataclass(frozen=True, slots=True)
class OpenedFile:
    """A file opened for a new run, with what an earlier run left in it."""

    store: OutboxStore
    index: list[IndexRow]  # the stored entries, oldest first
    meta: dict[str, str]
    next_seq: int  # the first seq this run hands out
    reserved: int  # the highest seq reserved on disk
    error: str | None  # the file was unreadable and was moved aside


class OutboxStore:
    """The SQLite file. Not thread-safe by itself: the outbox serialises all use with its db lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path, synchronous: str) -> tuple[OutboxStore, list[IndexRow], dict[str, str], int]:
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

    def write(self, inserts: Sequence[Row], deletes: Sequence[int], meta: dict[str, str], reserved: int | None) -> None:
        """One transaction: all of it or nothing. ``reserved`` None leaves the reserved seq as it is."""
        with self._transaction() as c:
            if deletes:
                c.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in deletes])
            self._insert(c, inserts, meta, reserved)

    def rewrite(self, rows: Sequence[Row], meta: dict[str, str], reserved: int) -> None:
        """One transaction that replaces every stored entry with ``rows``."""
        with self._transaction() as c:
            c.execute("DELETE FROM outbox")
            self._insert(c, rows, meta, reserved)

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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back by itself (disk full)
                c.execute("ROLLBACK")
            raise

    @staticmethod
    def _insert(c: sqlite3.Connection, rows: Sequence[Row], meta: dict[str, str], reserved: int | None) -> None:
        if rows:
            c.executemany("INSERT OR REPLACE INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)", rows)
        if meta:
            c.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
        if reserved is not None:
            c.execute("INSERT OR REPLACE INTO counters (name, value) VALUES ('seq_reserved', ?)", (reserved,))


def open_outbox_file(path: Path, synchronous: str) -> OpenedFile:
    """Opens the file for a new run, moving an unreadable one aside; raises :data:`STORE_ERRORS` if the path
    cannot be used at all."""
    error = None
    try:
        store, index, meta, reserved = OutboxStore.open(path, synchronous)
    except sqlite3.DatabaseError as exc:
        if not _is_corrupt(exc):
            raise
        aside = _move_aside(path)
        error = f"outbox {path} was unreadable ({exc}); moved aside to {aside.name}"
        log.error("%s; starting a new one", error)
        store, index, meta, reserved = OutboxStore.open(path, synchronous)
    start = max(reserved, index[-1][0] if index else 0)
    try:
        store.write([], [], {}, start + SEQ_BLOCK)
    except BaseException:
        store.close()
        raise
    return OpenedFile(store, index, meta, start + 1, start + SEQ_BLOCK, error)


def describe(exc: BaseException) -> str:
    """An error for a log line: the OS's words and the file, or the exception's message."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return str(exc) or type(exc).__name__


def _is_corrupt(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and exc.sqlite_errorname in _CORRUPT


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(Path(str(aside) + suffix))
    return aside
