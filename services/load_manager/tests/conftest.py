"""Shared helpers of the load manager's unit tests: a settable clock, settings, readings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from load_manager.settings import Settings

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
"""A Monday, 12:00 in Madrid (UTC+2): the top of a settlement hour."""


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_settings(tmp_path: Path) -> Any:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "var",
            "cycle_s": 300.0,
            "setpoint_ttl_s": 900.0,
            "refresh_margin_s": 60.0,
            "dispatch_interval_s": 60.0,
            "kpi_interval_s": 3600.0,
            "replan_interval_s": 86_400.0,
        }
        return Settings(**{**base, **overrides})

    return make
