"""Calibration fitted on one span, scored on a later one: synthetic series with known noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from forecaster.calibration import GROUPS, HORIZON, Calibration, ahead


def _span(n: int) -> pd.DataFrame:
    # load rows: a constant weekly level, so the residual unit is 1 kW
    return pd.DataFrame({"y_mean_7d": np.ones(n), "clearsky_ghi_w_m2": np.zeros(n)})


def _noise(n: int, rho: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    out[0] = 0.0
    shocks = rng.normal(0, 1, n) * np.sqrt(1 - rho**2)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + shocks[i]
    return out


def _issued(cal: Calibration, base: np.ndarray, y: np.ndarray, every: int = 3) -> tuple:
    issues = np.arange(8, len(y) - HORIZON, every)
    pred = cal.issue(base, y, _span(len(y)), issues)
    idx, _ = ahead(len(y), issues)
    return pred, y[idx]


def test_bands_fitted_on_the_past_cover_80_percent_of_iid_noise_later() -> None:
    n = 60 * 96
    pattern = 3 + np.sin(np.arange(2 * n) * 2 * np.pi / 96)
    y = pattern + np.random.default_rng(1).normal(0, 0.4, 2 * n)
    base = np.repeat(pattern[:, None], 3, axis=1)  # the exact mean: residuals are the noise
    cal = Calibration.fit(base[:n], y[:n], _span(n), solar=False)
    assert np.allclose(cal.hi, 0.4 * 1.2816, rtol=0.1)  # the 90 % quantile of N(0, 0.4)
    pred, truth = _issued(cal, base[n:], y[n:])
    pred0, _ = _issued(Calibration(solar=False), base[n:], y[n:])  # no update, no band
    assert np.abs(pred[..., 1] - pred0[..., 1]).mean() < 0.05  # nothing to learn from iid noise
    inside = (truth >= pred[..., 0]) & (truth <= pred[..., 2])
    for name, lo, hi in GROUPS:
        assert 0.78 <= inside[:, lo:hi].mean() <= 0.82, name


def test_the_intraday_update_learns_correlated_noise_and_keeps_its_bands_calibrated() -> None:
    n = 60 * 96
    pattern = 3 + np.sin(np.arange(2 * n) * 2 * np.pi / 96)
    y = pattern + 0.5 * _noise(2 * n, 0.97, seed=2)  # AR(1) noise, ~8 h memory
    base = np.repeat(pattern[:, None], 3, axis=1)
    cal = Calibration.fit(base[:n], y[:n], _span(n), solar=False)
    plain = Calibration.fit(base[:n], y[:n], _span(n), solar=False, update=False)
    pred, truth = _issued(cal, base[n:], y[n:])
    pred0, _ = _issued(plain, base[n:], y[n:])
    mae = np.abs(truth - pred[..., 1])[:, :4].mean()
    mae0 = np.abs(truth - pred0[..., 1])[:, :4].mean()
    assert mae < 0.4 * mae0  # at 0-1 h the latest measurements explain most of the error
    inside = (truth >= pred[..., 0]) & (truth <= pred[..., 2])
    for name, lo, hi in GROUPS:
        assert 0.76 <= inside[:, lo:hi].mean() <= 0.84, name
    width = (pred[..., 2] - pred[..., 0]).mean(axis=0)
    assert width[0] < 0.5 * width[-1]  # narrow just after the issue, wide a day ahead
