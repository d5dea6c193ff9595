"""Time-of-use tariff: periods in the site's local time, prices, feed-in and demand charge.

One definition shared by the edge simulator (prices it publishes), feature engineering (tariff
features) and the optimisers (energy cost), so they can never disagree about what "peak" is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from derbus.messages import PriceSeries, TouPeriod


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


class ImportPrices(Protocol):
    """What a planner prices imported energy with: a `Tariff` or a site's `SitePrices`."""

    def price_at(self, when: datetime) -> float:
        """Import price per kWh of the interval holding an aware instant."""
        ...


@dataclass(frozen=True)
class SitePrices:
    """A site's prices as judged at one instant: its price series while fresh, else the tariff.

    Past the series' end (or before its start) each interval falls back to the tariff, so a
    planner's horizon is always priced.
    """

    tariff: Tariff
    series: PriceSeries | None = None
    """The series in force (None: no series, or a stale one)."""
    status: str = "tariff (no price series)"
    """`series`, or `tariff (<why>)`: what the site is planned with, for status and KPIs."""

    def price_at(self, when: datetime) -> float:
        """Import price per kWh at `when`."""
        price = None if self.series is None else self.series.import_at(when)
        return self.tariff.price_at(when) if price is None else price

    def export_at(self, when: datetime) -> float:
        """Export remuneration per kWh at `when`."""
        price = None if self.series is None else self.series.export_at(when)
        return self.tariff.feed_in_per_kwh if price is None else price

    def on_grid(self, start: datetime, n: int, step_s: int) -> tuple[list[float], list[float]]:
        """Import price and export remuneration of `n` intervals from `start`, per kWh."""
        times = [start + timedelta(seconds=i * step_s) for i in range(n)]
        return [self.price_at(t) for t in times], [self.export_at(t) for t in times]


class PriceBook:
    """The latest price series of each site, judged against a configured tariff when used.

    Services that plan on prices (peak shaving's EMA, the load manager, EV charging) keep one:
    `update` with each `forecast.price` message (True when the site should be re-planned),
    `for_site` when planning (with the tariff of their settings at that moment), `stale` for
    their status.
    """

    def __init__(self) -> None:
        self.series: dict[str, PriceSeries] = {}

    def update(self, site_id: str, series: PriceSeries) -> bool:
        """Keep a site's series unless an already newer one is held; True when it was kept."""
        held = self.series.get(site_id)
        if held is not None and series.issue_time < held.issue_time:
            return False
        self.series[site_id] = series
        return True

    def for_site(self, site_id: str, tariff: Tariff, now: datetime) -> SitePrices:
        """A site's prices at `now`: the series when fresh, else `tariff`, with the reason."""
        series = self.series.get(site_id)
        if series is None:
            return SitePrices(tariff)
        reason = series.is_stale(now)
        if reason is not None:
            return SitePrices(tariff, None, f"tariff (series stale: {reason})")
        return SitePrices(tariff, series, "series")

    def stale(self, now: datetime) -> dict[str, str]:
        """Sites whose series is stale at `now`, with the reason (they run on the tariff)."""
        return {
            site: reason
            for site, series in sorted(self.series.items())
            if (reason := series.is_stale(now)) is not None
        }
