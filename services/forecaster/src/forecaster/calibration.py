"""Intraday update and calibrated bands, both learned from out-of-sample residuals of the past.

A learned model gives a *base* forecast of every interval from day-old data only (design.py).
At an issue time `T` the latest measurements are newer. The **intraday update** adds to the
base forecast of step `k` a linear combination (`phi[k]`, a direct regression per horizon
step) of the base forecast's residuals on the last `RESIDUAL_LAGS` intervals before `T` and of
the gap between persistence and the base forecast (the last 15 minutes held for load; for PV
the last clear-sky index times the clear sky): with weight 1 on that gap it *is* persistence,
so the update can only do worse than persistence where the past it was fitted on misleads.
It matters most at 0-1 h and fades towards a day ahead.

The **bands** are then calibrated per horizon bin (PV: and per sun-elevation class): the P10 /
P90 of the updated forecast are
shifted by the 10 % / 90 % quantiles of what the actual missed them by (one-sided conformal
scores), on a calibration span the model was not fitted on (the end of the training window,
predicted by a model fitted before it: cross-fitted in time, never on the span being scored).
For PV the residuals are taken per unit of the expected output (clear sky times the recent
clear-sky ratio: a band is narrow at dawn and wide at noon) and the quantiles on daylight
intervals only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from derbus import features as fx

HORIZON = fx.STEPS_PER_DAY
RESIDUAL_LAGS = 4
"""Residuals of the last hour before the issue time enter the intraday update."""
BIN_EDGES = (0, 1, 2, 3, 4, 8, 12, 24, 48, 96)
"""Horizon bins (steps of 15 min) with their own band quantiles: finer where the update acts."""
GROUPS = (("0-1 h", 0, 4), ("1-6 h", 4, 24), ("6-24 h", 24, 96))
"""Horizon groups of the reports (steps from the issue time)."""
DAYLIGHT_ELEVATION_DEG = 0.0
MIN_UPDATE_DAYS = 14
"""The update's 96 x 5 coefficients are learned only from a calibration span this long (days);
a shorter span (a site with a few weeks of history) gets the bands but no update."""
RIDGE = 1e-3
"""Relative ridge penalty of the per-horizon update regressions (keeps them stable)."""


def scale_of(x: pd.DataFrame, solar: bool) -> np.ndarray:
    """Residual unit of each row.

    Load: the mean load of the week ending a day before (`y_mean_7d`), so a band learned in
    summer widens with a winter's higher load (chosen on the validation quarter: coverage
    closer to 80 % than residuals in kW). PV: the output the last three days' clear-sky ratio
    gives for the interval's clear sky (at least a fifth of the typical ratio): a band learned
    in summer scales to the weaker winter output (on the validation quarter Jul-Sep 2016 the
    daylight coverage was 81.0 / 79.9 % on pv1 / pv3 against 75.8 / 70.0 % per unit of
    clear-sky irradiance alone).
    """
    if not solar:
        level = x["y_mean_7d"].to_numpy(dtype=float)
        fill = float(np.nanmedian(level)) if np.isfinite(level).any() else 1.0
        level = np.where(np.isfinite(level) & (level > 0), level, fill)
        return np.asarray(np.maximum(level, 1e-3))
    clear = x["clearsky_ghi_w_m2"].to_numpy(dtype=float)
    clear_unit = np.maximum(np.nan_to_num(clear), fx.MIN_CLEAR_GHI_W_M2) / 1000.0
    ratio = x["clear_ratio_3d"].to_numpy(dtype=float) * 1000.0  # kW per kW/m2, last 3 days
    fill = float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else 1.0
    ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, fill)
    return np.asarray(clear_unit * np.maximum(ratio, 0.2 * fill))


ELEVATION_EDGES: tuple[float, ...] = (10.0, 25.0)
"""PV: sun-elevation classes (deg) with their own band shifts (low sun: larger relative
errors). Chosen on the validation quarter: pinball 0.0832 / 0.0777 (pv1 / pv3) against
0.0851 / 0.0775 with one class, daylight coverage 82.5 / 81.0 % against 81.0 / 79.9 %."""


def elevation_bins(x: pd.DataFrame, solar: bool) -> np.ndarray:
    """PV: the sun-elevation class of each row (bands per class); load: one class."""
    if not solar or not ELEVATION_EDGES:
        return np.zeros(len(x), dtype=int)
    elevation = np.nan_to_num(x["solar_elevation_deg"].to_numpy(dtype=float), nan=-90.0)
    return np.asarray(np.digitize(elevation, ELEVATION_EDGES))


def daylight_of(x: pd.DataFrame) -> np.ndarray:
    """Whether the sun is above the horizon (the rows PV bands are calibrated and scored on)."""
    return np.asarray(x["solar_elevation_deg"].to_numpy(dtype=float) > DAYLIGHT_ELEVATION_DEG)


N_COEF = RESIDUAL_LAGS + 1


def regressors(
    e: np.ndarray, y_unit: np.ndarray, base_unit: np.ndarray, issues: np.ndarray
) -> np.ndarray:
    """Update regressors of each issue and step: (issues, HORIZON, N_COEF), 0 where unknown.

    The last RESIDUAL_LAGS residuals (per unit of scale) and the persistence gap
    y[i-1] - base[i+k] (per unit of scale).
    """
    n = len(e)
    idx, _ = ahead(n, issues)
    lags = lagged(e, issues)
    last = np.where(issues >= 1, y_unit[np.clip(issues - 1, 0, None)], np.nan)
    gap = np.nan_to_num(last[:, None] - base_unit[idx], nan=0.0)
    out = np.empty((len(issues), HORIZON, N_COEF))
    out[..., :RESIDUAL_LAGS] = lags[:, None, :]
    out[..., RESIDUAL_LAGS] = gap
    return out


def lagged(e: np.ndarray, issues: np.ndarray, lags: int = RESIDUAL_LAGS) -> np.ndarray:
    """Residuals e[i-1], ..., e[i-lags] of each issue position i (0 where unknown)."""
    idx = issues[:, None] - 1 - np.arange(lags)[None, :]
    ok = idx >= 0
    out = np.where(ok, e[np.clip(idx, 0, None)], 0.0)
    return np.nan_to_num(out, nan=0.0)


def ahead(n: int, issues: np.ndarray, horizon: int = HORIZON) -> tuple[np.ndarray, np.ndarray]:
    """Target positions i + k (k = 0 .. horizon-1) of each issue, clipped, and their validity."""
    idx = issues[:, None] + np.arange(horizon)[None, :]
    return np.clip(idx, 0, n - 1), idx < n


def _bins(horizon: int) -> np.ndarray:
    """The bin of each horizon step."""
    return np.digitize(np.arange(horizon), BIN_EDGES[1:-1])


@dataclass
class Calibration:
    """The intraday update (phi) and the band shifts (lo, hi) per horizon step."""

    solar: bool
    phi: np.ndarray = field(default_factory=lambda: np.zeros((HORIZON, N_COEF)))
    lo: np.ndarray = field(default_factory=lambda: np.zeros(HORIZON))
    hi: np.ndarray = field(default_factory=lambda: np.zeros(HORIZON))
    update: bool = True

    @classmethod
    def fit(
        cls, base: np.ndarray, y: np.ndarray, x: pd.DataFrame, solar: bool, *, update: bool = True
    ) -> Calibration:
        """Learn the update and the band shifts on a contiguous calibration span.

        Args:
            base: (n, 3) P10/P50/P90 base forecasts of the span by a model not fitted on it.
            y: (n,) actuals (NaN where missing).
            x: the design rows of the span (clear sky and sun elevation).
            solar: PV (residuals per unit clear sky, daylight quantiles).
            update: learn the intraday update (False: bands only, phi = 0).
        """
        cal = cls(solar=solar, update=update)
        n = len(y)
        scale = scale_of(x, solar)
        e = (y - base[:, 1]) / scale
        issues = np.arange(RESIDUAL_LAGS, n)
        if len(issues) < 2 * HORIZON:
            return cal
        reg = regressors(e, y / scale, base[:, 1] / scale, issues)
        idx, ok = ahead(n, issues)
        target = e[idx]
        if update and n >= MIN_UPDATE_DAYS * HORIZON:
            for k in range(HORIZON):
                rows = ok[:, k] & np.isfinite(target[:, k])
                a, b = reg[rows, k], target[rows, k]
                if len(b) < 10 * N_COEF:
                    continue
                gram = a.T @ a
                gram += RIDGE * np.trace(gram) / N_COEF * np.eye(N_COEF)
                cal.phi[k] = np.linalg.solve(gram, a.T @ b)
        upd = np.einsum("ikc,kc->ik", reg, cal.phi)  # (issues, HORIZON), per unit of scale
        lo_score = (y[idx] - base[idx, 0]) / scale[idx] - upd
        hi_score = (y[idx] - base[idx, 2]) / scale[idx] - upd
        usable = ok & np.isfinite(lo_score) & np.isfinite(hi_score)
        if solar:
            usable &= daylight_of(x)[idx]
        bins = _bins(HORIZON)
        levels = elevation_bins(x, solar)[idx]
        n_levels = len(ELEVATION_EDGES) + 1 if solar else 1
        cal.lo, cal.hi = np.zeros((HORIZON, n_levels)), np.zeros((HORIZON, n_levels))
        for b in np.unique(bins):
            cols = bins == b
            sel = usable[:, cols]
            if sel.sum() < 20:
                continue
            pooled = (
                np.quantile(lo_score[:, cols][sel], 0.1),
                np.quantile(hi_score[:, cols][sel], 0.9),
            )
            for level in range(n_levels):
                part = sel & (levels[:, cols] == level)
                enough = part.sum() >= 50
                cal.lo[cols, level] = (
                    np.quantile(lo_score[:, cols][part], 0.1) if enough else pooled[0]
                )
                cal.hi[cols, level] = (
                    np.quantile(hi_score[:, cols][part], 0.9) if enough else pooled[1]
                )
        return cal

    def issue(
        self, base: np.ndarray, y: np.ndarray, x: pd.DataFrame, issues: np.ndarray
    ) -> np.ndarray:
        """Forecasts issued at positions `issues` of a contiguous span: (issues, HORIZON, 3).

        `y` holds the actuals known at each issue: only y[i-1], ..., y[i-RESIDUAL_LAGS] are read
        for the issue at i. Steps beyond the span are NaN.
        """
        n = len(base)
        scale = scale_of(x, self.solar)
        e = (y - base[:, 1]) / scale
        idx, ok = ahead(n, issues)
        reg = regressors(e, y / scale, base[:, 1] / scale, issues)
        upd = np.einsum("ikc,kc->ik", reg, self.phi) * scale[idx]
        s = scale[idx]
        lo, hi = self.lo.reshape(HORIZON, -1), self.hi.reshape(HORIZON, -1)
        levels = np.minimum(elevation_bins(x, self.solar)[idx], lo.shape[1] - 1)
        steps = np.broadcast_to(np.arange(HORIZON)[None, :], idx.shape)
        out = np.stack(
            [
                base[idx, 0] + upd + lo[steps, levels] * s,
                base[idx, 1] + upd,
                base[idx, 2] + upd + hi[steps, levels] * s,
            ],
            axis=-1,
        )
        out[~ok] = np.nan
        return out
