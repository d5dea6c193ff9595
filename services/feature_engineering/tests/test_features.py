"""The pure feature functions of derbus.features: values on hand-built series, calendar, DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from derbus import features as fx
from derbus.tariff import Tariff


def idx(start: str, n: int) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="15min", tz="UTC")


def test_resample_means_each_interval_and_flags_short_gaps() -> None:
    index = idx("2026-01-05 00:00", 4)
    samples = pd.Series(
        [1.0, 3.0, 10.0],
        index=pd.to_datetime(
            ["2026-01-05 00:01", "2026-01-05 00:14", "2026-01-05 00:40"], utc=True
        ),
    )
    values, filled = fx.resample(samples, index, max_fill_steps=4)
    assert values.tolist() == [2.0, 2.0, 10.0, 10.0]  # 00:15 and 00:45 carried forward
    assert filled.tolist() == [False, True, False, True]


def test_long_gaps_keep_their_tail_missing_never_dropped() -> None:
    index = idx("2026-01-05 00:00", 8)
    samples = pd.Series([5.0, 7.0], index=[index[0], index[7]])
    values, filled = fx.resample(samples, index, max_fill_steps=2)
    assert len(values) == 8, "every interval keeps its row"
    assert values.iloc[:3].tolist() == [5.0, 5.0, 5.0]
    assert values.iloc[3:7].isna().all()
    assert values.iloc[7] == 7.0
    assert filled.tolist() == [False, True, True, False, False, False, False, False]


def test_no_fill_when_disabled() -> None:
    index = idx("2026-01-05 00:00", 3)
    values, filled = fx.resample(pd.Series([1.0], index=[index[0]]), index, max_fill_steps=0)
    assert values.iloc[1:].isna().all()
    assert not filled.any()


def test_lags_on_a_hand_built_series() -> None:
    series = pd.Series(np.arange(700, dtype=float), index=idx("2026-01-05", 700))
    assert fx.lag(series, 1).iloc[10] == 9
    assert fx.lag(series, fx.STEPS_PER_DAY).iloc[100] == 4
    assert fx.lag(series, fx.STEPS_PER_WEEK).iloc[699] == 699 - 672
    assert np.isnan(fx.lag(series, fx.STEPS_PER_WEEK).iloc[671])


def test_trailing_mean_std_excludes_the_interval_itself() -> None:
    series = pd.Series([1.0, 2.0, 3.0, 100.0], index=idx("2026-01-05", 4))
    mean, std = fx.trailing_mean_std(series, 3)
    assert mean.iloc[3] == 2.0  # mean of 1, 2, 3; the 100 at t is not used
    assert std.iloc[3] == pytest.approx(np.std([1, 2, 3]))
    assert mean.iloc[2] == 1.5  # half the window is enough
    assert np.isnan(mean.iloc[0])


def test_calendar_in_local_time() -> None:
    # 2026-01-05 is a Monday; 23:00 UTC is already Tuesday 00:00 in Berlin.
    cal = fx.calendar_features(idx("2026-01-05 22:45", 2), "Europe/Berlin", "DE")
    assert cal["hour_of_day"].tolist() == [23.75, 0.0]
    assert cal["day_of_week"].tolist() == [0, 1]
    assert cal["hour_sin"].iloc[1] == pytest.approx(0.0)
    assert cal["hour_cos"].iloc[1] == pytest.approx(1.0)
    assert cal["month"].tolist() == [1, 1]
    weekend = fx.calendar_features(idx("2026-01-10 12:00", 1), "Europe/Berlin", "DE")
    assert bool(weekend["is_weekend"].iloc[0])


def test_holidays_are_judged_on_the_local_date() -> None:
    # German Unity Day, 3 October: 22:00 UTC on 2 October is already 00:00 on 3 October in Berlin.
    cal = fx.calendar_features(
        pd.DatetimeIndex(
            ["2016-10-02 21:45", "2016-10-02 22:00", "2016-10-03 21:45", "2016-10-03 22:00"],
            tz="UTC",
        ),
        "Europe/Berlin",
        "DE",
    )
    assert cal["is_holiday"].tolist() == [False, True, True, False]
    # Spain's national day, 12 October, with the site in Madrid; not a holiday in Germany.
    when = pd.DatetimeIndex(["2026-10-12 10:00"], tz="UTC")
    assert bool(fx.calendar_features(when, "Europe/Madrid", "ES")["is_holiday"].iloc[0])
    assert not bool(fx.calendar_features(when, "Europe/Berlin", "DE")["is_holiday"].iloc[0])


@pytest.mark.parametrize(("day", "intervals"), [("2016-03-27", 92), ("2016-10-30", 100)])
def test_dst_days_have_92_or_100_local_intervals(day: str, intervals: int) -> None:
    index = fx.grid(datetime(2016, 3, 1, tzinfo=UTC), datetime(2016, 11, 30, tzinfo=UTC))
    cal = fx.calendar_features(index, "Europe/Berlin", "DE")
    local_dates = index.tz_convert("Europe/Berlin").strftime("%Y-%m-%d")
    assert int((local_dates == day).sum()) == intervals
    hours = cal.loc[local_dates == day, "hour_of_day"].tolist()
    if intervals == 92:
        assert 2.0 not in hours
        assert 3.0 in hours
    else:
        assert hours.count(2.0) == 2  # 02:00-03:00 happens twice


def test_tariff_features_follow_the_shared_tariff() -> None:
    tariff = Tariff(timezone="Europe/Berlin")
    # Monday 10:00 Berlin (CET) = 09:00 UTC: peak; Saturday same hour: off-peak.
    index = pd.DatetimeIndex(["2026-01-05 09:00", "2026-01-10 09:00", "2026-01-05 06:00"], tz="UTC")
    tf = fx.tariff_features(index, tariff)
    assert tf["tou_period"].tolist() == ["peak", "off_peak", "off_peak"]
    assert tf["tou_code"].tolist() == [2, 0, 0]
    assert tf["tariff_price_per_kwh"].tolist() == [0.27, 0.09, 0.09]
    for t, price in zip(index, tf["tariff_price_per_kwh"], strict=True):
        assert price == tariff.price_at(t.to_pydatetime())


def test_clear_sky_irradiance_and_index() -> None:
    index = pd.DatetimeIndex(["2026-06-21 11:00", "2026-06-21 23:00"], tz="UTC")
    solar = fx.solar_features(index, 52.52, 13.40)
    noon, night = solar["clearsky_ghi_w_m2"].tolist()
    assert 750 < noon < 1000
    assert night == 0.0
    assert solar["solar_elevation_deg"].iloc[0] > 55
    assert solar["solar_elevation_deg"].iloc[1] < 0
    csi = fx.clear_sky_index(pd.Series([noon / 2, 5.0], index=index), solar["clearsky_ghi_w_m2"])
    assert csi.iloc[0] == pytest.approx(0.5)
    assert np.isnan(csi.iloc[1])  # undefined at night


def test_build_features_has_exactly_the_documented_columns(
    site: fx.SiteContext,
) -> None:
    index = idx("2026-01-05", 800)
    observed = pd.DataFrame({"load_kw": np.arange(800, dtype=float)}, index=index)
    frame = fx.build_features(observed, site, short_window_steps=4, long_window_steps=96)
    assert list(frame.columns) == [c.name for c in fx.FEATURE_COLUMNS]
    assert frame["load_kw_lag_672"].iloc[-1] == 799 - 672
    assert frame["load_kw_mean_short"].iloc[-1] == np.mean([795, 796, 797, 798])
    assert frame["pv_kw"].isna().all(), "a source without readings stays missing"
    assert not frame["pv_kw_filled"].any()


def test_feature_table_columns() -> None:
    import sqlalchemy as sa

    table = fx.feature_table(sa.MetaData())
    assert [c.name for c in table.primary_key.columns] == ["time", "site_id"]
    assert {c.name for c in fx.FEATURE_COLUMNS} <= set(table.columns.keys())
    assert {c.availability for c in fx.FEATURE_COLUMNS} == {"known_ahead", "lagged", "observed"}


def test_grid_floors_the_start() -> None:
    g = fx.grid(datetime(2026, 1, 5, 0, 7, tzinfo=UTC), datetime(2026, 1, 5, 1, 0, tzinfo=UTC))
    assert g[0] == pd.Timestamp("2026-01-05 00:00", tz="UTC")
    assert len(g) == 4
    assert (g[1] - g[0]) == timedelta(minutes=15)
