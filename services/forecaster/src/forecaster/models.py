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

from derbus import features as fx
from forecaster.calibration import Calibration
from forecaster.catalogue import Target
from forecaster.design import training_rows

QUANTILES = (0.1, 0.5, 0.9)
QUANTILE_KEYS = ("p10", "p50", "p90")
CALIBRATION_FRACTION = 0.2
"""The end of a training window held out to learn the intraday update and the band shifts."""


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


def _bands(p50: np.ndarray, offsets: tuple[float, float]) -> pd.DataFrame:
    return pd.DataFrame({"p10": p50 + offsets[0], "p50": p50, "p90": p50 + offsets[1]})


def residual_offsets(residuals: np.ndarray) -> tuple[float, float]:
    """The P10 and P90 offsets (kW) of a point forecast's residuals (actual - point, kW).

    Non-finite residuals are ignored; without any, the band is empty: (0.0, 0.0).
    """
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
        self.offsets = residual_offsets(y.to_numpy(dtype=float) - self._point(x))
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
    """A scikit-learn regressor (its bands come from `Forecaster`'s calibration: P10 = P90 = P50)."""

    name: str
    make: Any
    threads: int = 1
    features: list[str] = field(default_factory=list)
    estimator: Any = None
    offsets: tuple[float, float] = (0.0, 0.0)

    def fit(self, x: pd.DataFrame, y: pd.Series) -> PointModel:
        x, y = _valid(x, y)
        self.features = list(x.columns)
        with threadpool_limits(self.threads):
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
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        RidgeCV(alphas=np.logspace(-3, 3, 13)),
    )


def _hgb(loss: str = "squared_error", quantile: float | None = None, max_iter: int = 300) -> Any:
    # 15 leaves, 100 samples per leaf: chosen on a validation quarter (Jul-Sep 2016, SimBench
    # h0-a and h0-b), never on the held-out last quarter; see BENCHMARKS.md (forecaster).
    # No early stopping: scikit-learn turns it on above 10,000 rows ("auto"), on a random
    # 10 % split, and stopped the PV P10 regressor after a few iterations at 0 on daylight rows.
    def make() -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor

        kwargs: dict[str, Any] = {
            "loss": loss,
            "max_iter": max_iter,
            "learning_rate": 0.05,
            "max_leaf_nodes": 15,
            "min_samples_leaf": 100,
            "l2_regularization": 1.0,
            "random_state": 0,
            "early_stopping": False,
        }
        if quantile is not None:
            kwargs["quantile"] = quantile
        return HistGradientBoostingRegressor(**kwargs)

    return make


@dataclass
class QuantileModel:
    """Gradient-boosted P10/P50/P90 regressors (band calibrated by `Forecaster`: conformalised).

    Not a default: scikit-learn's quantile boosting learns a P10 slowly (its gradient is tau =
    0.1 per row) — on PV it stays near 0 on daylight rows after 200 iterations — so its band is
    mostly the conformal shift. `gbm_median` (absolute error, the P50 of this model, at a third
    of the cost) with the calibrated residual band serves the same purpose.
    """

    name: str = "gbm_quantile"
    max_iter: int = 300
    threads: int = 1
    features: list[str] = field(default_factory=list)
    estimators: dict[str, Any] = field(default_factory=dict)

    def fit(self, x: pd.DataFrame, y: pd.Series) -> QuantileModel:
        x, y = _valid(x, y)
        self.features = list(x.columns)
        with threadpool_limits(self.threads):
            self.estimators = {
                key: _hgb("quantile", q, self.max_iter)().fit(x, y)
                for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True)
            }
        return self

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        xs = x[self.features]
        with threadpool_limits(self.threads):
            p = {k: np.asarray(self.estimators[k].predict(xs)) for k in QUANTILE_KEYS}
        return pd.DataFrame(p)


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
    if name == "gbm_median":
        return PointModel("gbm_median", _hgb("absolute_error", max_iter=max_iter), threads)
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


