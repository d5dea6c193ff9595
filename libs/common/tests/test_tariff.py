"""Tariff periods follow the site's local time, DST included."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from derbus.messages import PriceSeries
from derbus.tariff import PriceBook, Tariff, TouWindow
from derbus.testing import price_series


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


T0 = datetime(2027, 1, 12, 0, 0, tzinfo=UTC)  # a Tuesday


def _series(issue: datetime, prices: list[float], *, stale: bool = False) -> PriceSeries:
    return price_series(
        prices,
        T0,
        issue_time=issue,
        valid_until=T0 + timedelta(hours=6),
        stale=stale,
        export_per_kwh=[p / 2 for p in prices],
    )


def test_price_book_uses_a_fresh_series_and_the_tariff_past_its_end() -> None:
    tariff = Tariff()
    book = PriceBook()
    assert book.for_site("site-1", tariff, T0).status == "tariff (no price series)"
    assert book.update("site-1", _series(T0, [0.31, 0.42]))
    prices = book.for_site("site-1", tariff, T0 + timedelta(minutes=5))
    assert prices.status == "series"
    imports, exports = prices.on_grid(T0 + timedelta(minutes=30), 3, 1800)
    past_end = T0 + timedelta(hours=2)
    assert imports == [0.31, 0.42, 0.42]
    assert exports == [0.155, 0.21, 0.21]
    assert prices.price_at(past_end) == tariff.price_at(past_end)
    assert prices.export_at(past_end) == tariff.feed_in_per_kwh
    assert book.stale(T0) == {}


def test_price_book_keeps_the_newest_series_and_falls_back_when_stale() -> None:
    tariff = Tariff()
    book = PriceBook()
    book.update("site-1", _series(T0 + timedelta(minutes=10), [0.5]))
    assert not book.update("site-1", _series(T0, [0.9]))  # older: refused
    assert book.for_site("site-1", tariff, T0).price_at(T0) == 0.5
    later = T0 + timedelta(hours=6)  # valid_until reached
    expired = book.for_site("site-1", tariff, later)
    assert expired.series is None
    assert expired.price_at(T0) == tariff.price_at(T0)
    assert expired.status.startswith("tariff (series stale: valid until")
    assert list(book.stale(later)) == ["site-1"]
    assert book.update("site-1", _series(T0 + timedelta(minutes=20), [0.5], stale=True))
    marked = book.for_site("site-1", tariff, T0)
    assert marked.status == "tariff (series stale: source down)"
    assert book.stale(T0) == {"site-1": "source down"}
