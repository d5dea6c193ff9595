"""Test helpers for the simulator and its users: a manual clock and a small fleet factory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from edge_simulator.config import SimConfig
from edge_simulator.fleet import Fleet, Location

T0 = datetime(2026, 6, 22, 0, 0, tzinfo=UTC)
"""A summer Monday, midnight UTC."""


@dataclass
class ManualClock:
    """A clock moved by hand (pass it as `build_service(..., clock=clock)`)."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


def make_fleet(
    config: SimConfig | None = None, n_sites: int = 1, seed: int = 7, **kw: Any
) -> Fleet:
    """A fleet at the default location (Barcelona) starting at T0."""
    start = kw.pop("start", T0)
    return Fleet(config or SimConfig(), Location(), n_sites, seed, start, **kw)
