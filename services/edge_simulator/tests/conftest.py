"""Shared helpers of the edge simulator's tests: a manual clock and a small fleet factory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_simulator.config import SimConfig
from edge_simulator.fleet import Fleet, Location

T0 = datetime(2026, 6, 22, 0, 0, tzinfo=UTC)  # a Monday


@dataclass
class ManualClock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_fleet(
    config: SimConfig | None = None, n_sites: int = 1, seed: int = 7, **kw: Any
) -> Fleet:
    """A fleet at the default location starting at T0."""
    return Fleet(config or SimConfig(), Location(), n_sites, seed, kw.pop("start", T0), **kw)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
