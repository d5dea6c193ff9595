"""The stale/recover state machine of a polled device and its retry backoff (pure, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

HealthState = Literal["unknown", "ok", "stale"]


@dataclass
class DeviceHealth:
    """Consecutive poll failures of one device.

    `unknown` until the first poll; `ok` after a successful poll; `stale` once
    `stale_after` polls in a row failed; back to `ok` on the next success.

    Args:
        stale_after: consecutive failed polls that make the device stale.
    """

    stale_after: int
    state: HealthState = "unknown"
    consecutive_failures: int = 0
    last_ok: datetime | None = None
    last_error: str | None = None

    def success(self, now: datetime) -> HealthState | None:
        """Record a good poll; returns the new state when it changed."""
        self.consecutive_failures = 0
        self.last_ok = now
        self.last_error = None
        if self.state != "ok":
            self.state = "ok"
            return "ok"
        return None

    def failure(self, reason: str) -> HealthState | None:
        """Record a failed poll; returns `stale` when this failure made the device stale."""
        self.consecutive_failures += 1
        self.last_error = reason
        if self.state != "stale" and self.consecutive_failures >= self.stale_after:
            self.state = "stale"
            return "stale"
        return None


def next_poll_delay_s(poll_interval_s: float, failures: int, max_backoff_s: float) -> float:
    """Wait before the next poll: the interval when healthy, doubling per failure, capped.

    Args:
        poll_interval_s: the device's poll interval, s.
        failures: consecutive failures so far (0 = healthy).
        max_backoff_s: the longest wait after failures (never below the poll interval), s.
    """
    if failures <= 0:
        return poll_interval_s
    cap = max(max_backoff_s, poll_interval_s)
    return float(min(cap, poll_interval_s * 2 ** min(failures - 1, 30)))
