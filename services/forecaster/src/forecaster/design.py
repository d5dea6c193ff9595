"""The day-ahead design matrix: known-ahead features of the target interval plus day-old lags.

Every measured input of a target interval `t` is at least one day old (`t - 1 day` or earlier),
so for an issue time `T` and every interval of the day ahead (`T <= t < T + 24 h`) it ended by
`T`: one matrix serves all 96 horizons without leakage. Known-ahead columns (calendar, holidays,
tariff, clear sky) come from `derbus.features`, the functions that fill the feature table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from derbus import features as fx
from forecaster.catalogue import Target

DAY = fx.STEPS_PER_DAY
WEEK = fx.STEPS_PER_WEEK


CALENDAR = (
    "hour_of_day",
    "day_of_week",
    "is_weekend",
    "is_holiday",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "doy_sin",
    "doy_cos",
    "tou_code",
    "clearsky_ghi_w_m2",
    "solar_elevation_deg",
)
LAGS = (
    "y_lag_96",
    "y_lag_192",
    "y_lag_672",
    "y_mean_1d",
    "y_mean_7d",
    "y_std_1d",
    "y_tod_mean_7d",
    "y_tod_std_7d",
    "y_tow_mean_4w",
)
DAY_KIND = ("day_kind", "y_same_kind_lag", "y_same_kind_mean_3")
"""Day kind (workday, Saturday, Sunday/holiday) and the load of the latest days of that kind."""
SAME_KIND_DAYS = 14
NIGHT_ELEVATION_DEG = -8.0
"""Below this sun elevation PV is taken as zero: models neither train on nor predict it."""
SOLAR = (
    "clear_ratio_1d",
    "clear_ratio_3d",
    "smart_persistence_1d",
    "smart_persistence_3d",
    "clear_persistence",
)


WEATHER = ("weather_temperature_c", "weather_cloud_cover")
"""Forecast weather of the target interval (forecaster.weather), when a provider gives it."""
WEATHER_SOLAR = ("weather_clear_ghi",)
"""PV: the clear-sky GHI dimmed by the forecast cloud cover (Kasten-Czeplak, 1 - 0.75 c^3.4)."""


def feature_names(target: Target, weather: bool = False) -> list[str]:
    """The columns of the design matrix of a target (with or without weather features)."""
    names = CALENDAR + LAGS + DAY_KIND + (SOLAR if target.solar else ())
    if weather:
        names += WEATHER + (WEATHER_SOLAR if target.solar else ())
    return list(names)


def design_matrix(
    history: pd.Series,
    times: pd.DatetimeIndex,
    site: fx.SiteContext,
    target: Target,
    weather: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Features of the target intervals `times` from the target's history.

    Args:
        history: the target (kW) on the 15-minute UTC grid; NaN where missing. Values at or
            after an interval `t - 1 day` are never used for `t`.
        times: target interval starts (UTC, on the grid).
        site: time zone, holidays country, location and tariff of the site.
        target: which target (PV adds clear-sky ratio features).
        weather: forecast `temperature_c` and `cloud_cover` (0..1) by interval start
            (forecaster.weather); None: no weather features.

    Returns:
        One row per time, the columns of `feature_names(target, weather is not None)` (NaN
        where history or weather is missing).
    """
    names = feature_names(target, weather is not None)
    if len(times) == 0:
        return pd.DataFrame(columns=names, index=times)
    # the lags of `times` reach back 4 weeks and a day at most: 5 weeks before the first one
    start = times[0] - WEEK * 5 * fx.STEP
    full = pd.date_range(start, times[-1], freq="15min", name="time")
    y = history.reindex(full).astype(float)
    ahead = _known_ahead(full, site)
    out = pd.DataFrame(index=full)
    for name in CALENDAR:
        out[name] = ahead[name].astype(float)
    out["y_lag_96"] = fx.lag(y, DAY)
    out["y_lag_192"] = fx.lag(y, 2 * DAY)
    out["y_lag_672"] = fx.lag(y, WEEK)
    mean_1d, std_1d = fx.trailing_mean_std(y, DAY)
    out["y_mean_1d"] = fx.lag(mean_1d, DAY - 1)  # mean of the day ending at t - 1 day
    out["y_std_1d"] = fx.lag(std_1d, DAY - 1)
    out["y_mean_7d"] = fx.lag(fx.trailing_mean_std(y, WEEK)[0], DAY - 1)
    same_time = pd.concat([fx.lag(y, k * DAY) for k in range(1, 8)], axis=1)
    out["y_tod_mean_7d"] = same_time.mean(axis=1)  # the same time of day, last 7 days
    out["y_tod_std_7d"] = same_time.std(axis=1, ddof=0)
    same_week = pd.concat([fx.lag(y, k * WEEK) for k in range(1, 5)], axis=1)
    out["y_tow_mean_4w"] = same_week.mean(axis=1)  # the same time of week, last 4 weeks
    kind = day_kind(ahead)
    out["day_kind"] = kind.astype(float)
    out["y_same_kind_lag"], out["y_same_kind_mean_3"] = same_kind_lags(y, kind)
    if target.solar:
        clear = ahead["clearsky_ghi_w_m2"].astype(float)
        day_clear = fx.lag(clear.rolling(DAY, min_periods=1).sum(), DAY)
        day_y = fx.lag(y.rolling(DAY, min_periods=DAY // 2).sum(), DAY)
        ratio_1d = day_y / day_clear.where(day_clear > 0)
        three_clear = fx.lag(clear.rolling(3 * DAY, min_periods=1).sum(), DAY)
        three_y = fx.lag(y.rolling(3 * DAY, min_periods=DAY).sum(), DAY)
        ratio_3d = three_y / three_clear.where(three_clear > 0)
        out["clear_ratio_1d"] = ratio_1d
        out["clear_ratio_3d"] = ratio_3d
        out["smart_persistence_1d"] = ratio_1d * clear
        out["smart_persistence_3d"] = ratio_3d * clear
        clear_day_ago = fx.lag(clear, DAY)
        out["clear_persistence"] = (
            fx.lag(y, DAY) / clear_day_ago.where(clear_day_ago >= fx.MIN_CLEAR_GHI_W_M2) * clear
        ).where(clear > 0, 0.0)
    if weather is not None:
        w = weather.reindex(full)
        out["weather_temperature_c"] = w["temperature_c"].astype(float)
        out["weather_cloud_cover"] = w["cloud_cover"].astype(float)
        if target.solar:
            dim = 1 - 0.75 * np.clip(out["weather_cloud_cover"], 0, 1) ** 3.4
            out["weather_clear_ghi"] = ahead["clearsky_ghi_w_m2"].astype(float) * dim
    return out.loc[times, names].replace([np.inf, -np.inf], np.nan)


_AHEAD: list[tuple[pd.Timestamp, int, fx.SiteContext, pd.DataFrame]] = []


def _known_ahead(full: pd.DatetimeIndex, site: fx.SiteContext) -> pd.DataFrame:
    """Known-ahead features of a grid, the last one kept: forecasts of many sites issued at
    the same time for one site context (the service's) compute calendar and clear sky once."""
    if _AHEAD and _AHEAD[0][0] == full[0] and _AHEAD[0][1] == len(full) and _AHEAD[0][2] is site:
        return _AHEAD[0][3]
    ahead = fx.known_ahead_features(full, site)
    _AHEAD[:] = [(full[0], len(full), site, ahead)]
    return ahead


def day_kind(ahead: pd.DataFrame) -> pd.Series:
    """Kind of local day: 0 workday, 1 Saturday, 2 Sunday or public holiday."""
    dow = ahead["day_of_week"].to_numpy(dtype=int)
    holiday = ahead["is_holiday"].to_numpy(dtype=bool)
    kind = np.where(holiday | (dow == 6), 2, np.where(dow == 5, 1, 0))
    return pd.Series(kind, index=ahead.index)


def same_kind_lags(y: pd.Series, kind: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The same time of day on the latest earlier days of the same kind (workday, …).

    Looks back 1 to SAME_KIND_DAYS days; the first is the latest such day (a Monday gets
    Friday's value, the day after a holiday a workday's), the second the mean of up to three.
    """
    v, k = y.to_numpy(dtype=float), kind.to_numpy()
    n = len(v)
    latest, total, count = np.full(n, np.nan), np.zeros(n), np.zeros(n, dtype=int)
    for days in range(1, SAME_KIND_DAYS + 1):
        shift = days * DAY
        if shift >= n:
            break
        value = np.concatenate([np.full(shift, np.nan), v[:-shift]])
        kind_then = np.concatenate([np.full(shift, -1), k[:-shift]])
        match = (kind_then == k) & ~np.isnan(value) & (count < 3)
        latest = np.where(np.isnan(latest) & match, value, latest)
        total += np.where(match, value, 0.0)
        count += match
    mean = total / np.where(count > 0, count, np.nan)
    return pd.Series(latest, index=y.index), pd.Series(mean, index=y.index)


def training_rows(x: pd.DataFrame, target: Target) -> np.ndarray:
    """Rows a model learns from: all for load; for PV only when the sun can be up."""
    if not target.solar:
        return np.ones(len(x), dtype=bool)
    return np.asarray(x["solar_elevation_deg"].to_numpy(dtype=float) > NIGHT_ELEVATION_DEG)


def day_ahead_times(issue_time: pd.Timestamp, steps: int = DAY) -> pd.DatetimeIndex:
    """The intervals of the day ahead of an issue time (floored to the grid)."""
    start = pd.Timestamp(issue_time).tz_convert("UTC").floor("15min")
    return pd.date_range(start, periods=steps, freq="15min", name="time")