def finish_issued(values: np.ndarray, night: np.ndarray, target: Target) -> np.ndarray:
    """`finish` for issued arrays (..., 3): ordered, non-negative, PV zero at night (`night`)."""
    out = np.sort(values, axis=-1)
    if target.non_negative:
        out = np.clip(out, 0.0, None)
    if target.solar:
        out[night] = 0.0
    return out


@dataclass
class Forecaster:
    """What is served: a learned model, its intraday update and calibrated bands.

    `band` (optional) is another model whose calibrated P10 / P90 are served with this one's
    P50: the point forecast is chosen by MAE, the band by pinball loss (training.py).
    """

    name: str
    target: Target
    model: Any
    calibration: Calibration
    band: Forecaster | None = None

    @property
    def uses_weather(self) -> bool:
        """Whether the model was fitted with weather features (design.WEATHER)."""
        models = [self.model] + ([self.band.model] if self.band is not None else [])
        return any("weather_temperature_c" in getattr(m, "features", ()) for m in models)

    @property
    def label(self) -> str:
        """`point` or `point+band` when the band comes from another model."""
        return self.name if self.band is None else f"{self.name}+{self.band.name}"

    def predict(self, x: pd.DataFrame) -> pd.DataFrame:
        """The base forecast (day-old data only, no intraday update, uncalibrated bands)."""
        return pd.DataFrame(self.model.predict(x)).set_axis(x.index)

    def base(self, x: pd.DataFrame) -> np.ndarray:
        """The finished base forecast of the rows of `x`, (n, 3)."""
        return np.asarray(finish(self.predict(x), x, self.target).to_numpy(dtype=float))

    def issue(
        self, x: pd.DataFrame, y: np.ndarray, issues: np.ndarray, base: np.ndarray | None = None
    ) -> np.ndarray:
        """Forecasts issued at positions `issues` of the contiguous span `x`: (issues, 96, 3).

        `y`: the actuals of the span; for the issue at i only the last hour before i is read.
        """
        own = self.base(x) if base is None else base
        out = self.calibration.issue(own, y, x, issues)
        if self.band is not None:
            band = self.band.calibration.issue(self.band.base(x), y, x, issues)
            out[..., 0], out[..., 2] = band[..., 0], band[..., 2]
        night = ~training_rows(x, self.target)
        idx = np.clip(issues[:, None] + np.arange(out.shape[1])[None, :], 0, len(x) - 1)
        return finish_issued(out, night[idx], self.target)


def fit_forecaster(
    name: str,
    x: pd.DataFrame,
    y: pd.Series,
    target: Target,
    max_iter: int = 300,
    threads: int = 1,
    update: bool = True,
) -> Forecaster:
    """Fit `name` on a contiguous training window (the design rows of every interval).

    The model is first fitted on the window without its last CALIBRATION_FRACTION, which it
    then predicts: the intraday update and band shifts are learned there (out of sample, in the
    past). The model is then refitted on the whole window.
    """
    rows = training_rows(x, target) & y.notna().to_numpy()
    cut = int(len(x) * (1 - CALIBRATION_FRACTION))
    early = rows.copy()
    early[cut:] = False
    actual = y.to_numpy(dtype=float)
    calibration = Calibration(solar=target.solar)
    if early.sum() > 0 and len(x) - cut >= 3 * fx.STEPS_PER_DAY:
        probe = make_model(name, max_iter, threads).fit(x[early], y[early])
        tail = x.iloc[cut:]
        base = finish(pd.DataFrame(probe.predict(tail)).set_axis(tail.index), tail, target)
        calibration = Calibration.fit(
            base.to_numpy(dtype=float), actual[cut:], tail, target.solar, update=update
        )
    model = make_model(name, max_iter, threads).fit(x[rows], y[rows])
    return Forecaster(name, target, model, calibration)
