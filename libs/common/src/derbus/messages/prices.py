"""Price series: import and export prices per interval, demand-charge windows, and staleness."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from derbus.messages.base import Message, UtcDatetime

PriceOrigin = Literal["csv", "tou", "http"]


class DemandWindow(BaseModel):
    """A demand-charge window: the highest average import inside it is billed per kW."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: UtcDatetime
    end: UtcDatetime
    charge_per_kw: float = Field(ge=0, description="per kW of the window's peak import")

    @model_validator(mode="after")
    def _order(self) -> DemandWindow:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class PriceSeries(Message):
    """Import and export prices on a regular grid (currency per kWh), for one site or zone.

    Interval `i` covers `[start + i*step_s, start + (i+1)*step_s)`. `export_per_kwh` is what an
    exported kWh earns (positive = paid to the site). The series is trustworthy until
    `valid_until`; after it (or with `stale` set by the publisher) consumers fall back to their
    configured tariff and say so (`is_stale`).
    """

    zone: str = Field(min_length=1, description="price zone or site the series is for")
    currency: str = Field(default="EUR", min_length=3, max_length=3, description="ISO 4217")
    origin: PriceOrigin = Field(description="where the prices came from")
    issue_time: UtcDatetime = Field(description="when the source published these prices")
    start: UtcDatetime = Field(description="start of the first interval")
    step_s: int = Field(gt=0, description="interval length, s")
    import_per_kwh: list[float] = Field(min_length=1, description="import price per interval")
    export_per_kwh: list[float] | None = Field(
        default=None, description="export remuneration per interval (same length); None = 0"
    )
    demand_windows: list[DemandWindow] = Field(default_factory=list)
    valid_until: UtcDatetime = Field(description="after this instant the series is stale")
    stale: bool = Field(
        default=False, description="the publisher could not refresh it (last good series)"
    )
    stale_reason: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PriceSeries:
        for name, values in (("import", self.import_per_kwh), ("export", self.export_per_kwh)):
            if values is None:
                continue
            if any(not math.isfinite(v) for v in values):
                raise ValueError(f"{name} prices must be finite")
            if len(values) != len(self.import_per_kwh):
                raise ValueError(
                    f"{name} has {len(values)} prices, expected {len(self.import_per_kwh)}"
                )
        return self

    @property
    def end(self) -> datetime:
        """End of the last interval."""
        return self.start + timedelta(seconds=self.step_s * len(self.import_per_kwh))

    def index_at(self, when: datetime) -> int | None:
        """Index of the interval holding `when`, None outside the series."""
        offset = (when - self.start).total_seconds()
        index = math.floor(offset / self.step_s)
        return index if 0 <= index < len(self.import_per_kwh) else None

    def import_at(self, when: datetime) -> float | None:
        """Import price of the interval holding `when` (None outside the series)."""
        index = self.index_at(when)
        return None if index is None else self.import_per_kwh[index]

    def export_at(self, when: datetime) -> float | None:
        """Export remuneration of the interval holding `when` (None outside; 0 when not given)."""
        index = self.index_at(when)
        if index is None:
            return None
        return 0.0 if self.export_per_kwh is None else self.export_per_kwh[index]

    def is_stale(self, now: datetime) -> str | None:
        """Why the series must not be used at `now` (None when it may)."""
        if self.stale:
            return self.stale_reason or "marked stale by its publisher"
        if now >= self.valid_until:
            return f"valid until {self.valid_until.isoformat()}, now {now.isoformat()}"
        return None
