"""The on-disk outbox: readings appended durably (SQLite WAL, synchronous=FULL) until forwarded.

An `append` returns only after its transaction is on disk (the WAL is fsync'd at commit), so the
bus delivery may be acknowledged afterwards: a crash loses nothing that was acknowledged. Rows
leave the outbox only through `remove`, which the forwarder calls after the cloud database
committed them. Counters (rows in/out, last success/error) live in the same file, so
`cloud-sync --status` can report them from another process.

Each append is one *segment*: a `ReadingBatch` in its compressed columnar form (series keys once,
then key index, time and value arrays, zlib), so a reading costs a few bytes on disk instead of a
row with its site, device and metric names. An outbox written by an earlier version (one row per
reading in the table `outbox`) is converted into segments when opened, in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from cloud_sync.readings import BatchBuilder, ReadingBatch
from derbus.errors import StorageError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segment (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    readings    INTEGER NOT NULL,
    received_at REAL    NOT NULL,
    data        BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
_LEGACY_CHUNK = 100_000


@dataclass(frozen=True)
class Pending:
    """Segments read from the outbox: their readings and the id range to remove once stored."""

    first_id: int
    last_id: int
    batch: ReadingBatch
    oldest_received_at: float

    @property
    def readings(self) -> int:
        """Readings in the batch."""
        return len(self.batch)


class Outbox:
    """A bounded FIFO of readings in a SQLite file; safe to use from several threads.

    Args:
        path: the SQLite file (created with its folder when missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._convert_legacy()
            self._pending = self.count()
        except (sqlite3.Error, OSError) as err:
            raise StorageError(f"cannot open the outbox {path}: {err}") from err

    def _convert_legacy(self) -> None:
        """Rows of the one-row-per-reading table of earlier versions become segments."""
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
        ).fetchone()
        if found is None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            moved = last = 0
            while True:
                rows = self._db.execute(
                    "SELECT id, time_us, site_id, device_id, metric, value, received_at"
                    " FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (last, _LEGACY_CHUNK),
                ).fetchall()
                if not rows:
                    break
                builder = BatchBuilder()
                for _, t, site, device, metric, value, _ in rows:
                    builder.add(site, device, metric, t, value)
                self._insert(builder.build(), min(r[6] for r in rows))
                moved += len(rows)
                last = rows[-1][0]
            self._db.execute("DROP TABLE outbox")
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        if moved:
            log.info("outbox %s: %d readings of the former layout converted", self.path, moved)

    # --- writing --------------------------------------------------------------------------------
    def _insert(self, batch: ReadingBatch, received_at: float) -> None:
        self._db.execute(
            "INSERT INTO segment (readings, received_at, data) VALUES (?, ?, ?)",
            (len(batch), received_at, batch.to_blob()),
        )

    def append(self, batch: ReadingBatch, received_at: float) -> None:
        """Append readings in one durable transaction (on disk when this returns).

        Args:
            batch: the readings (of one group commit).
            received_at: wall-clock time of receipt, s since the epoch (for the backlog age).
        """
        if not len(batch):
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._insert(batch, received_at)
                self._bump("rows_in_total", len(batch))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise StorageError(f"outbox append failed: {err}") from err
            self._pending += len(batch)

    def peek(self, limit: int) -> Pending | None:
        """The oldest segments holding about `limit` readings (at least one segment; None when
        empty); they stay until `remove`."""
        found: list[tuple[int, int, float, bytes]] = []
        with self._lock:
            try:
                total = 0
                cursor = self._db.execute(
                    "SELECT id, readings, received_at, data FROM segment ORDER BY id"
                )
                for row in cursor:
                    if found and total + row[1] > limit:
                        break
                    found.append(row)
                    total += row[1]
                    if total >= limit:
                        break
                cursor.close()
            except sqlite3.Error as err:
                raise StorageError(f"outbox read failed: {err}") from err
        if not found:
            return None
        batch = ReadingBatch.concat([ReadingBatch.from_blob(r[3]) for r in found])
        return Pending(found[0][0], found[-1][0], batch, min(r[2] for r in found))

    def remove(self, pending: Pending) -> int:
        """Delete segments the cloud database committed; returns the readings removed."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT coalesce(sum(readings), 0) FROM segment WHERE id BETWEEN ? AND ?",
                    (pending.first_id, pending.last_id),
                ).fetchone()
                removed = int(row[0])
                self._db.execute(
                    "DELETE FROM segment WHERE id BETWEEN ? AND ?",
                    (pending.first_id, pending.last_id),
                )
                self._bump("rows_out_total", removed)
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise StorageError(f"outbox delete failed: {err}") from err
            self._pending -= removed
            return removed

    # --- reading --------------------------------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        """Readings waiting to be forwarded."""
        return self._pending

    def oldest_received_at(self) -> float | None:
        """Receipt time of the oldest pending reading, s since the epoch (None when empty)."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT received_at FROM segment ORDER BY id LIMIT 1"
                ).fetchone()
            except sqlite3.Error as err:
                raise StorageError(f"outbox read failed: {err}") from err
        return None if row is None else float(row[0])

    def count(self) -> int:
        """Readings in the outbox, counted on disk (also sees other processes' writes)."""
        with self._lock:
            row = self._db.execute("SELECT coalesce(sum(readings), 0) FROM segment").fetchone()
            return int(row[0])

    def stored_bytes(self) -> int:
        """Bytes of the pending segments' data (what the readings cost on disk, without pages)."""
        with self._lock:
            row = self._db.execute("SELECT coalesce(sum(length(data)), 0) FROM segment").fetchone()
            return int(row[0])

    # --- counters and notes shared with `--status` -----------------------------------------------
    def _bump(self, key: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE"
            " SET value = CAST(CAST(value AS INTEGER) + excluded.value AS TEXT)",
            (key, str(by)),
        )

    def set_meta(self, values: dict[str, str | None]) -> None:
        """Store notes (None deletes a key)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for key, value in values.items():
                    if value is None:
                        self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
                    else:
                        self._db.execute(
                            "INSERT INTO meta (key, value) VALUES (?, ?)"
                            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                            (key, value),
                        )
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise StorageError(f"outbox meta write failed: {err}") from err

    def meta(self) -> dict[str, str]:
        """All notes and counters."""
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as err:  # the connection is broken; the next call reports it
            log.warning("outbox rollback failed: %s", err)

    def close(self) -> None:
        """Close the file (checkpointing the WAL)."""
        with self._lock:
            self._db.close()
