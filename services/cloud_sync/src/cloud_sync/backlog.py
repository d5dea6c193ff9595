"""Backlog bookkeeping (pure): outbox fill level, in/out rates, health, the snapshot and its table.

One snapshot feeds every status surface — `/backlog`, the KPI topic, `/metrics`, `cloud-sync
--status` — and its `reasons` are the very reasons the service reports on `/healthz` and its status
topic (`cloud_db`, `outbox`, `influxdb`), so they cannot disagree.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from derbus.messages import format_utc

FillState = Literal["ok", "warn", "full"]
HealthState = Literal["online", "degraded"]
HEALTH_KEYS = ("cloud_db", "outbox", "influxdb")
"""The parts of cloud_sync that can be degraded: the cloud database, the outbox, InfluxDB."""


def fill_state(pending_rows: int, max_rows: int, warn_pct: float) -> FillState:
    """Where the outbox stands against its capacity.

    Args:
        pending_rows: readings waiting in the outbox.
        max_rows: capacity, readings.
        warn_pct: fill level (%) from which it warns.

    Returns:
        `full` at or above capacity (intake stops), `warn` at or above `warn_pct`, else `ok`.
    """
    if pending_rows >= max_rows:
        return "full"
    if pending_rows * 100.0 >= warn_pct * max_rows:
        return "warn"
    return "ok"


def has_room(pending_rows: int, incoming_rows: int, max_rows: int) -> bool:
    """Whether `incoming_rows` more readings fit (a message larger than the box fits an empty box)."""
    return pending_rows == 0 or pending_rows + incoming_rows <= max_rows


@dataclass
class RateMeter:
    """Events per second over a sliding window; time is given by the caller (monotonic seconds)."""

    window_s: float = 10.0
    _events: deque[tuple[float, int]] = field(default_factory=deque)
    _sum: int = 0

    def add(self, now_s: float, count: int) -> None:
        """Record `count` events at `now_s`."""
        if count:
            self._events.append((now_s, count))
            self._sum += count
        self._expire(now_s)

    def rate(self, now_s: float) -> float:
        """Events per second over the last `window_s` seconds."""
        self._expire(now_s)
        return self._sum / self.window_s

    def _expire(self, now_s: float) -> None:
        while self._events and self._events[0][0] <= now_s - self.window_s:
            _, count = self._events.popleft()
            self._sum -= count


@dataclass(frozen=True)
class BacklogSnapshot:
    """Everything `--status`, `/metrics`, `/backlog` and the KPI topic report."""

    pending_rows: int
    capacity_rows: int
    oldest_age_s: float | None
    rows_in_total: int
    rows_out_total: int
    rows_in_per_s: float
    rows_out_per_s: float
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    fill: FillState
    refused_messages_total: int = 0
    reasons: dict[str, str] = field(default_factory=dict)
    """Why cloud_sync is degraded, per part of `HEALTH_KEYS` (empty: online)."""

    @property
    def state(self) -> HealthState:
        """`degraded` while any part is, else `online` (the word of `/healthz`)."""
        return "degraded" if self.reasons else "online"

    @property
    def fill_pct(self) -> float:
        """Outbox fill level, %."""
        return 100.0 * self.pending_rows / self.capacity_rows if self.capacity_rows else 0.0

    def kpis(self, now: datetime) -> dict[str, float]:
        """The snapshot as KPI values (units in names; -1 where a time is unknown)."""
        return {
            "pending_rows": float(self.pending_rows),
            "capacity_rows": float(self.capacity_rows),
            "fill_pct": round(self.fill_pct, 3),
            "oldest_age_s": -1.0 if self.oldest_age_s is None else round(self.oldest_age_s, 3),
            "rows_in_total": float(self.rows_in_total),
            "rows_out_total": float(self.rows_out_total),
            "rows_in_per_s": round(self.rows_in_per_s, 3),
            "rows_out_per_s": round(self.rows_out_per_s, 3),
            "since_last_success_s": _age_s(now, self.last_success),
            "since_last_error_s": _age_s(now, self.last_error_at),
            "outbox_full": 1.0 if self.fill == "full" else 0.0,
            "refused_messages_total": float(self.refused_messages_total),
            "state_code": 1.0 if self.reasons else 2.0,  # derbus.storage.STATE_CODES
            **{f"{key}_failing": 1.0 if key in self.reasons else 0.0 for key in HEALTH_KEYS},
        }


def _age_s(now: datetime, then: datetime | None) -> float:
    return -1.0 if then is None else round((now - then).total_seconds(), 3)


def status_table(snapshot: BacklogSnapshot, now: datetime) -> str:
    """The backlog as a two-column text table (what `cloud-sync --status` prints)."""
    age = snapshot.oldest_age_s

    def when(t: datetime | None) -> str:
        if t is None:
            return "never"
        return f"{format_utc(t)} ({(now - t).total_seconds():.0f} s ago)"

    reasons = "; ".join(f"{k}: {v}" for k, v in sorted(snapshot.reasons.items()))
    rows = [
        ("state", snapshot.state + (f" ({reasons})" if reasons else "")),
        ("outbox fill", snapshot.fill),
        ("rows pending", f"{snapshot.pending_rows:,}"),
        ("capacity", f"{snapshot.capacity_rows:,} ({snapshot.fill_pct:.1f} % used)"),
        ("oldest pending", "—" if age is None else f"{age:.1f} s"),
        ("rows in (total)", f"{snapshot.rows_in_total:,}"),
        ("rows out (total)", f"{snapshot.rows_out_total:,}"),
        ("rows in / s", f"{snapshot.rows_in_per_s:.1f}"),
        ("rows out / s", f"{snapshot.rows_out_per_s:.1f}"),
        ("messages refused (full)", f"{snapshot.refused_messages_total:,}"),
        ("last success", when(snapshot.last_success)),
        ("last error", snapshot.last_error or "none"),
        ("last error at", when(snapshot.last_error_at)),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2) + "+" + "-" * 40
    out = [f"{'cloud_sync backlog'.ljust(width + 2)}|", line]
    out += [f"{k.ljust(width + 2)}| {v}" for k, v in rows]
    return "\n".join(out)


def health_reasons(
    cloud_db_error: str | None, outbox_reason: str | None, influx_error: str | None
) -> dict[str, str]:
    """cloud_sync's degraded reasons by part (see `HEALTH_KEYS`), from the facts of each part.

    Args:
        cloud_db_error: the error of the last forwarding pass (None once one succeeded).
        outbox_reason: the outbox's reason (write failure, full, above the warning level).
        influx_error: InfluxDB's last error (None once a write went through).
    """
    found = {"cloud_db": cloud_db_error, "outbox": outbox_reason, "influxdb": influx_error}
    return {key: reason for key, reason in found.items() if reason}
