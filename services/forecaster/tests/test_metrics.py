"""Metrics on hand-checkable numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from forecaster.evaluation import metrics, pinball_loss, skill


def frame(p10: list[float], p50: list[float], p90: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"p10": p10, "p50": p50, "p90": p90})


def test_point_metrics() -> None:
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    m = metrics(actual, frame([0, 0, 0, 0], [1.0, 2.0, 4.0, 6.0], [9, 9, 9, 9]))
    assert m["mae"] == pytest.approx(0.75)  # errors 0, 0, 1, 2
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 4))
    assert m["nmae"] == pytest.approx(0.75 / 2.5)
    assert m["n"] == 4


def test_pinball_loss_by_hand() -> None:
    # under-forecast by 2 at tau 0.9 costs 0.9*2; over-forecast by 2 costs 0.1*2
    assert pinball_loss(np.array([3.0]), np.array([1.0]), 0.9) == pytest.approx(1.8)
    assert pinball_loss(np.array([1.0]), np.array([3.0]), 0.9) == pytest.approx(0.2)
    assert pinball_loss(np.array([1.0, 3.0]), np.array([2.0, 2.0]), 0.5) == pytest.approx(0.5)


def test_coverage_of_the_80_percent_band() -> None:
    actual = np.array([1.0, 2.0, 3.0, 10.0, -1.0])
    m = metrics(actual, frame([0] * 5, [2] * 5, [4] * 5))
    assert m["coverage_80"] == pytest.approx(3 / 5)  # 10 above, -1 below


def test_missing_values_are_left_out() -> None:
    m = metrics(np.array([1.0, np.nan, 3.0]), frame([0, 0, 0], [1.0, 5.0, np.nan], [9, 9, 9]))
    assert m["n"] == 1
    assert m["mae"] == 0


def test_skill_over_the_reference() -> None:
    assert skill(0.8, 1.0) == pytest.approx(0.2)
    assert skill(1.2, 1.0) == pytest.approx(-0.2)
    assert math.isnan(skill(1.0, 0.0))


def test_daylight_coverage_leaves_the_trivial_night_zeros_out() -> None:
    # two night rows (0 inside [0, 0]) and three daylight rows of which one is covered
    actual = np.array([0.0, 0.0, 1.0, 5.0, 3.0])
    pred = frame([0, 0, 0.5, 0.5, 0.5], [0, 0, 1.0, 1.0, 1.0], [0, 0, 2.0, 2.0, 2.0])
    daylight = np.array([False, False, True, True, True])
    m = metrics(actual, pred, daylight)
    assert m["coverage_80"] == pytest.approx(3 / 5)
    assert m["coverage_80_daylight"] == pytest.approx(1 / 3)
    assert m["n_daylight"] == 3
    assert "coverage_80_daylight" not in metrics(actual, pred)
