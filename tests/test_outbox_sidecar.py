"""The outbox's meta sidecar: taken only when newer than the database, ignored when torn, stale or too big."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.config import OutboxSettings
from agent.outbox import Outbox
from agent.outbox_sidecar import SIZE, MetaSidecar


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite3"


def sidecar_path(db: Path) -> Path:
    return db.with_name(db.name + "-meta")


def test_created_preallocated_and_holding_the_newest_meta(tmp_path: Path) -> None:
    db = tmp_path / "state" / "outbox.sqlite3"  # a state directory that doesn't exist yet
    with Outbox(db, OutboxSettings()) as box:
        assert sidecar_path(db).stat().st_size == SIZE  # real bytes from the start: no allocation later
        box.set_meta("frame_id/cam0", "1000")
        box.set_meta("frame_id/cam0", "2000")
    side = MetaSidecar(db)
    gen, meta = side.open()
    side.close()
    assert meta == {"frame_id/cam0": "2000"} and gen == 2
    assert sidecar_path(db).stat().st_size == SIZE


def test_the_exact_value_of_a_clean_stop_wins_over_the_reservation_before_it(db: Path) -> None:
    with Outbox(db, OutboxSettings()) as box:
        box.set_meta("frame_id/cam0", "2000")  # reserved
        box.set_meta("frame_id/cam0", "1234")  # saved at the clean stop
    with Outbox(db, OutboxSettings()) as box:
        assert box.get_meta("frame_id/cam0") == "1234"


def test_a_stale_sidecar_is_ignored(db: Path, tmp_path: Path) -> None:
    # a power loss that kept the database's later commit and not the sidecar's page: the database wins
    with Outbox(db, OutboxSettings()) as box:
        box.set_meta("frame_id/cam0", "1000")
        box.flush()
        shutil.copyfile(sidecar_path(db), tmp_path / "old")
        box.set_meta("frame_id/cam0", "2000")
    shutil.copyfile(tmp_path / "old", sidecar_path(db))
    with Outbox(db, OutboxSettings()) as box:
        assert box.get_meta("frame_id/cam0") == "2000"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:20], id="cut short"),
        pytest.param(lambda b: b[:14] + bytes([b[14] ^ 0xFF]) + b[15:], id="a flipped byte"),
        pytest.param(lambda b: b"NOTMETA!" + b[8:], id="not ours"),
        pytest.param(lambda b: bytes(len(b)), id="zeros"),
    ],
)
def test_a_damaged_sidecar_is_ignored(db: Path, damage: object) -> None:
    with Outbox(db, OutboxSettings()) as box:
        box.set_meta("frame_id/cam0", "1000")
    path = sidecar_path(db)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with Outbox(db, OutboxSettings()) as box:
        assert box.get_meta("frame_id/cam0") == "1000"  # the database's, as before the sidecar
        box.set_meta("frame_id/cam0", "1500")
    assert path.stat().st_size == SIZE
    side = MetaSidecar(db)
    assert side.open()[1] == {"frame_id/cam0": "1500"}  # usable again
    side.close()


def test_meta_too_big_for_it_leaves_it_empty_rather_than_stale(db: Path) -> None:
    with Outbox(db, OutboxSettings()) as box:
        box.set_meta("frame_id/cam0", "1000")
        box.set_meta("big", "x" * SIZE)
    side = MetaSidecar(db)
    assert side.open() == (0, {})
    side.close()
    with Outbox(db, OutboxSettings()) as box:
        assert box.get_meta("frame_id/cam0") == "1000" and box.get_meta("big") == "x" * SIZE


def test_an_unusable_sidecar_path_only_warns(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    sidecar_path(db).mkdir(parents=True)  # a directory where the file should be
    with Outbox(db, OutboxSettings()) as box:
        box.set_meta("frame_id/cam0", "1000")
    with Outbox(db, OutboxSettings()) as box:
        assert box.get_meta("frame_id/cam0") == "1000"
    assert "may reuse frame ids" in caplog.text


def test_memory_only_outbox_has_no_sidecar(tmp_path: Path) -> None:
    with Outbox(None, OutboxSettings()) as box:
        box.set_meta("frame_id/cam0", "1000")
        assert box.get_meta("frame_id/cam0") == "1000"
    assert list(tmp_path.iterdir()) == []
