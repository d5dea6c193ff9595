"""The on-disk outbox: readings appended durably (SQLite WAL, synchronous=FULL) until forwarded.

An `append` returns only after its transaction is on disk (the WAL is fsync'd at commit), so the
bus delivery may be acknowledged afterwards: a crash loses nothing that was acknowledged. Rows
leave the outbox only through `remove`, which the forwarder calls after the cloud database
committed them. Counters (rows in/out, last success/error) live in the same file, so
`cloud-sync --status` can report them from another process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from derbus.errors import StorageError
from derbus.storage import ReadingRow

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_us     INTEGER NOT NULL,
    site_id     TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    metric      TEXT    NOT NULL,
    value       REAL    NOT NULL,
    received_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def to_epoch_us(when: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact)."""
    delta = when - _EPOCH  # aware minus aware: exact whatever the zone
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True)
class Pending:
    """A batch read from the outbox: its rows and the id range to remove once stored."""

    first_id: int
    last_id: int
    rows: list[ReadingRow]
    oldest_received_at: float


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
            self._pending = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except (sqlite3.Error, OSError) as err:
            raise StorageError(f"cannot open the outbox {path}: {err}") from err

    # --- writing --------------------------------------------------------------------------------
    def append(self, rows: Sequence[ReadingRow], received_at: float) -> None:
        """Append rows in one durable transaction (on disk when this returns).

        Args:
            rows: the readings of one message.
            received_at: wall-clock time of receipt, s since the epoch (for the backlog age).
        """
        if not rows:
            return
        data = [
            (to_epoch_us(r.time), r.site_id, r.device_id, r.metric, r.value, received_at)
            for r in rows
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO outbox (time_us, site_id, device_id, metric, value, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    data,
                )
                self._bump("rows_in_total", len(data))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                raise StorageError(f"outbox append failed: {err}") from err
            self._pending += len(data)

    def peek(self, limit: int) -> Pending | None:
        """The oldest `limit` rows (None when the outbox is empty); they stay until `remove`."""
        with self._lock:
            try:
                found = self._db.execute(
                    "SELECT id, time_us, site_id, device_id, metric, value, received_at"
                    " FROM outbox ORDER BY id LIMIT ?",
                    (limit,),
                ).fetchall()
            except sqlite3.Error as err:
                raise StorageError(f"outbox read failed: {err}") from err
        if not found:
            return None
        rows = [ReadingRow(_from_us(t), s, d, m, v) for _, t, s, d, m, v, _ in found]
        return Pending(found[0][0], found[-1][0], rows, min(r[6] for r in found))

    def remove(self, batch: Pending) -> int:
        """Delete a batch the cloud database committed; returns the rows removed."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "DELETE FROM outbox WHERE id BETWEEN ? AND ?", (batch.first_id, batch.last_id)
                )
                removed = cur.rowcount
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
        """Rows waiting to be forwarded."""
        return self._pending

    def oldest_received_at(self) -> float | None:
        """Receipt time of the oldest pending row, s since the epoch (None when empty)."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT received_at FROM outbox ORDER BY id LIMIT 1"
                ).fetchone()
            except sqlite3.Error as err:
                raise StorageError(f"outbox read failed: {err}") from err
        return None if row is None else float(row[0])

    def count(self) -> int:
        """Rows in the outbox, counted on disk (also sees other processes' writes)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

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
