"""Tariff periods follow the site's local time, DST included."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from derbus.tariff import Tariff, TouWindow


def test_peak_is_judged_in_local_time() -> None:
    tariff = Tariff(timezone="Europe/Madrid")
    # Wednesday 2026-07-15: 09:30 UTC is 11:30 in Madrid (CEST, UTC+2) -> peak.
    assert tariff.period_at(datetime(2026, 7, 15, 9, 30, tzinfo=UTC)) == "peak"
    # Winter, Wednesday 2026-01-14: 09:30 UTC is 10:30 CET (UTC+1) -> peak; 08:30 UTC is 09:30 -> shoulder.
    assert tariff.period_at(datetime(2026, 1, 14, 9, 30, tzinfo=UTC)) == "peak"
    assert tariff.period_at(datetime(2026, 1, 14, 8, 30, tzinfo=UTC)) == "shoulder"
    # Night and weekends are off-peak.
    assert tariff.period_at(datetime(2026, 7, 15, 2, 0, tzinfo=UTC)) == "off_peak"
    assert tariff.period_at(datetime(2026, 7, 18, 10, 0, tzinfo=UTC)) == "off_peak"  # Saturday
    assert (
        tariff.price_at(datetime(2026, 7, 15, 9, 30, tzinfo=UTC)) == tariff.prices_per_kwh["peak"]
    )


def test_same_utc_instant_differs_by_timezone() -> None:
    when = datetime(2026, 7, 15, 10, 0, tzinfo=UTC)
    assert Tariff(timezone="Europe/Madrid").period_at(when) == "peak"  # 12:00 local
    assert Tariff(timezone="America/New_York").period_at(when) == "off_peak"  # 06:00 local


def test_invalid_definitions_are_refused() -> None:
    with pytest.raises(ValidationError):
        TouWindow(period="peak", start_hour=18, end_hour=10)
    with pytest.raises(ValidationError, match="lacks"):
        Tariff(prices_per_kwh={"peak": 0.3})
    with pytest.raises(ValueError, match="naive"):
        Tariff().period_at(datetime(2026, 1, 1))
