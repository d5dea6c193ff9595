"""Readings in columns: exact round trips (outbox blob, rows), merging, months, the COPY stream."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud_sync.cloud import copy_binary, month_starts
from cloud_sync.readings import ReadingBatch, from_epoch_us, to_epoch_us
from derbus.errors import StorageError
from derbus.storage import ReadingRow


def test_epoch_microseconds_are_exact_in_any_zone() -> None:
    when = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert from_epoch_us(to_epoch_us(when)) == when
    assert to_epoch_us(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1


def test_rows_blob_and_back_are_the_same_readings(
    make_rows: Callable[..., list[ReadingRow]],
) -> None:
    rows = make_rows(5) + make_rows(3, site="s2")
    batch = ReadingBatch.from_rows(rows)
    assert len(batch.keys) == 2  # one series per site: names stored once
    assert batch.rows() == rows
    assert ReadingBatch.from_blob(batch.to_blob()).rows() == rows
    with pytest.raises(StorageError, match="unreadable"):
        ReadingBatch.from_blob(b"RB01" + batch.to_blob()[4:20])


def test_concat_merges_keys_and_keeps_order(make_rows: Callable[..., list[ReadingRow]]) -> None:
    a, b = make_rows(2, site="x"), make_rows(2, site="y") + make_rows(1, site="x")
    merged = ReadingBatch.concat([ReadingBatch.from_rows(a), ReadingBatch.from_rows(b)])
    assert merged.rows() == a + b
    assert sorted(merged.keys) == [("x", "pcc", "meter.p_kw"), ("y", "pcc", "meter.p_kw")]
    assert len(ReadingBatch.concat([])) == 0


def test_months_of_a_batch_and_the_partitions_ahead(
    make_rows: Callable[..., list[ReadingRow]],
) -> None:
    rows = make_rows(1, start=datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) + make_rows(
        1, start=datetime(2026, 1, 1, tzinfo=UTC)
    )
    assert ReadingBatch.from_rows(rows).months() == {(2025, 12), (2026, 1)}
    assert month_starts(datetime(2025, 12, 15, tzinfo=UTC), 2) == {(2025, 12), (2026, 1), (2026, 2)}
    assert month_starts(datetime(2026, 3, 1, tzinfo=UTC), 0) == {(2026, 3)}


def test_the_binary_copy_stream_has_postgres_layout() -> None:
    when = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=7)  # PostgreSQL's epoch + 7
    data = copy_binary(
        np.array([3], np.uint32), np.array([to_epoch_us(when)], np.int64), np.array([2.5])
    )
    assert data[:11] == b"PGCOPY\n\xff\r\n\x00"
    fields, k_len, k, t_len, t, v_len, v = struct.unpack_from(">hiiiqid", data, 19)
    assert (fields, k_len, k, t_len, t, v_len, v) == (3, 4, 3, 8, 7, 8, 2.5)
    assert data[-2:] == b"\xff\xff"
    assert len(data) == 19 + 34 + 2
