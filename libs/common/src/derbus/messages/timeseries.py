"""Time series messages: forecasts and schedules on a regular step, with optional quantiles."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, model_validator

from derbus.messages.base import Message, UtcDatetime

GridHow = Literal["point", "mean"]
"""How a series is put on another grid: the value of the interval containing each grid step's
start (`point`), or the time-weighted mean over each grid step (`mean`, for power on a coarser
or shifted grid)."""

GridOutside = Literal["zero", "daily"]
"""What a grid step outside the series gets: 0 (`zero`, for schedules: idle), or the value from
whole days earlier or later, the first or last value when none (`daily`, for forecasts)."""

_DAY_S = 86_400


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

    def quantile_values(self, quantile: str | None) -> list[float]:
        """The values of quantile `quantile` (e.g. "p90") when the series has it, else `values`."""
        if quantile is not None and self.quantiles and quantile in self.quantiles:
            return self.quantiles[quantile]
        return self.values

    def on_grid(
        self,
        start: datetime,
        step_s: int,
        n: int,
        *,
        how: GridHow = "point",
        outside: GridOutside = "zero",
        quantile: str | None = None,
    ) -> list[float]:
        """The series on another regular grid: `n` steps of `step_s` seconds from `start`.

        Args:
            start: start of the grid's first step (aware).
            step_s: the grid's step, s (> 0).
            n: number of grid steps (>= 0).
            how: `point` (value of the interval containing each step's start) or `mean`
                (time-weighted mean over each step).
            outside: value for time outside the series: `zero` or `daily` (see `GridOutside`).
            quantile: plan on this quantile (e.g. "p90") when the series has it, else on `values`.

        Returns:
            One value per grid step.

        Raises:
            ValueError: when `step_s` <= 0 or `n` < 0.
        """
        if step_s <= 0 or n < 0:
            raise ValueError(f"on_grid needs step_s > 0 and n >= 0, got {step_s} and {n}")
        values = self.quantile_values(quantile)
        count, src = len(values), self.step_s
        per_day = _DAY_S // src if _DAY_S % src == 0 and count >= _DAY_S // src else 0

        def at(index: int) -> float:
            if 0 <= index < count:
                return values[index]
            if outside == "zero":
                return 0.0
            if per_day:  # shift by whole days into the series
                if index >= count:
                    index -= per_day * math.ceil((index - count + 1) / per_day)
                else:
                    index += per_day * math.ceil(-index / per_day)
            return values[min(max(index, 0), count - 1)]

        offset = (start - self.start).total_seconds()
        if how == "point":
            return [at(math.floor((offset + k * step_s) / src)) for k in range(n)]
        out = []
        for k in range(n):
            t, end = offset + k * step_s, offset + (k + 1) * step_s
            index, acc = math.floor(t / src), 0.0
            while t < end:  # one pass per source interval the step overlaps
                seg_end = min(end, (index + 1) * src)
                if seg_end > t:
                    acc += at(index) * (seg_end - t)
                    t = seg_end
                index += 1
            out.append(acc / step_s)
        return out
