"""Price sources without a network: CSV, ToU model, JSON shapes, staleness and the feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from derbus.tariff import Tariff
from ev_charging.prices import (
    PriceFeed,
    PriceSourceError,
    parse_csv,
    parse_json,
    to_series,
    tou_intervals,
)
from ev_charging.settings import PriceSourceConfig

T0 = datetime(2026, 6, 22, 0, 0, tzinfo=UTC)  # a Monday
CSV = """start,import_per_kwh,export_per_kwh,demand_charge_per_kw
2026-06-22T00:00:00Z,100,40,
2026-06-22T00:15:00Z,120,40,
2026-06-22T00:30:00Z,300,50,9.5
2026-06-22T00:45:00Z,280,50,9.5
"""


def cfg(kind: str = "csv", **kw: object) -> PriceSourceConfig:
    extra: dict[str, object] = {"path": Path("prices.csv")} if kind == "csv" else {}
    if kind == "http":
        extra = {"url": "http://127.0.0.1:1/prices"}
    return PriceSourceConfig(zone="ES", sites=("site-1",), kind=kind, **{**extra, **kw})  # type: ignore[arg-type]


def test_csv_prices_scaled_with_a_demand_window() -> None:
    intervals = parse_csv(CSV, cfg(price_scale=0.001))  # per MWh → per kWh
    assert intervals.import_per_kwh == pytest.approx([0.10, 0.12, 0.30, 0.28])
    assert intervals.export_per_kwh == pytest.approx([0.04, 0.04, 0.05, 0.05])
    (window,) = intervals.demand_windows
    assert window.start == T0 + timedelta(minutes=30)
    assert window.end == T0 + timedelta(hours=1)
    assert window.charge_per_kw == 9.5
    series = to_series(intervals, cfg(price_scale=0.001, valid_for_s=600), T0)
    assert series.step_s == 900
    assert series.import_at(T0 + timedelta(minutes=40)) == pytest.approx(0.30)
    assert series.import_at(T0 + timedelta(hours=1)) is None
    assert series.valid_until == T0 + timedelta(seconds=600)
    assert series.is_stale(T0 + timedelta(seconds=599)) is None
    assert "valid until" in (series.is_stale(T0 + timedelta(seconds=600)) or "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("when,price\n", "lacks the column 'start'"),
        ("start,import_per_kwh\n2026-06-22T00:00:00,1\n2026-06-22T00:15:00,1\n", "no time zone"),
        ("start,import_per_kwh\n2026-06-22T00:00:00Z,1\n2026-06-22T00:15:00Z,x\n", "not a number"),
        (
            "start,import_per_kwh\n2026-06-22T00:00:00Z,1\n2026-06-22T00:15:00Z,1\n"
            "2026-06-22T01:00:00Z,1\n",
            "breaks the 900 s step",
        ),
        ("start,import_per_kwh\n2026-06-22T00:00:00Z,1\n", "at least two intervals"),
    ],
)
def test_bad_csv_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(PriceSourceError, match=reason):
        to_series(parse_csv(text, cfg()), cfg(), T0)


def test_json_at_a_path_with_own_field_names() -> None:
    data = {
        "data": {
            "prices": [
                {"t": "2026-06-22T00:00:00+02:00", "buy": 210.0, "sell": 80.0},
                {"t": "2026-06-22T01:00:00+02:00", "buy": 190.0, "sell": 70.0},
            ]
        }
    }
    source = cfg(
        "http",
        json_path="data.prices",
        start_field="t",
        import_field="buy",
        export_field="sell",
        price_scale=0.001,
    )
    series = to_series(parse_json(data, source), source, T0)
    assert series.start == datetime(2026, 6, 21, 22, 0, tzinfo=UTC)
    assert series.step_s == 3600
    assert series.import_per_kwh == pytest.approx([0.21, 0.19])
    assert series.export_per_kwh == pytest.approx([0.08, 0.07])
    assert series.origin == "http"
    with pytest.raises(PriceSourceError, match="no 'prices'"):
        parse_json({"data": {}}, source)


def test_tou_model_as_a_series() -> None:
    tariff = Tariff(timezone="UTC")
    intervals = tou_intervals(tariff, T0 + timedelta(minutes=7), horizon_h=24, step_s=3600)
    assert intervals.starts[0] == T0  # floored to the step
    assert len(intervals.import_per_kwh) == 24
    assert intervals.import_per_kwh[3] == tariff.prices_per_kwh["off_peak"]
    assert intervals.import_per_kwh[11] == tariff.prices_per_kwh["peak"]
    assert intervals.import_per_kwh[9] == tariff.prices_per_kwh["shoulder"]
    assert intervals.export_per_kwh == [tariff.feed_in_per_kwh] * 24
    assert intervals.demand_windows[0].charge_per_kw == tariff.demand_charge_per_kw


def test_feed_marks_the_last_good_series_stale_on_failure() -> None:
    source = cfg(refresh_s=900)
    feed = PriceFeed([source])
    assert feed.due(T0) == [source]
    assert feed.fail(source, T0, "boom") is None  # nothing good yet: nothing to republish
    good = feed.accept(source, parse_csv(CSV, source), T0)
    assert not good.stale
    assert feed.due(T0 + timedelta(seconds=899)) == []
    later = T0 + timedelta(seconds=900)
    stale = feed.fail(source, later, "HTTP 500")
    assert stale is not None
    assert stale.stale
    assert "HTTP 500" in (stale.stale_reason or "")
    assert stale.import_per_kwh == good.import_per_kwh
    assert stale.is_stale(later) == stale.stale_reason
    assert feed.failures == {"ES": 2}
    assert feed.due(later + timedelta(seconds=60)) == [source]  # retried within a minute
