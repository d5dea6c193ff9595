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

from cloud_sync.backlog import RateMeter
from cloud_sync.cloud import CloudStore
from cloud_sync.outbox import Outbox
from derbus.errors import StorageError
from derbus.messages import format_utc, utcnow

log = logging.getLogger(__name__)

FAILING_NOTE = "cloud_db_failing"
"""Outbox note: the error of the last forwarding pass ("" after a successful one)."""


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
    """

    def __init__(
        self,
        outbox: Outbox,
        store: CloudStore,
        *,
        batch_size: Callable[[], int],
        retry: RetryPolicy,
    ) -> None:
        self.outbox = outbox
        self.store = store
        self.batch_size = batch_size
        self.retry = retry
        self.rates_out = RateMeter()
        self.migrated = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = threading.Lock()
        notes = outbox.meta()
        self.last_success = parse_time(notes.get("last_success"))
        self.last_error = notes.get("last_error")
        self.last_error_at = parse_time(notes.get("last_error_at"))
        self.failing: str | None = notes.get(FAILING_NOTE) or None
        """The error of the last pass, None once a pass succeeded (the `cloud_db` health)."""

    def rate_out(self) -> float:
        """Readings forwarded per second over the last 10 s."""
        with self._lock:
            return self.rates_out.rate(time.monotonic())

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
                self.store.write(batch.batch)
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
                self.store.prepare(utcnow())
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
        self.failing = error
        notes: dict[str, str | None] = {FAILING_NOTE: error or ""}
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


def _retryable(err: BaseException) -> bool:
    return isinstance(err, StorageError) and not isinstance(err, StoppedError)


def parse_time(text: str | None) -> datetime | None:
    """A noted UTC time (None for no note)."""
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
