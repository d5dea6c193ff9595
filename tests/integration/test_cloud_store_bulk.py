"""The import's bulk path on a real PostgreSQL (`SqlCloudStore.write_many`): a month without a
partition is built whole and attached with the indexes a live partition has; a month with one is
merged; rows waiting in the default partition and duplicates are stored once; a writer that
creates the partition meanwhile wins; a failed import leaves no staging table; migration 002
makes two writers of the same month both succeed."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest

from cloud_sync.cloud import SqlCloudStore
from cloud_sync.readings import ReadingBatch, to_epoch_us
from derbus.errors import StorageError
from derbus.testing import wait_until

pytestmark = pytest.mark.integration

KEYS = [("site-b", "meter", "meter.p_kw"), ("site-a", "pv", "pv.p_kw"), ("site-a", "meter", "x")]


def batch(start: datetime, steps: int, value: float = 1.0, step_s: int = 900) -> ReadingBatch:
    """Every key of KEYS at `steps` times from `start`, value = `value` + step index."""
    t0 = to_epoch_us(start)
    times = t0 + np.arange(steps, dtype=np.int64) * step_s * 1_000_000
    n = len(KEYS)
    return ReadingBatch(
        list(KEYS),
        np.tile(np.arange(n, dtype=np.uint32), steps),
        np.repeat(times, n),
        np.repeat(value + np.arange(steps, dtype=np.float64), n),
    )


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture
def store(postgres_url: str) -> Iterator[SqlCloudStore]:
    s = SqlCloudStore(sa_url(postgres_url))
    s.migrate()
    yield s
    s.close()


def index_shapes(url: str, table: str) -> list[str]:
    """The index definitions of a table, without its own and its indexes' names."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s ORDER BY indexdef", (table,)
        ).fetchall()
    return sorted(re.sub(r"INDEX \S+ ON \S+", "INDEX ON", r[0]) for r in rows)


def partitions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass"
        ).fetchall()
    return {r[0] for r in rows}


def staging_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'import\\_%'"
        ).fetchall()
    return [r[0] for r in rows]


def stored(url: str) -> dict[tuple[str, str, str, datetime], float]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT site_id, device_id, metric, time, value FROM readings")
        return {(r[0], r[1], r[2], r[3].astimezone(UTC)): r[4] for r in rows}


def test_a_new_month_is_built_with_the_indexes_of_a_live_partition(
    store: SqlCloudStore, postgres_url: str
) -> None:
    store.write(batch(datetime(2025, 3, 1, tzinfo=UTC), 4))  # live: readings_ensure_partition
    april = batch(datetime(2025, 4, 1, tzinfo=UTC), 96)
    told: list[tuple[int, int]] = []
    assert store.write_many([april], on_stored=lambda *a: told.append(a)) == len(april)
    assert told == [(1, 1)]
    assert {"readings_y2025m03", "readings_y2025m04"} <= partitions(postgres_url)
    live = index_shapes(postgres_url, "readings_y2025m03")
    assert len(live) == 2  # the primary key and the per-series index
    assert index_shapes(postgres_url, "readings_y2025m04") == live  # adopted, none built twice
    with psycopg.connect(postgres_url) as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'readings_y2025m04'"
            )
        }
        plan = conn.execute(
            "EXPLAIN SELECT value FROM readings WHERE site_id = 'site-a' AND metric = 'x'"
            " AND device_id = 'meter' AND time >= '2025-04-01' AND time < '2025-04-02'"
        ).fetchall()
    assert all(n.startswith("readings_y2025m04_") for n in names), names
    assert "readings_y2025m04_series_idx" in " ".join(r[0] for r in plan)  # per-series reads
    assert staging_tables(postgres_url) == []
    assert len(stored(postgres_url)) == 4 * len(KEYS) + len(april)


