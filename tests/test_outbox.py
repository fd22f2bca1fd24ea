"""The outbox: order, batching, bounds, restarts, SIGKILL and disk failures (real SQLite files)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import OutboxSettings
from agent.outbox import Outbox, OutboxError

REPO = Path(__file__).resolve().parent.parent


def settings(**kw: object) -> OutboxSettings:
    return OutboxSettings(**{"commit_interval_s": 0.1, **kw})  # type: ignore[arg-type]


def rows(path: Path) -> list[int]:
    """The seqs in the file, read through a second connection (what a restart would see)."""
    conn = sqlite3.connect(str(path))
    try:
        return [r[0] for r in conn.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite3"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- order and seqs


def test_entries_come_out_in_order_and_in_pages(db: Path) -> None:
    with Outbox(db, settings()) as box:
        seqs = [box.put(f"t/{i % 3}", b'{"i":%d}' % i) for i in range(10)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 10
        first = box.pending(0, 4)
        rest = box.pending(first[-1].seq, 100)
        assert [e.seq for e in first + rest] == seqs
        assert [e.payload for e in first + rest] == [b'{"i":%d}' % i for i in range(10)]
        assert [e.topic for e in first] == ["t/0", "t/1", "t/2", "t/0"]
        assert not any(e.replayed for e in first + rest)
        assert box.pending(seqs[-1], 10) == []
        assert box.last_seq() == seqs[-1]


def test_seq_keeps_growing_across_reopen_even_if_nothing_was_written(db: Path) -> None:
    with Outbox(db, settings(commit_interval_s=5.0)) as box:
        last = max(box.put("t", b"{}") for _ in range(3))
        for e in box.pending(0, 10):
            box.ack(e.seq)
    assert rows(db) == []
    with Outbox(db, settings()) as box:
        assert box.put("t", b"{}") > last


def test_memory_only_outbox(tmp_path: Path) -> None:
    with Outbox(None, settings()) as box:
        a, b = box.put("t", b"1"), box.put("t", b"2")
        box.ack(a)
        assert [e.seq for e in box.pending(0, 10)] == [b]
        st = box.stats()
        assert (st.depth, st.degraded, st.error, st.written_to_disk) == (1, False, None, 0)
    assert list(tmp_path.iterdir()) == []


def test_wait_returns_on_put_timeout_and_wake() -> None:
    box = Outbox(None, settings())
    box.start()
    t0 = time.monotonic()
    assert box.wait(0, 0.1) is False
    assert time.monotonic() - t0 >= 0.09
    threading.Timer(0.05, lambda: box.put("t", b"{}")).start()
    assert box.wait(0, 10.0) is True  # returns at the put
    assert box.wait(box.last_seq(), 0.0) is False
    threading.Timer(0.05, box.wake).start()
    t0 = time.monotonic()
    assert box.wait(box.last_seq(), 30.0) is False
    assert time.monotonic() - t0 < 10.0  # woken at ~0.05 s, not timed out at 30 s; room for a loaded machine
    box.close()
    with pytest.raises(OutboxError):
        box.put("t", b"{}")


# --------------------------------------------------------------------------- batching


def test_ack_before_commit_never_touches_the_disk(db: Path) -> None:
    box = Outbox(db, settings(commit_interval_s=0.3))
    box.start()
    for _ in range(50):
        seq = box.put("t", b'{"x":1}')
        box.ack(seq)
    time.sleep(0.5)  # past the commit interval
    box.flush()
    st = box.stats()
    box.close()
    assert (st.written_to_disk, st.committed, st.depth) == (0, 0, 0)
    assert rows(db) == []


def test_commits_are_batched(db: Path) -> None:
    # 1 s: the twenty puts and the read below fit in one interval even on a loaded machine (they take ~ms)
    box = Outbox(db, settings(commit_interval_s=1.0))
    box.start()
    seqs = [box.put("t", b'{"n":%d}' % i) for i in range(20)]
    assert rows(db) == []  # nothing written yet
    assert wait_for(lambda: rows(db) == seqs, 10.0)
    st = box.stats()
    assert (st.committed, st.written_to_disk) == (1, 20)  # one transaction for all twenty
    # Committed payloads are read back from the file.
    assert [e.payload for e in box.pending(0, 100)] == [b'{"n":%d}' % i for i in range(20)]
    for seq in seqs[:15]:
        box.ack(seq)
    assert rows(db) == seqs  # deletes are batched too
    assert wait_for(lambda: rows(db) == seqs[15:], 10.0)
    assert box.stats().committed == 2
    box.close()


def test_commit_interval_zero_commits_every_put(db: Path) -> None:
    with Outbox(db, settings(commit_interval_s=0.0)) as box:
        a = box.put("t", b"1")
        assert rows(db) == [a]
        b = box.put("t", b"2")
        assert rows(db) == [a, b]
        assert box.stats().committed == 2


def test_meta_is_persistent(db: Path) -> None:
    with Outbox(db, settings()) as box:
        assert box.get_meta("frame_id/cam") is None
        box.set_meta("frame_id/cam", "41")
        box.set_meta("frame_id/cam", "42")
        assert box.get_meta("frame_id/cam") == "42"
    with Outbox(db, settings()) as box:
        assert box.get_meta("frame_id/cam") == "42"


# --------------------------------------------------------------------------- restarts


def test_restart_replays_what_is_left_first_in_order(db: Path) -> None:
    with Outbox(db, settings()) as box:
        seqs = [box.put("t", b'{"n":%d}' % i) for i in range(6)]
        box.flush()
        box.ack(seqs[0])
        box.ack(seqs[3])
        box.put("t", b'{"n":"late"}')  # not committed yet: close() commits it
    with Outbox(db, settings()) as box:
        new = box.put("t", b'{"n":"new"}')
        entries = box.pending(0, 100)
        assert [e.seq for e in entries] == [seqs[1], seqs[2], seqs[4], seqs[5], seqs[5] + 1, new]
        assert [e.replayed for e in entries] == [True] * 5 + [False]
        assert entries[-2].payload == b'{"n":"late"}'
        assert box.stats().depth == 6


def test_sigkill_keeps_every_committed_entry(db: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGKILL_CHILD, str(db)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line and line[0] == "ready", line
        flushed = [int(s) for s in line[1].split(",")]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    with Outbox(db, settings()) as box:
        entries = box.pending(0, 100)
        assert [e.seq for e in entries] == flushed  # the flushed ones, not the one still batched
        assert all(e.replayed for e in entries)
        assert [e.payload for e in entries] == [b'{"k":%d}' % i for i in range(len(flushed))]
        assert box.put("t", b"{}") > max(flushed) + 1  # seqs never go back, even after SIGKILL


_SIGKILL_CHILD = r"""
import sys, time
from pathlib import Path
from agent.config import OutboxSettings
from agent.outbox import Outbox
box = Outbox(Path(sys.argv[1]), OutboxSettings(commit_interval_s=30.0))
box.start()
seqs = [box.put("t", b'{"k":%d}' % i) for i in range(5)]
box.flush()
box.put("t", b'{"k":"unflushed"}')
print("ready", ",".join(map(str, seqs)), flush=True)
time.sleep(60)
"""


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_max_messages_drops_and_counts(db: Path, policy: str) -> None:
    with Outbox(db, settings(max_messages=3, drop_policy=policy)) as box:
        seqs = [box.put("t", b"%d" % i) for i in range(5)]
        kept = [e.seq for e in box.pending(0, 10)]
        assert kept == (seqs[2:] if policy == "drop_oldest" else seqs[:3])
        assert box.stats().dropped_full == 2
        assert box.stats().depth == 3


def test_max_age_expires_and_counts(db: Path) -> None:
    clock = FakeClock()
    with Outbox(db, settings(max_age_s=10.0), clock=clock) as box:
        old = box.put("t", b"old")
        clock.now += 5
        young = box.put("t", b"young")
        stale = box.put("t", b"stale", created=clock.now - 60)  # captured long ago
        clock.now += 6
        assert [e.seq for e in box.pending(0, 10)] == [young]
        st = box.stats()
        assert (st.depth, st.dropped_age) == (1, 2)
        assert st.oldest_age_s == pytest.approx(6.0)
        box.ack(old)  # unknown by now: ignored
        box.ack(stale)
    clock.now += 100
    with Outbox(db, settings(max_age_s=10.0), clock=clock) as box:
        assert box.pending(0, 10) == []
        assert box.stats().dropped_age == 1


# --------------------------------------------------------------------------- disk trouble


def test_unusable_path_degrades_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state directory should be")
    with caplog.at_level(logging.ERROR, logger="agent.outbox"), Outbox(not_a_dir / "o.db", settings()) as box:
        st = box.stats()
        assert st.degraded and st.error and "memory only" in st.error
        a = box.put("t", b"1")
        b = box.put("t", b"2")
        box.ack(a)
        assert [e.payload for e in box.pending(0, 10)] == [b"2"]
        assert box.stats().depth == 1 and b > a
    assert any("cannot be used" in r.getMessage() for r in caplog.records)


def test_corrupt_database_is_moved_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an SQLite database, just garbage " * 200)
    with caplog.at_level(logging.ERROR, logger="agent.outbox"), Outbox(db, settings()) as box:
        st = box.stats()
        assert not st.degraded and st.error and "moved aside" in st.error
        seq = box.put("t", b"kept")
    assert rows(db) == [seq]
    assert len(list(db.parent.glob("outbox.sqlite3.corrupt-*"))) == 1
    assert any("moved aside" in r.getMessage() for r in caplog.records)


class Tmpfs:
    """A tiny tmpfs at ``path`` (root with CAP_SYS_ADMIN only; the test is skipped elsewhere)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def mount(self, options: str) -> Path:
        mount = shutil.which("mount")
        if mount is None or os.geteuid() != 0:
            pytest.skip("needs root and mount(8)")
        self.path.mkdir(exist_ok=True)
        result = subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        self.mounted = True
        return self.path

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    fs = Tmpfs(tmp_path / "mnt")
    yield fs
    fs.unmount()


