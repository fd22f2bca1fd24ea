"""The outbox's meta values (frame id reservations) in a small preallocated file beside its database.

The database can't take a write while the disk is full, so a frame id block reserved then lived only in
memory, and after a SIGKILL the next run reused its ids. This file is written in full when it is created
(real blocks, not a sparse hole) and afterwards only overwritten in place with one ``pwrite`` of the same
size, which needs no new block on a full disk (ext4, tmpfs; not on copy-on-write file systems, where it fails
like the database and the run is no worse off than without it).

Each write carries a generation that only grows; the database stores the generation of the meta it holds
(key :data:`GEN_KEY`). At start the file's values are taken only if its generation is newer than the
database's: what was set after the last meta the database took. A torn, stale (a power loss that kept the
database and not this file) or unreadable file is ignored, and the database's values stand, as before.
Nothing is synced: this is for a killed process, whose writes the OS still has.

Layout: ``SEGMETA1`` (8 bytes), the JSON's length and its CRC-32 (4 bytes each, big-endian), the JSON
``{"gen": N, "meta": {...}}``, zeros to :data:`SIZE` bytes.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

__all__ = ["GEN_KEY", "SIZE", "MetaSidecar"]

log = logging.getLogger("agent.outbox")

GEN_KEY = "outbox/meta_gen"  # the meta key under which the database keeps the generation of its meta
SIZE = 8192  # bytes: room for the frame ids of about 200 cameras
_MAGIC = b"SEGMETA1"
_HEADER = struct.Struct(">8sII")


class MetaSidecar:
    """``<database>-meta``: the newest meta values, written in place. Thread-safe."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + "-meta")
        self._lock = threading.Lock()  # a leaf
        self._fd: int | None = None
        self._written_gen = 0
        self._warned = False

    def open(self) -> tuple[int, dict[str, str]]:
        """Opens (creating and preallocating if needed); returns the stored generation and meta, (0, {}) if none
        is readable. A file that can't be made means no sidecar for this run (logged once)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self._warn(exc)
            return 0, {}
        try:
            data = os.pread(fd, SIZE, 0)
            if len(data) < SIZE:
                os.pwrite(fd, data + bytes(SIZE - len(data)), 0)  # real blocks, written once
        except OSError as exc:
            os.close(fd)
            self._warn(exc)
            return 0, {}
        self._fd = fd
        gen, meta = _decode(data)
        self._written_gen = gen
        return gen, meta

    def write(self, gen: int, meta: dict[str, str]) -> None:
        """Stores ``meta`` as of generation ``gen`` (an older generation than the one stored is skipped)."""
        body = json.dumps({"gen": gen, "meta": meta}, separators=(",", ":")).encode()
        block = _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body
        with self._lock:
            if self._fd is None or gen <= self._written_gen:
                return
            if len(block) > SIZE:
                block = bytes(_HEADER.size)  # too much to keep here: say nothing rather than something stale
            try:
                written = os.pwrite(self._fd, block + bytes(SIZE - len(block)), 0)
            except OSError as exc:
                self._warn(exc)
                return
            if written == SIZE:  # a short write leaves a block whose CRC fails: ignored at start, written again
                self._written_gen = gen

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "outbox meta file %s unusable (%s): a SIGKILL while the disk is full may reuse frame ids",
                self.path,
                exc.strerror or exc,
            )


def _decode(data: bytes) -> tuple[int, dict[str, str]]:
    if len(data) < _HEADER.size:
        return 0, {}
    magic, length, crc = _HEADER.unpack_from(data)
    body = data[_HEADER.size : _HEADER.size + length]
    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
        return 0, {}
    try:
        doc = json.loads(body)
        gen = int(doc["gen"])
        meta = {str(k): str(v) for k, v in dict(doc["meta"]).items()}
    except (ValueError, KeyError, TypeError):
        return 0, {}
    return gen, meta