def test_existing_months_are_merged_and_duplicates_stored_once(
    store: SqlCloudStore, postgres_url: str
) -> None:
    live = batch(datetime(2025, 5, 31, 13, tzinfo=UTC), 8, value=100.0)  # 13:00..14:45, live
    store.write(live)
    # June has no partition: a reading of it waits in readings_default
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            "INSERT INTO readings VALUES ('2025-06-01 00:00+00', 'site-a', 'pv', 'pv.p_kw', -7)"
        )
    assert "readings_y2025m06" not in partitions(postgres_url)
    # the file: May 31 14:00 .. June 1 13:45, every reading twice; 14:00..14:45 of May is
    # stored live, June 1 00:00 of site-a/pv waits in the default partition
    history = batch(datetime(2025, 5, 31, 14, tzinfo=UTC), 96, value=0.0)
    told: list[tuple[int, int]] = []
    new = store.write_many([history, history], on_stored=lambda *a: told.append(a))
    assert told == [(1, 2), (2, 2)]  # May (merged) and June (built)
    assert new == len(history) - 4 * len(KEYS) - 1
    assert len(stored(postgres_url)) == len(history) + 4 * len(KEYS)  # 13:00..13:45 live only
    rows = stored(postgres_url)
    june = datetime(2025, 6, 1, tzinfo=UTC)
    assert rows[("site-a", "pv", "pv.p_kw", june)] == -7  # the stored value is kept
    may = datetime(2025, 5, 31, 14, tzinfo=UTC)
    assert rows[("site-a", "pv", "pv.p_kw", may)] == 104.0  # stored live (13:00 + 4 steps)
    assert rows[("site-b", "meter", "meter.p_kw", june)] == 40.0  # 14:00 + 40 steps of 15 min
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM readings_default").fetchone() == (0,)
        in_june = conn.execute("SELECT count(*) FROM readings_y2025m06").fetchone()
    assert in_june == (56 * len(KEYS),)  # June 00:00 .. 13:45
    assert store.write_many([history]) == 0  # again: nothing new
    assert len(stored(postgres_url)) == len(rows)
    assert staging_tables(postgres_url) == []


def test_a_partition_created_meanwhile_by_another_writer_takes_the_rows(
    store: SqlCloudStore, postgres_url: str
) -> None:
    july = batch(datetime(2025, 7, 1, tzinfo=UTC), 96)
    done: list[int | BaseException] = []
    with psycopg.connect(postgres_url) as other:
        # the other writer holds the partition lock, so the import builds its table and waits
        other.execute("SELECT pg_advisory_xact_lock(hashtext('readings_ensure_partition'))")
        worker = threading.Thread(target=lambda: done.append(store.write_many([july])))
        worker.start()
        wait_for_a_waiting_advisory_lock(postgres_url)
        other.execute("SELECT readings_ensure_partition('2025-07-15+00')")
        other.execute(
            "INSERT INTO readings VALUES ('2025-07-01 00:00+00', 'site-b', 'meter', 'meter.p_kw', 5)"
        )
        other.commit()
        worker.join(30)
    assert done == [len(july) - 1]
    rows = stored(postgres_url)
    assert len(rows) == len(july)
    assert rows[("site-b", "meter", "meter.p_kw", datetime(2025, 7, 1, tzinfo=UTC))] == 5
    assert "readings_y2025m07" in partitions(postgres_url)
    assert staging_tables(postgres_url) == []


def test_a_failed_import_leaves_no_staging_table(store: SqlCloudStore, postgres_url: str) -> None:
    def broken() -> Iterator[ReadingBatch]:
        yield batch(datetime(2025, 8, 1, tzinfo=UTC), 4)
        raise RuntimeError("the file ends in the middle of a line")

    with pytest.raises(RuntimeError, match="middle of a line"):
        store.write_many(broken())
    assert staging_tables(postgres_url) == []
    assert stored(postgres_url) == {}
    bad = batch(datetime(2025, 8, 1, tzinfo=UTC), 4)
    bad.keys[0] = ("s" * 101, "meter", "meter.p_kw")  # longer than varchar(100)
    with pytest.raises(StorageError, match="import into"):
        store.write_many([bad])
    assert staging_tables(postgres_url) == []
    assert stored(postgres_url) == {}


def wait_for_a_waiting_advisory_lock(url: str) -> None:
    def waiting() -> bool:
        with psycopg.connect(url) as probe:
            row = probe.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
        return row == (1,)

    wait_until(waiting, 30, 0.05, "a writer waiting for the partition lock")


def test_two_writers_creating_the_same_month_both_succeed(
    store: SqlCloudStore, postgres_url: str
) -> None:
    outcome: list[object] = []

    def second() -> None:
        try:
            with psycopg.connect(postgres_url) as conn:
                outcome.append(
                    conn.execute("SELECT readings_ensure_partition('2025-11-15+00')").fetchone()
                )
        except psycopg.Error as err:
            outcome.append(err)

    with psycopg.connect(postgres_url) as first:
        first.execute("SELECT pg_advisory_xact_lock(hashtext('readings_ensure_partition'))")
        worker = threading.Thread(target=second)
        worker.start()
        wait_for_a_waiting_advisory_lock(postgres_url)
        first.execute("SELECT readings_ensure_partition('2025-11-01+00')")
        first.commit()
        worker.join(30)
    assert outcome == [("readings_y2025m11",)]
