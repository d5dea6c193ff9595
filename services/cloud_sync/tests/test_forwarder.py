"""Store-and-forward: batches reach the cloud database once, failures keep rows, retries are bounded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from cloud_sync.cloud import SqlCloudStore
from cloud_sync.forwarder import Forwarder, RetryPolicy
from cloud_sync.outbox import Outbox
from cloud_sync.readings import ReadingBatch
from cloud_sync.settings import Settings
from cloud_sync.state import offline_snapshot
from derbus.errors import StorageError
from derbus.storage import ReadingRow

FAST = RetryPolicy(attempts=3, initial_delay_s=0.001, max_delay_s=0.002)


def forwarder(outbox: Outbox, store: object, batch: int = 4) -> Forwarder:
    return Forwarder(
        outbox,
        store,  # type: ignore[arg-type]
        batch_size=lambda: batch,
        retry=FAST,
    )


def stored(store: SqlCloudStore) -> list[tuple[object, ...]]:
    with store.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(store.table).order_by(store.table.c.time, store.table.c.metric)
            )
        ]


@dataclass
class FlakyStore:
    """A cloud target that fails its first `failures` writes (the retry policy under test)."""

    failures: int
    attempts: int = 0
    written: list[ReadingRow] = field(default_factory=list)
    description: str = "flaky"

    def migrate(self) -> list[str]:
        return []

    def write(self, batch: ReadingBatch) -> int:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StorageError(f"connection refused (attempt {self.attempts})")
        self.written.extend(batch.rows())
        return len(batch)

    def prepare(self, now: datetime) -> None:
        """Nothing to prepare."""

    def close(self) -> None:
        """Nothing to close."""


def test_drain_moves_every_row_in_batches_and_empties_the_outbox(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    data = make_rows(10)
    for first in range(0, 10, 2):
        box.append(ReadingBatch.from_rows(data[first : first + 2]), 1.0)
    result = forwarder(box, store).drain()
    assert (result.rows, result.batches, result.error, result.pending_rows) == (10, 3, None, 0)
    got = stored(store)
    assert [(r[4]) for r in got] == [r.value for r in data]
    assert box.meta()["rows_out_total"] == "10"


def test_a_resent_batch_never_doubles_rows(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    # The crash window: the cloud committed, the process died before removing the batch.
    box = Outbox(tmp_path / "o.db")
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    store.migrate()
    data = make_rows(6)
    store.write(ReadingBatch.from_rows(data[:4]))
    box.append(ReadingBatch.from_rows(data), 1.0)
    assert forwarder(box, store).drain().rows == 6
    assert len(stored(store)) == 6
    assert store.count() == 6


def test_transient_failures_are_retried_then_succeed(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(ReadingBatch.from_rows(make_rows(3)), 1.0)
    store = FlakyStore(failures=2)
    result = forwarder(box, store).drain()
    assert result.error is None
    assert store.attempts == 3
    assert len(store.written) == 3
    assert box.pending_rows == 0


def test_exhausted_retries_keep_the_batch_and_record_the_error(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    data = make_rows(5)
    box.append(ReadingBatch.from_rows(data), 1.0)
    store = FlakyStore(failures=100)
    fw = forwarder(box, store)
    result = fw.drain()
    assert result.error is not None
    assert "attempt 3" in result.error
    assert store.attempts == FAST.attempts  # bounded
    assert box.pending_rows == 5
    assert fw.last_error == result.error
    assert fw.last_success is None
    # the next pass starts again with the same rows, nothing dropped
    store.failures = 0
    assert fw.drain().rows == 5
    assert [r.value for r in store.written] == [r.value for r in data]
    snap = offline_snapshot(box, Settings(data_dir=tmp_path))
    assert snap.last_error == result.error
    assert snap.state == "online"  # the last pass went through
    assert snap.last_success is not None
    assert snap.pending_rows == 0


def test_stop_interrupts_a_retry_wait(
    tmp_path: Path, make_rows: Callable[..., list[ReadingRow]]
) -> None:
    box = Outbox(tmp_path / "o.db")
    box.append(ReadingBatch.from_rows(make_rows(1)), 1.0)
    fw = Forwarder(
        box,
        FlakyStore(failures=100),  # type: ignore[arg-type]
        batch_size=lambda: 10,
        retry=RetryPolicy(attempts=50, initial_delay_s=5, max_delay_s=5),
    )
    fw._stop.set()  # as if stop() was called while the pass runs
    result = fw.drain()
    assert result.rows == 0
    assert box.pending_rows == 1
