"""Time-of-use tariff: periods in the site's local time, prices, feed-in and demand charge.

One definition shared by the edge simulator (prices it publishes), feature engineering (tariff
features) and the optimisers (energy cost), so they can never disagree about what "peak" is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from derbus.messages import TouPeriod


class TouWindow(BaseModel):
    """Hours [start_hour, end_hour) of local time that belong to a period."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    period: TouPeriod
    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=1, le=24)
    weekdays_only: bool = Field(default=True, description="Monday-Friday only")

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.end_hour <= self.start_hour:
            raise ValueError("end_hour must be after start_hour")
        return self


_DEFAULT_PRICES: dict[TouPeriod, float] = {"off_peak": 0.09, "shoulder": 0.16, "peak": 0.27}


def _default_windows() -> list[TouWindow]:
    return [
        TouWindow(period="shoulder", start_hour=8, end_hour=10),
        TouWindow(period="peak", start_hour=10, end_hour=14),
        TouWindow(period="shoulder", start_hour=14, end_hour=18),
        TouWindow(period="peak", start_hour=18, end_hour=22),
        TouWindow(period="shoulder", start_hour=22, end_hour=24),
    ]


class Tariff(BaseModel):
    """A time-of-use tariff. Hours not covered by a window are `off_peak`.

    Prices are in the site's currency per kWh; the demand charge per kW of the month's highest
    15-minute average import.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = "Europe/Madrid"
    prices_per_kwh: dict[TouPeriod, float] = Field(default_factory=lambda: _DEFAULT_PRICES.copy())
    windows: list[TouWindow] = Field(default_factory=_default_windows)
    feed_in_per_kwh: float = Field(default=0.05, description="export remuneration")
    demand_charge_per_kw: float = Field(default=8.0, ge=0, description="per kW of monthly peak")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @model_validator(mode="after")
    def _prices(self) -> Self:
        missing = {"off_peak", "shoulder", "peak"} - set(self.prices_per_kwh)
        if missing:
            raise ValueError(f"prices_per_kwh lacks {sorted(missing)}")
        return self

    def period_at(self, when: datetime) -> TouPeriod:
        """The time-of-use period of an aware instant, judged in the site's local time."""
        if when.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) instant")
        local = when.astimezone(ZoneInfo(self.timezone))
        weekday = local.weekday() < 5
        for w in self.windows:
            if (weekday or not w.weekdays_only) and w.start_hour <= local.hour < w.end_hour:
                return w.period
        return "off_peak"

    def price_at(self, when: datetime) -> float:
        """Import energy price at an aware instant, per kWh."""
        return self.prices_per_kwh[self.period_at(when)]