def test_read_only_state_directory_degrades(tmpfs: Tmpfs) -> None:
    mnt = tmpfs.mount("ro,size=1m")
    with Outbox(mnt / "outbox.sqlite3", settings()) as box:
        st = box.stats()
        assert st.degraded and st.error
        box.put("t", b"1")
        assert [e.payload for e in box.pending(0, 10)] == [b"1"]


def test_disk_full_at_run_time_keeps_everything_and_recovers(tmpfs: Tmpfs) -> None:
    mnt = tmpfs.mount("size=2m")
    db = mnt / "outbox.sqlite3"
    box = Outbox(db, settings(commit_interval_s=0.05), retry_interval_s=0.2)
    box.start()
    early = [box.put("t", b'{"early":%d}' % i) for i in range(5)]
    assert wait_for(lambda: rows(db) == early)  # committed, payloads now only on disk
    filler = mnt / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        f.write(b"\0" * (4 << 20))  # fill the disk to the last block
    big = b'{"big":"' + b"x" * 100_000 + b'"}'
    late = [box.put("t", big) for _ in range(3)]
    assert wait_for(lambda: box.stats().degraded, 10.0)
    st = box.stats()
    assert st.error and "memory" in st.error
    entries = box.pending(0, 100)
    assert [e.seq for e in entries] == early + late  # nothing lost, the committed ones read back
    assert [e.payload for e in entries[:5]] == [b'{"early":%d}' % i for i in range(5)]
    box.ack(early[0])
    filler.unlink()  # space again: the outbox writes everything it holds
    assert wait_for(lambda: not box.stats().degraded, 10.0)
    assert box.stats().error is None
    box.close()
    assert rows(db) == early[1:] + late


