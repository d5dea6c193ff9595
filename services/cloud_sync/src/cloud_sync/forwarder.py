"""Store-and-forward: batches from the outbox to the cloud database, removed only once committed.

A batch is retried with bounded exponential backoff (tenacity); when the attempts run out the
pass stops, the batch stays in the outbox and the next pass starts with it again — nothing is
ever dropped. A crash between the commit and the removal re-sends the batch, which the cloud
database's `ON CONFLICT DO NOTHING` turns into a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from cloud_sync.backlog import BacklogSnapshot, RateMeter, fill_state
from cloud_sync.cloud import CloudStore
from cloud_sync.outbox import Outbox
from derbus.errors import StorageError
from derbus.messages import format_utc, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for one batch."""

    attempts: int = 5
    initial_delay_s: float = 0.2
    max_delay_s: float = 10.0


@dataclass(frozen=True)
class DrainResult:
    """What one forwarding pass did."""

    rows: int
    batches: int
    error: str | None
    pending_rows: int


class StoppedError(StorageError):
    """The forwarder was asked to stop while waiting to retry."""


class Forwarder:
    """Moves readings from the outbox to the cloud store and keeps the backlog statistics.

    Args:
        outbox: the on-disk outbox.
        store: the cloud database target.
        batch_size: rows per batch (a callable is read before each batch).
        retry: the per-batch retry policy.
        capacity_rows: outbox capacity (a callable), for the fill level.
        warn_pct: fill level that warns (a callable), %.
    """

    def __init__(
        self,
        outbox: Outbox,
        store: CloudStore,
        *,
        batch_size: Callable[[], int],
        retry: RetryPolicy,
        capacity_rows: Callable[[], int],
        warn_pct: Callable[[], float],
    ) -> None:
        self.outbox = outbox
        self.store = store
        self.batch_size = batch_size
        self.retry = retry
        self.capacity_rows = capacity_rows
        self.warn_pct = warn_pct
        self.rates_in = RateMeter()
        self.rates_out = RateMeter()
        self.refused_messages = 0
        self.migrated = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = threading.Lock()
        notes = outbox.meta()
        self.last_success = _parse_time(notes.get("last_success"))
        self.last_error = notes.get("last_error")
        self.last_error_at = _parse_time(notes.get("last_error_at"))

    # --- intake bookkeeping (event loop thread) ---------------------------------------------------
    def record_in(self, rows: int) -> None:
        """Count rows appended to the outbox."""
        with self._lock:
            self.rates_in.add(time.monotonic(), rows)

    def record_refused(self) -> None:
        """Count a message held back because the outbox is full."""
        with self._lock:
            self.refused_messages += 1

    # --- forwarding (worker thread) -----------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the cloud schema once (raises StorageError / ConfigError)."""
        applied: list[str] = self.store.migrate()
        self.migrated = True
        return applied

    def forward_batch(self) -> int:
        """Send the oldest batch (with retries) and remove it; 0 when the outbox is empty.

        Raises:
            StorageError: the batch could not be stored within the retry budget (it stays).
        """
        batch = self.outbox.peek(max(1, self.batch_size()))
        if batch is None:
            return 0
        for attempt in Retrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential(
                multiplier=self.retry.initial_delay_s,
                min=self.retry.initial_delay_s,
                max=self.retry.max_delay_s,
            ),
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                self.store.write(batch.rows)
        removed: int = self.outbox.remove(batch)
        with self._lock:
            self.rates_out.add(time.monotonic(), removed)
        return removed

    def drain(self, max_seconds: float | None = None) -> DrainResult:
        """Forward batches until the outbox is empty, a batch fails, time is up or `stop()`.

        Args:
            max_seconds: stop starting new batches after this long (None = no limit).
        """
        started = time.monotonic()
        rows = batches = 0
        error: str | None = None
        with self._busy:
            try:
                if not self.migrated:
                    self.migrate()
                while not self._stop.is_set():
                    moved = self.forward_batch()
                    if moved == 0:
                        break
                    rows += moved
                    batches += 1
                    if max_seconds is not None and time.monotonic() - started > max_seconds:
                        break
            except StoppedError:
                log.info("forwarding stopped while waiting to retry")
            except StorageError as err:
                error = str(err)
        self._note(rows, error)
        return DrainResult(rows, batches, error, self.outbox.pending_rows)

    def _note(self, rows: int, error: str | None) -> None:
        now = utcnow()
        notes: dict[str, str | None] = {}
        if error is None or rows > 0:
            self.last_success = now
            notes["last_success"] = format_utc(now)
        if error is not None:
            self.last_error, self.last_error_at = error, now
            notes["last_error"] = error
            notes["last_error_at"] = format_utc(now)
            log.warning(
                "forwarding failed, %d rows kept in the outbox: %s", self.outbox.pending_rows, error
            )
        try:
            self.outbox.set_meta(notes)
        except StorageError as err:
            log.warning("could not note the forwarding result: %s", err)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise StoppedError("stopping")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Ask a running pass to stop and wait for it (True when it finished in time)."""
        self._stop.set()
        if self._busy.acquire(timeout=timeout_s):
            self._busy.release()
            return True
        return False

    # --- reporting ----------------------------------------------------------------------------------
    def snapshot(self, now: datetime | None = None) -> BacklogSnapshot:
        """The backlog as it stands."""
        now = now or utcnow()
        mono = time.monotonic()
        pending = self.outbox.pending_rows
        oldest = self.outbox.oldest_received_at() if pending else None
        counters = self.outbox.meta()
        with self._lock:
            rate_in, rate_out = self.rates_in.rate(mono), self.rates_out.rate(mono)
            refused = self.refused_messages
        capacity = self.capacity_rows()
        return BacklogSnapshot(
            pending_rows=pending,
            capacity_rows=capacity,
            oldest_age_s=None if oldest is None else max(0.0, now.timestamp() - oldest),
            rows_in_total=int(counters.get("rows_in_total", 0)),
            rows_out_total=int(counters.get("rows_out_total", 0)),
            rows_in_per_s=rate_in,
            rows_out_per_s=rate_out,
            last_success=self.last_success,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            state=fill_state(pending, capacity, self.warn_pct()),
            refused_messages_total=refused,
        )


def _retryable(err: BaseException) -> bool:
    return isinstance(err, StorageError) and not isinstance(err, StoppedError)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    err = outcome.exception() if outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "batch attempt %d failed (%s); retrying in %.1f s", state.attempt_number, err, delay
    )


def offline_snapshot(outbox: Outbox, capacity_rows: int, warn_pct: float) -> BacklogSnapshot:
    """The backlog read from an outbox file alone (what `--status` shows; rates as last noted)."""
    notes = outbox.meta()
    pending = outbox.count()
    oldest = outbox.oldest_received_at()
    now = utcnow()
    return BacklogSnapshot(
        pending_rows=pending,
        capacity_rows=capacity_rows,
        oldest_age_s=None if oldest is None else max(0.0, now.timestamp() - oldest),
        rows_in_total=int(notes.get("rows_in_total", 0)),
        rows_out_total=int(notes.get("rows_out_total", 0)),
        rows_in_per_s=float(notes.get("rows_in_per_s", 0.0)),
        rows_out_per_s=float(notes.get("rows_out_per_s", 0.0)),
        last_success=_parse_time(notes.get("last_success")),
        last_error=notes.get("last_error"),
        last_error_at=_parse_time(notes.get("last_error_at")),
        state=fill_state(pending, capacity_rows, warn_pct),
        refused_messages_total=int(notes.get("refused_messages_total", 0)),
    )
