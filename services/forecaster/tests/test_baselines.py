"""Baselines on hand-made series where each one wins, and the model-choice rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from derbus import features as fx
from forecaster.catalogue import TARGETS
from forecaster.design import design_matrix
from forecaster.evaluation import BacktestResult, backtest, baseline_issues, reference_of


def _grid(days: int) -> pd.DatetimeIndex:
    return pd.date_range("2026-01-05", periods=days * 96, freq="15min", tz="UTC")


def test_the_1_day_naive_wins_on_a_drifting_daily_pattern(site: fx.SiteContext) -> None:
    # the same daily shape every day, its level a random walk: yesterday beats a week ago
    index = _grid(56)
    rng = np.random.default_rng(3)
    level = np.repeat(5 + np.cumsum(rng.normal(0, 0.6, 56)), 96)
    shape = np.tile(1 + np.sin(np.linspace(0, 2 * np.pi, 96)), 56)
    y = pd.Series(np.clip(level * shape / 5, 0, None), index=index)
    result = backtest(y, site, TARGETS["load"], (), test_fraction=0.25, folds=1, issue_every=8)
    o = result.overall
    assert o["seasonal_naive_day"]["mae"] < o["seasonal_naive_week"]["mae"]
    assert result.reference == "seasonal_naive_day"
    assert o["seasonal_naive_week"]["skill"] < 0  # measured against the better one


def test_the_7_day_naive_wins_on_a_weekly_pattern(site: fx.SiteContext) -> None:
    # every weekday its own shape (a commercial site): a week ago beats yesterday
    index = _grid(56)
    local = index.tz_convert(site.timezone)
    dow = np.asarray(local.day_of_week)
    hour = np.asarray(local.hour + local.minute / 60)
    y = pd.Series(1 + dow * np.exp(-(((hour - 8 - dow) / 2) ** 2)), index=index)
    y += np.random.default_rng(4).normal(0, 0.05, len(y))
    result = backtest(y, site, TARGETS["load"], (), test_fraction=0.25, folds=1, issue_every=8)
    o = result.overall
    assert o["seasonal_naive_week"]["mae"] < 0.5 * o["seasonal_naive_day"]["mae"]
    assert result.reference == "seasonal_naive_week"
    assert o["seasonal_naive_day"]["skill"] < 0


def test_pv_is_measured_against_the_1_day_naive() -> None:
    overall = {"seasonal_naive_day": {"mae": 2.0}, "seasonal_naive_week": {"mae": 1.0}}
    assert reference_of(overall, solar=True) == "seasonal_naive_day"
    assert reference_of(overall, solar=False) == "seasonal_naive_week"


def test_persistence_holds_the_last_15_minutes_and_pv_the_clear_sky_index(
    site: fx.SiteContext,
) -> None:
    index = pd.date_range("2026-06-01", periods=3 * 96, freq="15min", tz="UTC")
    x = design_matrix(pd.Series(0.0, index=index), index, site, TARGETS["pv"])
    clear = x["clearsky_ghi_w_m2"].to_numpy()
    y = 0.004 * clear * 0.6  # a constant clear-sky index: 0.6 of a 4 kW/(kW/m2) array
    midnight = np.array([96, 2 * 96])  # 00:00 UTC issues: the last value before is 0
    got = baseline_issues(y, x, midnight, solar=True)
    assert np.nanmax(got["persistence"][..., 1]) == 0.0  # the last value held is zero at night
    csp = got["clear_sky_persistence"][..., 1]
    ok = np.isfinite(csp)
    truth = y[np.clip(midnight[:, None] + np.arange(96)[None, :], 0, len(y) - 1)]
    assert csp[ok].max() > 1.0  # not a zero forecast
    assert np.allclose(csp[ok], truth[ok])  # the clear-sky index held is exact here
    noon = np.array([96 + 44])
    held = baseline_issues(y, x, noon, solar=False)["persistence"][0, :, 1]
    assert np.all(held == y[96 + 43])


def _result(overall: dict[str, dict[str, float]]) -> BacktestResult:
    return BacktestResult("load", False, pd.DataFrame(), overall=overall)


def m(mae: float, band: float) -> dict[str, float]:
    return {"mae": mae, "pinball_band": band, "pinball": (2 * band + mae / 2) / 3}


def test_the_point_is_chosen_by_mae_and_the_band_by_pinball() -> None:
    result = _result(
        {
            "seasonal_naive_day": m(1.0, 0.5),
            "seasonal_naive_week": m(1.2, 0.6),
            "persistence": m(2.0, 1.0),
            "linear": m(0.7, 0.20),
            "gbm": m(0.6, 0.30),
        }
    )
    assert result.best_point() == "gbm"
    assert result.best_band() == "linear"
    assert result.best_learned() == "gbm+linear"
    promoted, reason = result.decision("gbm")
    assert promoted
    assert "seasonal_naive_day" in reason
    assert "1.000" in reason  # the deciding baseline's MAE
    assert "0.600" in reason  # the model's
    assert "seasonal_naive_week 1.200" in reason


@pytest.mark.parametrize(("week", "promoted"), [(0.55, False), (0.65, True)])
def test_promotion_needs_the_better_seasonal_naive_beaten(week: float, promoted: bool) -> None:
    result = _result(
        {"seasonal_naive_day": m(1.0, 0.5), "seasonal_naive_week": m(week, 0.3), "gbm": m(0.6, 0.3)}
    )
    got, reason = result.decision("gbm")
    assert got is promoted
    assert "seasonal_naive_week" in reason
    assert f"{week:.3f}" in reason
    assert ("not promoted" in reason) is not promoted