def test_disk_full_recovers_when_everything_held_was_delivered_meanwhile(tmpfs: Tmpfs) -> None:
    # A healthy broker acknowledges each result within milliseconds, so a degraded outbox is empty almost
    # always: it must still go back to its file (found by benchmarks/chaos.py: it stayed in memory only,
    # and the frame id blocks reserved meanwhile never reached the disk, so a SIGKILL then reused ids).
    mnt = tmpfs.mount("size=2m")
    db = mnt / "outbox.sqlite3"
    box = Outbox(db, settings(commit_interval_s=0.05), retry_interval_s=0.2)
    box.start()
    filler = mnt / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        f.write(b"\0" * (4 << 20))  # fill the disk to the last block
    big = b'{"big":"' + b"x" * 100_000 + b'"}'
    held = [box.put("t", big) for _ in range(3)]
    assert wait_for(lambda: box.stats().degraded, 10.0)
    for seq in held:
        box.ack(seq)  # delivered from memory: nothing is held any more
    box.set_meta("frame_id/cam0", "2000")  # a frame id block reserved while the disk was full
    filler.unlink()
    assert wait_for(lambda: not box.stats().degraded, 10.0), box.stats()
    assert box.stats().error is None
    box.put("t", b"after")
    box.close()
    conn = sqlite3.connect(str(db))
    try:
        meta = conn.execute("SELECT value FROM meta WHERE key = 'frame_id/cam0'").fetchone()
        topics = conn.execute("SELECT payload FROM outbox").fetchall()
    finally:
        conn.close()
    assert meta == ("2000",)
    assert topics == [(b"after",)]


