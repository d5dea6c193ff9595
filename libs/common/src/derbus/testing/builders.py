"""Message builders for tests: what a test does not look at gets a plain default."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from derbus.messages import TimeSeries


def time_series(
    values: list[float],
    start: datetime,
    *,
    kind: Literal["forecast", "schedule"] = "forecast",
    quantity: str = "load_p_kw",
    step_s: int = 900,
    source: str = "test",
    issue_time: datetime | None = None,
    **fields: Any,
) -> TimeSeries:
    """A series of `values` every `step_s` seconds from `start`.

    It is issued (and stamped) at `issue_time`, by default `start`; `fields` sets the others
    (`quantiles`, `model`, `meta`, `unit`).
    """
    issued = start if issue_time is None else issue_time
    return TimeSeries(
        ts=issued,
        source=source,
        kind=kind,
        quantity=quantity,
        issue_time=issued,
        start=start,
        step_s=step_s,
        values=values,
        **fields,
    )
