"""Test helpers for the load manager's users."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from derbus.messages import TimeSeries


def pv_spike(now: datetime, step_s: int, at_step: int, kw: float = 5.0, n: int = 60) -> TimeSeries:
    """A PV forecast on the plan grid holding `now`: `kw` only in step `at_step`, 0 elsewhere
    (a job is placed there). Its PV step starts at `start + at_step * step_s`."""
    start = datetime.fromtimestamp(math.floor(now.timestamp() / step_s) * step_s, UTC)
    values = [0.0] * n
    values[at_step] = kw
    return TimeSeries(
        ts=start,
        source="forecaster",
        kind="forecast",
        quantity="pv_generation_kw",
        issue_time=start,
        start=start,
        step_s=step_s,
        values=values,
    )


def step_start(series: TimeSeries, step: int) -> datetime:
    """Start of one step of a series."""
    return series.start + timedelta(seconds=step * series.step_s)
