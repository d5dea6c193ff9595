"""The day-ahead design matrix: hand-checked lags, and no leakage for any of the 96 horizons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from derbus import features as fx
from forecaster.catalogue import TARGETS
from forecaster.design import day_ahead_times, design_matrix, feature_names


def test_lags_on_a_counting_series(site: fx.SiteContext) -> None:
    index = pd.date_range("2026-01-05", periods=40 * 96, freq="15min", tz="UTC")
    y = pd.Series(np.arange(len(index), dtype=float), index=index)
    t = index[-1]
    x = design_matrix(y, pd.DatetimeIndex([t]), site, TARGETS["load"]).iloc[0]
    n = len(index) - 1
    assert x["y_lag_96"] == n - 96
    assert x["y_lag_192"] == n - 192
    assert x["y_lag_672"] == n - 672
    assert x["y_mean_1d"] == pytest.approx(np.mean(np.arange(n - 191, n - 95)))
    assert x["y_tod_mean_7d"] == pytest.approx(np.mean([n - 96 * k for k in range(1, 8)]))
    assert x["y_tow_mean_4w"] == pytest.approx(np.mean([n - 672 * k for k in range(1, 5)]))
    assert list(x.index) == feature_names(TARGETS["load"])


@pytest.mark.parametrize("target", ["load", "pv"])
def test_no_leakage_for_every_horizon(
    target: str,
    site: fx.SiteContext,
    load_series: Callable[..., pd.Series],
    pv_series: Callable[..., pd.Series],
) -> None:
    y = (load_series if target == "load" else pv_series)(days=40)
    issue = y.index[35 * 96 + 50]  # an issue in the middle of a day
    times = day_ahead_times(issue)
    assert len(times) == 96
    base = design_matrix(y, times, site, TARGETS[target])
    scrambled = y.copy()
    after = scrambled.index >= issue
    scrambled[after] = np.random.default_rng(5).uniform(0, 50, after.sum())
    changed = design_matrix(scrambled, times, site, TARGETS[target])
    for column in base.columns:  # every feature, every horizon
        pd.testing.assert_series_equal(base[column], changed[column], check_exact=True)
    known_only = design_matrix(y[~after], times, site, TARGETS[target])
    pd.testing.assert_frame_equal(base, known_only)
    # and the check can fail: data just before the issue does feed the last horizons
    earlier = y.copy()
    earlier[earlier.index >= issue - fx.STEP] = 99.0
    assert design_matrix(earlier, times, site, TARGETS[target])["y_lag_96"].iloc[-1] == 99.0


def test_pv_clear_sky_ratio_features(
    site: fx.SiteContext, pv_series: Callable[..., pd.Series]
) -> None:
    y = pv_series(days=10)
    t = pd.DatetimeIndex([y.index[8 * 96 + 44]])  # 11:00 UTC
    x = design_matrix(y, t, site, TARGETS["pv"]).iloc[0]
    clear = x["clearsky_ghi_w_m2"]
    assert x["smart_persistence_1d"] == pytest.approx(x["clear_ratio_1d"] * clear)
    assert 0 < x["clear_ratio_1d"] < 5.0 / 1000 * 1.01  # kW per W/m², at most the 5 kWp array


def test_same_kind_of_day_lags_skip_weekends_and_holidays(site: fx.SiteContext) -> None:
    # Berlin, 2026: Fri 1 May is a holiday (Tag der Arbeit); Mon 4 May a workday
    index = pd.date_range("2026-04-01", "2026-05-08", freq="15min", tz="UTC", inclusive="left")
    y = pd.Series(np.arange(len(index), dtype=float), index=index)
    noon = pd.Timestamp("2026-05-04 10:00", tz="UTC")  # Monday, 12:00 local
    x = design_matrix(y, pd.DatetimeIndex([noon]), site, TARGETS["load"]).iloc[0]
    n = index.get_loc(noon)
    assert x["day_kind"] == 0
    # Sun 3, Sat 2 and the holiday Fri 1 May are skipped: Thu 30 Apr, 4 days earlier
    assert x["y_same_kind_lag"] == n - 4 * 96
    assert x["y_same_kind_mean_3"] == pytest.approx(np.mean([n - k * 96 for k in (4, 5, 6)]))
    holiday = pd.Timestamp("2026-05-01 10:00", tz="UTC")
    x = design_matrix(y, pd.DatetimeIndex([holiday]), site, TARGETS["load"]).iloc[0]
    assert x["day_kind"] == 2
    assert x["y_same_kind_lag"] == index.get_loc(holiday) - 5 * 96  # Sunday 26 April
