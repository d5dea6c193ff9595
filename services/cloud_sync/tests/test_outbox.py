"""The on-disk outbox: durable appends, FIFO batches, removal by id range, counters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_sync.outbox import Outbox
from derbus.errors import StorageError
from derbus.storage import ReadingRow


def test_append_peek_remove_in_fifo_order(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    data = make_rows(10)
    box.append(data[:4], received_at=1000.0)
    box.append(data[4:], received_at=1001.0)
    assert box.pending_rows == 10
    first = box.peek(6)
    assert first is not None
    assert first.rows == data[:6]
    assert first.oldest_received_at == 1000.0
    assert box.remove(first) == 6
    assert box.pending_rows == 4
    rest = box.peek(100)
    assert rest is not None
    assert rest.rows == data[6:]
    box.remove(rest)
    assert box.peek(100) is None
    assert box.oldest_received_at() is None
    meta = box.meta()
    assert (meta["rows_in_total"], meta["rows_out_total"]) == ("10", "10")


def test_rows_survive_an_unclean_stop(tmp_path: Path) -> None:
    # A second connection opened while the first was never closed sees everything appended:
    # what a restarted process finds after a crash.
    row = ReadingRow(
        datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC), "s", "d", "pv.generation_kw", 3.25
    )
    box = Outbox(tmp_path / "o.db")
    box.append([row], received_at=5.0)
    again = Outbox(tmp_path / "o.db")
    got = again.peek(10)
    assert got is not None
    assert got.rows == [row]
    assert got.rows[0].time.tzinfo is not None
    assert again.pending_rows == 1


def test_outbox_is_wal_with_full_synchronous_commits(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_ids_are_never_reused_after_emptying(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(make_rows(3), 1.0)
    batch = box.peek(10)
    assert batch is not None
    box.remove(batch)
    box.append(make_rows(2), 2.0)
    newer = box.peek(10)
    assert newer is not None
    assert newer.first_id > batch.last_id


def test_meta_notes_and_deletion(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.set_meta({"last_error": "boom", "last_success": "2026-06-01T12:00:00Z"})
    box.set_meta({"last_error": None})
    assert box.meta() == {"last_success": "2026-06-01T12:00:00Z"}


def test_unopenable_outbox_raises_storage_error(tmp_path: Path) -> None:
    folder = tmp_path / "is-a-file"
    folder.write_text("x")
    with pytest.raises(StorageError, match="cannot open the outbox"):
        Outbox(folder / "o.db")


def test_append_failure_is_a_storage_error_and_keeps_the_count(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(make_rows(1), 1.0)
    box.close()
    with pytest.raises(StorageError):
        box.append(make_rows(1), 1.0)
    assert box.pending_rows == 1
