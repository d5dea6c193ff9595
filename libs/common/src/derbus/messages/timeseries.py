"""Time series messages: forecasts and schedules on a regular step, with optional quantiles."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, model_validator

from derbus.messages.base import Message, UtcDatetime


class TimeSeries(Message):
    """Values on a regular grid starting at `start`, every `step_s` seconds.

    Power series follow the load-referenced sign convention (see `derbus.messages`).
    """

    kind: Literal["forecast", "schedule"]
    quantity: str = Field(
        min_length=1, description="e.g. load_p_kw, pv_generation_kw, battery_p_kw"
    )
    unit: str = Field(default="kW")
    issue_time: UtcDatetime = Field(description="when the series was made (its information time)")
    start: UtcDatetime = Field(description="start of the first interval")
    step_s: int = Field(gt=0, description="interval length, s")
    values: list[float] = Field(min_length=1)
    quantiles: dict[str, list[float]] | None = Field(
        default=None, description="e.g. {'p10': [...], 'p90': [...]}, same length as values"
    )
    model: str | None = Field(default=None, description="model or optimiser that produced it")
    meta: dict[str, Any] = Field(default_factory=dict, description="solve status, metrics…")

    @model_validator(mode="after")
    def _check(self) -> TimeSeries:
        for v in self.values:
            if not math.isfinite(v):
                raise ValueError("values must be finite")
        for name, q in (self.quantiles or {}).items():
            if len(q) != len(self.values):
                raise ValueError(
                    f"quantile {name} has {len(q)} values, expected {len(self.values)}"
                )
        return self

    def times(self) -> list[datetime]:
        """Start time of each interval."""
        return [self.start + timedelta(seconds=i * self.step_s) for i in range(len(self.values))]

    def value_at(self, when: datetime) -> float | None:
        """The value of the interval containing `when`, or None outside the series."""
        offset = (when - self.start).total_seconds()
        index = math.floor(offset / self.step_s)
        if 0 <= index < len(self.values):
            return self.values[index]
        return None