def test_frame_id_block_reserved_while_the_disk_is_full_survives_a_sigkill(tmpfs: Tmpfs) -> None:
    # RELIABILITY.md's known limit until the sidecar: the database can't take the reservation on a full disk,
    # so after a SIGKILL the next run went on from the older one and reused frame ids.
    mnt = tmpfs.mount("size=2m")
    db = mnt / "outbox.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _DISK_FULL_CHILD, str(db)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["ready"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        in_database = conn.execute("SELECT value FROM meta WHERE key = 'frame_id/cam0'").fetchone()
    finally:
        conn.close()
    assert in_database == ("1000",)  # the database missed the newer block
    (mnt / "filler").unlink()
    with Outbox(db, settings()) as box:
        assert box.get_meta("frame_id/cam0") == "2000"  # from the sidecar: no id of that block is used again
        assert box.get_meta("other") == "kept"
    with Outbox(db, settings()) as box:  # and the database has it now
        assert box.get_meta("frame_id/cam0") == "2000"


_DISK_FULL_CHILD = r"""
import sys, time
from pathlib import Path
from agent.config import OutboxSettings
from agent.outbox import Outbox
db = Path(sys.argv[1])
box = Outbox(db, OutboxSettings(commit_interval_s=0.05), retry_interval_s=600.0)
box.start()
box.set_meta("other", "kept")
box.set_meta("frame_id/cam0", "1000")
box.flush()
try:
    with open(db.parent / "filler", "wb") as f:
        f.write(b"\0" * (4 << 20))  # fill the disk to the last block
except OSError:
    pass
box.put("t", b'{"big":"' + b"x" * 100_000 + b'"}')
deadline = time.monotonic() + 10
while not box.stats().degraded and time.monotonic() < deadline:
    time.sleep(0.01)
assert box.stats().degraded
box.set_meta("frame_id/cam0", "2000")  # the next block, reserved while the disk is full
print("ready", flush=True)
time.sleep(60)
"""


# --------------------------------------------------------------------------- what is delivered, for the age at publish


def test_acknowledged_results_are_reported_with_their_camera_and_capture_time(db: Path) -> None:
    clock = FakeClock(1000.0)
    reported: list[tuple[str, float]] = []
    with Outbox(db, settings(max_age_s=60), clock=clock) as box:
        box.on_delivered(lambda camera, created: reported.append((camera, created)))
        a = box.put("t", b"a", created=990.0, camera="cam0")
        b = box.put("t", b"b", created=995.0, camera="cam1")
        c = box.put("t", b"c")  # not a camera's result (no camera given): not reported
        box.ack(b)
        box.ack(c)
        box.ack(b)  # acknowledged twice (a PUBACK after a resend): reported once
        assert reported == [("cam1", 995.0)]
        box.flush()
        assert wait_for(lambda: rows(db) == [a])  # committed: the payload leaves memory, the camera stays
        box.ack(a)
        assert reported == [("cam1", 995.0), ("cam0", 990.0)]
        box.put("t", b"old", created=900.0, camera="cam0")  # older than max_age_s: dropped, never delivered
        assert box.stats().dropped_age == 1
        assert reported == [("cam1", 995.0), ("cam0", 990.0)]


def test_an_earlier_runs_results_are_not_reported(db: Path) -> None:
    with Outbox(db, settings()) as box:
        seq = box.put("t", b"left", camera="cam0")
    reported: list[tuple[str, float]] = []
    with Outbox(db, settings()) as box:
        box.on_delivered(lambda camera, created: reported.append((camera, created)))
        assert [e.seq for e in box.pending(0, 10)] == [seq]
        box.ack(seq)  # its camera was not stored: it is a replay, not a live result's age
        assert reported == []
