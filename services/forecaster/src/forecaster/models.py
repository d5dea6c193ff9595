"""Forecast models, all with one interface: fit on a design matrix, predict P10/P50/P90.

Baselines (seasonal naive, persistence) read a lag column; the learned models are a ridge
regression on lags and calendar, a gradient-boosted regressor, and gradient-boosted quantile
regressors calibrated on the end of their training window (conformalised quantile regression).
A model's bands come from its own quantile fit or, for point models, from the quantiles of its
residuals on data it was not fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from forecaster.catalogue import Target
from forecaster.design import training_rows

QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_KEYS = ("p10", "p50", "p90")
CALIBRATION_FRACTION = 0.2


class Model(Protocol):
    """What every model offers."""

    name: str

    def fit(self, x: pd.DataFrame, y: pd.Series) -> Model:
        """Fit on a design matrix and the target (rows with a missing target are dropped)."""
        ...

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        """Columns p10, p50, p90 (kW), one row per row of `x`."""
        ...


def _valid(x: pd.DataFrame, y: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    keep = y.notna().to_numpy()
    return x.loc[keep], y.loc[keep]


def _split(
    x: pd.DataFrame, y: pd.Series
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """Time-ordered split: the last CALIBRATION_FRACTION of rows for calibration."""
    cut = int(len(x) * (1 - CALIBRATION_FRACTION))
    return x.iloc[:cut], y.iloc[:cut], x.iloc[cut:], y.iloc[cut:]


def _bands(p50: np.ndarray, offsets: tuple[float, float]) -> pd.DataFrame:
    return pd.DataFrame({"p10": p50 + offsets[0], "p50": p50, "p90": p50 + offsets[1]})


def _residual_offsets(residuals: np.ndarray) -> tuple[float, float]:
    residuals = residuals[np.isfinite(residuals)]
    if len(residuals) == 0:
        return 0.0, 0.0
    return float(np.quantile(residuals, 0.1)), float(np.quantile(residuals, 0.9))


@dataclass
class LagModel:
    """Seasonal naive (a day-old or week-old value) with bands from its residual quantiles."""

    name: str
    column: str
    fallback: tuple[str, ...] = ()
    offsets: tuple[float, float] = (0.0, 0.0)

    def _point(self, x: pd.DataFrame) -> np.ndarray:
        point = x[self.column].copy()
        for col in self.fallback:
            point = point.fillna(x[col])
        return np.asarray(point.to_numpy(dtype=float))

    def fit(self, x: pd.DataFrame, y: pd.Series) -> LagModel:
        x, y = _valid(x, y)
        self.offsets = _residual_offsets(y.to_numpy(dtype=float) - self._point(x))
        return self

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        return _bands(self._point(x), self.offsets)


def seasonal_naive_day() -> LagModel:
    """The same interval one day earlier."""
    return LagModel("seasonal_naive_day", "y_lag_96", ("y_lag_192", "y_lag_672"))


def seasonal_naive_week() -> LagModel:
    """The same interval one week earlier."""
    return LagModel("seasonal_naive_week", "y_lag_672", ("y_lag_96",))


def persistence_forecast(
    last_value: float, steps: int, offsets: tuple[float, float]
) -> pd.DataFrame:
    """Persistence: the last value known at issue time, held for every step."""
    return _bands(np.full(steps, last_value, dtype=float), offsets)


@dataclass
class PointModel:
    """A scikit-learn regressor with bands from its out-of-sample residual quantiles."""

    name: str
    make: Any
    threads: int = 1
    features: list[str] = field(default_factory=list)
    estimator: Any = None
    offsets: tuple[float, float] = (0.0, 0.0)

    def fit(self, x: pd.DataFrame, y: pd.Series) -> PointModel:
        x, y = _valid(x, y)
        self.features = list(x.columns)
        fit_x, fit_y, cal_x, cal_y = _split(x, y)
        with threadpool_limits(self.threads):
            if len(cal_x) and len(fit_x):
                probe = self.make().fit(fit_x, fit_y)
                self.offsets = _residual_offsets(cal_y.to_numpy() - probe.predict(cal_x))
            self.estimator = self.make().fit(x, y)
        return self

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        with threadpool_limits(self.threads):
            p50 = np.asarray(self.estimator.predict(x[self.features]))
        return _bands(p50, self.offsets)


def _ridge() -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
        RidgeCV(alphas=np.logspace(-3, 3, 13)),
    )  # fmt: skip


def _hgb(loss: str = "squared_error", quantile: float | None = None, max_iter: int = 300) -> Any:
    # 15 leaves, 100 samples per leaf: chosen on a validation quarter (Jul-Sep 2016, SimBench
    # h0-a and h0-b), never on the held-out last quarter; see BENCHMARKS.md (forecaster)
    def make() -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor

        kwargs: dict[str, Any] = {"loss": loss, "max_iter": max_iter, "learning_rate": 0.05,
                                  "max_leaf_nodes": 15, "min_samples_leaf": 100,
                                  "l2_regularization": 1.0, "random_state": 0}  # fmt: skip
        if quantile is not None:
            kwargs["quantile"] = quantile
        return HistGradientBoostingRegressor(**kwargs)

    return make


@dataclass
class QuantileModel:
    """Gradient-boosted P10/P50/P90 regressors, the band calibrated on held-out recent data.

    Conformalised quantile regression: fitted on the first 80 % of the window, the band's
    conformity scores max(p10 - y, y - p90) on the last 20 % give the widening (or narrowing)
    that makes it cover 80 % there; the regressors are then refitted on the whole window.
    """

    name: str = "gbm_quantile"
    max_iter: int = 300
    threads: int = 1
    features: list[str] = field(default_factory=list)
    estimators: dict[str, Any] = field(default_factory=dict)
    correction: float = 0.0

    def _fit_all(self, x: pd.DataFrame, y: pd.Series) -> dict[str, Any]:
        return {
            key: _hgb("quantile", q, self.max_iter)().fit(x, y)
            for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True)
        }

    def fit(self, x: pd.DataFrame, y: pd.Series) -> QuantileModel:
        x, y = _valid(x, y)
        self.features = list(x.columns)
        fit_x, fit_y, cal_x, cal_y = _split(x, y)
        with threadpool_limits(self.threads):
            if len(cal_x) >= 20 and len(fit_x):
                probe = self._fit_all(fit_x, fit_y)
                lo, hi = probe["p10"].predict(cal_x), probe["p90"].predict(cal_x)
                scores = np.maximum(lo - cal_y.to_numpy(), cal_y.to_numpy() - hi)
                level = min(1.0, 0.8 * (1 + 1 / len(scores)))
                self.correction = float(np.quantile(scores, level))
            self.estimators = self._fit_all(x, y)
        return self

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        xs = x[self.features]
        with threadpool_limits(self.threads):
            p = {k: np.asarray(self.estimators[k].predict(xs)) for k in QUANTILE_KEYS}
        return pd.DataFrame({"p10": p["p10"] - self.correction, "p50": p["p50"],
                             "p90": p["p90"] + self.correction})  # fmt: skip


def make_model(name: str, max_iter: int = 300, threads: int = 1) -> Model:
    """A fresh, unfitted model by name (`threads` caps BLAS/OpenMP threads of its fits)."""
    if name == "seasonal_naive_day":
        return seasonal_naive_day()
    if name == "seasonal_naive_week":
        return seasonal_naive_week()
    if name == "linear":
        return PointModel("linear", _ridge, threads)
    if name == "gbm":
        return PointModel("gbm", _hgb(max_iter=max_iter), threads)
    if name == "gbm_quantile":
        return QuantileModel(max_iter=max_iter, threads=threads)
    raise ValueError(f"unknown model {name!r}")


def finish(pred: pd.DataFrame, x: pd.DataFrame, target: Target) -> pd.DataFrame:
    """Physical limits and ordering: p10 <= p50 <= p90, >= 0, PV zero when the sun is down."""
    values = np.sort(pred[list(QUANTILE_KEYS)].to_numpy(dtype=float), axis=1)
    if target.non_negative:
        values = np.clip(values, 0.0, None)
    if target.solar:
        values[~training_rows(x, target)] = 0.0
    values = np.nan_to_num(values, nan=0.0)
    return pd.DataFrame(values, columns=list(QUANTILE_KEYS), index=x.index)
