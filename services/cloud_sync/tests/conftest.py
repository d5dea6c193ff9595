"""Shared helpers of the cloud_sync unit tests: settings on a temp folder, a recording point sink."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud_sync.settings import Settings
from derbus.settings import DatabaseSettings, MqttSettings
from derbus.storage import InfluxPoint, ReadingRow

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass
class RecordingSink:
    """A `PointSink` that keeps the points (stands in for the InfluxDB client in unit tests)."""

    points: list[InfluxPoint] = field(default_factory=list)
    points_written: int = 0
    points_failed: int = 0
    last_error: str | None = None
    closed: bool = False

    def write(self, points: Sequence[InfluxPoint]) -> None:
        self.points.extend(points)
        self.points_written += len(points)

    def write_lines(self, lines: Sequence[str]) -> None:
        self.write([parse_line(text) for text in lines])

    def close(self) -> None:
        self.closed = True


def parse_line(text: str) -> InfluxPoint:
    """A line-protocol line of float fields back as a point (no escapes in the tests' names)."""
    series, body, ns = text.split(" ")
    measurement, *tags = series.split(",")
    fields = dict(item.split("=") for item in body.split(","))
    return InfluxPoint(
        measurement,
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(ns) // 1000),
        dict(tag.split("=") for tag in tags),
        {key: float(value) for key, value in fields.items()},
    )


def _rows(n: int, site: str = "s1", start: datetime = T0) -> list[ReadingRow]:
    return [
        ReadingRow(start + timedelta(seconds=i), site, "pcc", "meter.p_kw", float(i))
        for i in range(n)
    ]


@pytest.fixture
def make_rows() -> Callable[..., list[ReadingRow]]:
    """`make_rows(n, site="s1", start=T0)`: `n` distinct readings one second apart."""
    return _rows


@pytest.fixture
def sink() -> RecordingSink:
    """A recording InfluxDB stand-in."""
    return RecordingSink()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a temporary data folder with an embedded SQLite cloud database."""
    return Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(database_url=f"sqlite:///{tmp_path / 'cloud.db'}"),
        mqtt=MqttSettings(root="test/v1"),
        retry_attempts=2,
        retry_initial_delay_s=0.01,
        retry_max_delay_s=0.02,
        interval_s=3600,
        kpi_interval_s=3600,
    )
