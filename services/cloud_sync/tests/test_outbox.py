"""The on-disk outbox: durable appends of compact segments, FIFO batches, removal, counters."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_sync.outbox import Outbox
from cloud_sync.readings import ReadingBatch, to_epoch_us
from derbus.errors import StorageError
from derbus.storage import ReadingRow


def test_append_peek_remove_in_fifo_order(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    data = make_rows(10)
    box.append(ReadingBatch.from_rows(data[:4]), received_at=1000.0)
    box.append(ReadingBatch.from_rows(data[4:]), received_at=1001.0)
    assert box.pending_rows == 10
    first = box.peek(6)  # whole segments only: the second one would overshoot
    assert first is not None
    assert first.batch.rows() == data[:4]
    assert first.oldest_received_at == 1000.0
    assert box.remove(first) == 4
    assert box.pending_rows == 6
    rest = box.peek(100)
    assert rest is not None
    assert rest.batch.rows() == data[4:]
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
    box.append(ReadingBatch.from_rows([row]), received_at=5.0)
    again = Outbox(tmp_path / "o.db")
    got = again.peek(10)
    assert got is not None
    assert got.batch.rows() == [row]
    assert got.batch.rows()[0].time.tzinfo is not None
    assert again.pending_rows == 1


def test_outbox_is_wal_with_full_synchronous_commits(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_ids_are_never_reused_after_emptying(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(ReadingBatch.from_rows(make_rows(3)), 1.0)
    batch = box.peek(10)
    assert batch is not None
    box.remove(batch)
    box.append(ReadingBatch.from_rows(make_rows(2)), 2.0)
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
    box.append(ReadingBatch.from_rows(make_rows(1)), 1.0)
    box.close()
    with pytest.raises(StorageError):
        box.append(ReadingBatch.from_rows(make_rows(1)), 1.0)
    assert box.pending_rows == 1


def test_peek_joins_small_segments_up_to_the_batch_size(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    data = make_rows(9)
    for first in range(0, 9, 3):
        box.append(ReadingBatch.from_rows(data[first : first + 3]), received_at=float(first))
    got = box.peek(6)
    assert got is not None
    assert got.batch.rows() == data[:6]
    assert (got.oldest_received_at, got.readings) == (0.0, 6)
    assert box.remove(got) == 6
    assert box.pending_rows == box.count() == 3


def test_a_reading_costs_a_few_bytes_not_a_row_of_names(tmp_path: Path) -> None:
    # 100 messages of 8 devices x 3 fields at one site: names repeat, times repeat per message
    rows = [
        ReadingRow(
            datetime(2026, 6, 1, 12, 0, s, tzinfo=UTC),
            "site-0042",
            f"device-{d}",
            f"meter.field_{f}",
            1000.0 + s + d / 10 + f / 100,
        )
        for s in range(50)
        for d in range(8)
        for f in range(3)
    ]
    box = Outbox(tmp_path / "o.db")
    box.append(ReadingBatch.from_rows(rows), 1.0)
    per_reading = box.stored_bytes() / len(rows)
    names = sum(len(r.site_id) + len(r.device_id) + len(r.metric) for r in rows) / len(rows)
    assert per_reading < names / 2  # the former layout stored the names (≈30 B) plus 24 B a row


def test_an_outbox_of_the_former_layout_is_converted_without_losing_a_reading(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    path = tmp_path / "o.db"
    data = make_rows(5)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, time_us INTEGER NOT NULL,"
        " site_id TEXT NOT NULL, device_id TEXT NOT NULL, metric TEXT NOT NULL,"
        " value REAL NOT NULL, received_at REAL NOT NULL)"
    )
    db.executemany(
        "INSERT INTO outbox (time_us, site_id, device_id, metric, value, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(to_epoch_us(r.time), r.site_id, r.device_id, r.metric, r.value, 7.0) for r in data],
    )
    db.commit()
    db.close()
    box = Outbox(path)
    assert box.pending_rows == 5
    got = box.peek(100)
    assert got is not None
    assert got.batch.rows() == data
    assert got.oldest_received_at == 7.0
    assert "outbox" not in {
        r[0] for r in box._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
