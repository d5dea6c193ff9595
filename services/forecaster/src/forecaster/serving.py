"""Issue a day-ahead forecast: 96 intervals from the issue time, P10/P50/P90, as a bus message."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from derbus import features as fx
from derbus.messages import TimeSeries
from forecaster.calibration import RESIDUAL_LAGS
from forecaster.catalogue import Target
from forecaster.design import DAY, day_ahead_times, design_matrix, training_rows
from forecaster.models import Forecaster, Model, finish, seasonal_naive_day
from forecaster.weather import WeatherError, WeatherProvider

log = logging.getLogger(__name__)


@dataclass
class Issued:
    """An issued forecast."""

    site_id: str
    target: Target
    issue_time: datetime
    frame: pd.DataFrame  # index: interval starts; columns p10, p50, p90 (kW)
    model: str
    version: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra `meta` of the message (e.g. `cold_start: true`, see forecaster.coldstart)."""

    def message(self, ts: datetime, source: str = "forecaster") -> TimeSeries:
        """The topics.FORECAST payload."""
        return TimeSeries(
            ts=ts,
            source=source,
            kind="forecast",
            quantity=self.target.quantity,
            unit="kW",
            issue_time=self.issue_time,
            start=self.frame.index[0].to_pydatetime(),
            step_s=fx.STEP_S,
            values=[float(v) for v in self.frame["p50"]],
            quantiles={k: [float(v) for v in self.frame[k]] for k in ("p10", "p50", "p90")},
            model=self.model if self.version is None else f"{self.model}@{self.version}",
            meta={
                "site_id": self.site_id,
                "target": self.target.name,
                "version": self.version,
                "horizon_steps": len(self.frame),
            }
            | self.meta,
        )


def issue_time_of(now: datetime) -> pd.Timestamp:
    """The issue time of a forecast made at `now`: the start of the current interval."""
    return pd.Timestamp(now).tz_convert("UTC").floor("15min")


def fallback_model(history: pd.Series, site: fx.SiteContext, target: Target) -> Model:
    """Seasonal naive (a day ago) with bands from its recent residuals, when nothing is promoted."""
    x = design_matrix(history, history.index, site, target)
    rows = training_rows(x, target)
    return seasonal_naive_day().fit(x[rows], history[rows])


def forecast(
    model: Model,
    history: pd.Series,
    issue_time: pd.Timestamp,
    site: fx.SiteContext,
    target: Target,
    weather: WeatherProvider | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """P10/P50/P90 for the 96 intervals from `issue_time`, from history before it only.

    A trained `Forecaster` also reads the last hour before the issue time (intraday update)
    and serves its calibrated band; one fitted with weather features reads `weather` (NaN,
    i.e. left out, when the provider fails). Returns the frame and the inputs it used.
    """
    known = history[history.index < issue_time]
    times = day_ahead_times(issue_time, DAY)
    inputs = ["history", "calendar", "clear_sky"]
    if isinstance(model, Forecaster):
        span = day_ahead_times(times[0] - RESIDUAL_LAGS * fx.STEP, DAY + RESIDUAL_LAGS)
        frame = None
        if model.uses_weather:
            frame = pd.DataFrame(np.nan, index=span, columns=["temperature_c", "cloud_cover"])
            if weather is not None:
                try:
                    frame = weather.frame(span)
                    inputs.append(f"weather:{weather.name}")
                except WeatherError as err:
                    log.warning(
                        "weather %s unavailable, forecasting without: %s", weather.name, err
                    )
        x = design_matrix(known, span, site, target, frame)
        y = known.reindex(span).to_numpy(dtype=float)
        issued = model.issue(x, y, np.array([RESIDUAL_LAGS]))[0]
        inputs.append("intraday_update")
        return pd.DataFrame(issued, columns=["p10", "p50", "p90"], index=times), inputs
    x = design_matrix(known, times, site, target)
    return finish(model.predict(x).set_axis(times), x, target), inputs
