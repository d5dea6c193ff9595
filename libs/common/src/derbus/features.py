"""Forecasting features, written once: the 15-minute feature table and the pure functions behind it.

Shared by feature_engineering (which writes the `features` table from the cloud `readings`) and
the forecaster (which reads it and computes the known-ahead features of future intervals with
the same functions), so a feature means the same thing when trained and when served.

Conventions:

* The grid is UTC, one row per 15-minute interval, labelled by its start `t`.
* Every column has an availability (`FeatureColumn.availability`):
  - `known_ahead`: a deterministic function of `t` and the site (calendar, holidays, tariff,
    clear-sky irradiance), known any time in advance;
  - `lagged`: computed only from intervals that ended by `t` (lags, trailing rolling stats),
    hence known at issue time `t`;
  - `observed`: the interval's own measurement (targets, measured weather), known at `t + step`.
* Gaps are filled causally: the last value is carried forward for at most `max_fill_steps`
  intervals and flagged (`<x>_filled`); the rest of a longer gap stays missing (NULL).

Needs pandas, numpy, pvlib and holidays (dependencies of the services that import it). They
are imported inside the functions that use them, so importing this module (the table, the
column catalogue, `SiteContext`) stays cheap for a service that must be ready within seconds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from derbus.settings import SiteSettings
from derbus.tariff import Tariff

if TYPE_CHECKING:
    import pandas as pd

STEP = timedelta(minutes=15)
STEP_S = 900
STEPS_PER_DAY = 96
STEPS_PER_WEEK = 7 * STEPS_PER_DAY
FEATURES_TABLE = "features"
MIN_CLEAR_GHI_W_M2 = 50.0
"""Below this clear-sky irradiance the clear-sky index is undefined (dawn, dusk, night)."""

TOU_CODES = {"off_peak": 0, "shoulder": 1, "peak": 2}

Availability = Literal["known_ahead", "lagged", "observed"]
Kind = Literal["float", "int", "bool", "str"]


@dataclass(frozen=True)
class Source:
    """Where an observed column comes from in `readings` (device and `<kind>.<field>` metric)."""

    column: str
    device_id: str
    metric: str
    description: str


SOURCES: tuple[Source, ...] = (
    Source("load_kw", "load", "load.p_kw", "site load (total home consumption), kW, >= 0"),
    Source("pv_kw", "pv", "pv.generation_kw", "PV generation, kW, >= 0"),
    Source("pcc_kw", "pcc", "meter.p_kw", "PCC power, kW, + import / - export"),
    Source("price_per_kwh", "grid", "price.price_per_kwh", "measured import price"),
    Source("irradiance_w_m2", "pv", "pv.irradiance_w_m2", "measured plane-of-array irradiance"),
    Source("temp_c", "pv", "pv.temp_c", "measured module temperature, °C"),
)
POWER_SOURCES = ("load_kw", "pv_kw", "pcc_kw")
"""Sources that get lags (1 step, 1 day, 1 week) and short/long rolling statistics."""


@dataclass(frozen=True)
class FeatureColumn:
    """One column of the feature table."""

    name: str
    kind: Kind
    availability: Availability
    description: str


def _columns() -> tuple[FeatureColumn, ...]:
    cols: list[FeatureColumn] = []
    for s in SOURCES:
        cols.append(FeatureColumn(s.column, "float", "observed", f"{s.description} (mean)"))
        cols.append(
            FeatureColumn(f"{s.column}_filled", "bool", "observed", "carried forward over a gap")
        )
    cols.append(
        FeatureColumn("clear_sky_index", "float", "observed", "measured irradiance / clear-sky GHI")
    )
    for name in POWER_SOURCES:
        cols += [
            FeatureColumn(f"{name}_lag_1", "float", "lagged", f"{name} one step (15 min) before"),
            FeatureColumn(f"{name}_lag_96", "float", "lagged", f"{name} one day before"),
            FeatureColumn(f"{name}_lag_672", "float", "lagged", f"{name} one week before"),
            FeatureColumn(f"{name}_mean_short", "float", "lagged", "trailing mean, short window"),
            FeatureColumn(f"{name}_std_short", "float", "lagged", "trailing std, short window"),
            FeatureColumn(f"{name}_mean_long", "float", "lagged", "trailing mean, long window"),
            FeatureColumn(f"{name}_std_long", "float", "lagged", "trailing std, long window"),
        ]
    for name in ("price_per_kwh", "irradiance_w_m2", "temp_c", "clear_sky_index"):
        cols.append(FeatureColumn(f"{name}_lag_1", "float", "lagged", f"{name} one step before"))
    cols.append(
        FeatureColumn(
            "clear_sky_index_mean_short", "float", "lagged", "trailing mean clear-sky index"
        )
    )
    cols += [
        FeatureColumn("hour_of_day", "float", "known_ahead", "local hour, fractional (0-24)"),
        FeatureColumn("day_of_week", "int", "known_ahead", "local day of week, Monday = 0"),
        FeatureColumn("month", "int", "known_ahead", "local month 1-12"),
        FeatureColumn("day_of_year", "int", "known_ahead", "local day of year 1-366"),
        FeatureColumn("is_weekend", "bool", "known_ahead", "local Saturday or Sunday"),
        FeatureColumn("is_holiday", "bool", "known_ahead", "public holiday of the site's country"),
        FeatureColumn("hour_sin", "float", "known_ahead", "sin(2π hour/24)"),
        FeatureColumn("hour_cos", "float", "known_ahead", "cos(2π hour/24)"),
        FeatureColumn("dow_sin", "float", "known_ahead", "sin(2π day_of_week/7)"),
        FeatureColumn("dow_cos", "float", "known_ahead", "cos(2π day_of_week/7)"),
        FeatureColumn("doy_sin", "float", "known_ahead", "sin(2π day_of_year/365.25)"),
        FeatureColumn("doy_cos", "float", "known_ahead", "cos(2π day_of_year/365.25)"),
        FeatureColumn("tariff_price_per_kwh", "float", "known_ahead", "tariff import price"),
        FeatureColumn("tou_period", "str", "known_ahead", "off_peak / shoulder / peak"),
        FeatureColumn("tou_code", "int", "known_ahead", "0 off_peak, 1 shoulder, 2 peak"),
        FeatureColumn("clearsky_ghi_w_m2", "float", "known_ahead", "pvlib Ineichen clear-sky GHI"),
        FeatureColumn("solar_elevation_deg", "float", "known_ahead", "sun elevation, degrees"),
    ]
    return tuple(cols)


FEATURE_COLUMNS: tuple[FeatureColumn, ...] = _columns()
KNOWN_AHEAD = tuple(c.name for c in FEATURE_COLUMNS if c.availability == "known_ahead")


@dataclass(frozen=True)
class SiteContext:
    """What the features need to know about a site (from `derbus.settings.SiteSettings`)."""

    timezone: str
    country: str
    latitude: float
    longitude: float
    tariff: Tariff

    @classmethod
    def of(cls, site: SiteSettings) -> SiteContext:
        """The context of a configured site, with the shared default tariff in its time zone."""
        return cls(
            timezone=site.timezone,
            country=site.country,
            latitude=site.latitude,
            longitude=site.longitude,
            tariff=Tariff(timezone=site.timezone),
        )


# --- the table -----------------------------------------------------------------------------------


def _sql_type(kind: Kind) -> sa.types.TypeEngine[Any]:
    if kind == "float":
        return sa.Float()
    if kind == "int":
        return sa.Integer()
    if kind == "bool":
        return sa.Boolean()
    return sa.String(20)


def feature_table(metadata: sa.MetaData) -> sa.Table:
    """The `features` table: one row per (time, site_id), every column of FEATURE_COLUMNS."""
    columns: list[sa.Column[Any]] = [
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("site_id", sa.String(100), nullable=False),
    ]
    for c in FEATURE_COLUMNS:
        columns.append(sa.Column(c.name, _sql_type(c.kind), nullable=True, comment=c.description))
    columns.append(sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False))
    return sa.Table(
        FEATURES_TABLE,
        metadata,
        *columns,
        sa.PrimaryKeyConstraint("time", "site_id", name="features_pkey"),
    )


# --- pure functions --------------------------------------------------------------------------------


def grid(start: datetime, end: datetime) -> pd.DatetimeIndex:
    """The 15-minute UTC grid of interval starts in [start, end) (start floored to the grid)."""
    import pandas as pd

    first = pd.Timestamp(start).tz_convert("UTC").floor("15min")
    last = pd.Timestamp(end).tz_convert("UTC")
    return pd.date_range(first, last, freq="15min", inclusive="left", name="time")


def resample(
    samples: pd.Series, index: pd.DatetimeIndex, max_fill_steps: int
) -> tuple[pd.Series, pd.Series]:
    """Mean of the samples in each interval [t, t+15 min), gaps carried forward causally.

    Args:
        samples: values indexed by aware sample time (any spacing).
        index: the 15-minute grid (interval starts, UTC); samples before its start are ignored,
            so start it early enough for the history the features need.
        max_fill_steps: empty intervals filled with the last value, at most this many in a row.

    Returns:
        (values, filled): values on the grid (NaN where missing) and a bool "filled" flag.
    """
    import numpy as np
    import pandas as pd

    if samples.empty:
        empty = pd.Series(np.nan, index=index, dtype=float)
        return empty, pd.Series(False, index=index)
    s = samples.astype(float).sort_index()
    s.index = pd.DatetimeIndex(s.index).tz_convert("UTC").floor("15min")
    means = s.groupby(level=0).mean().reindex(index)
    measured = means.notna()
    filled_values = means.ffill(limit=max_fill_steps) if max_fill_steps > 0 else means
    filled = filled_values.notna() & ~measured
    return filled_values.astype(float), filled.astype(bool)


def lag(series: pd.Series, steps: int) -> pd.Series:
    """The value `steps` intervals before (series on a regular grid)."""
    return series.shift(steps)


def trailing_mean_std(series: pd.Series, window_steps: int) -> tuple[pd.Series, pd.Series]:
    """Mean and std of the `window_steps` intervals before t (t itself excluded).

    At least half the window must hold values, otherwise NaN.
    """
    past = series.shift(1)
    min_periods = max(1, window_steps // 2)
    rolling = past.rolling(window_steps, min_periods=min_periods)
    return rolling.mean(), rolling.std(ddof=0)


def calendar_features(index: pd.DatetimeIndex, timezone: str, country: str) -> pd.DataFrame:
    """Calendar in the site's local time: hour, weekday, month, weekend, holiday, cyclical.

    Holidays are those of `country` (ISO code) judged on the local date, so an interval of a
    holiday's local morning that is still the previous day in UTC counts as a holiday.
    """
    import holidays
    import numpy as np
    import pandas as pd

    local = index.tz_convert(timezone)
    hour = local.hour + local.minute / 60.0
    dow = local.day_of_week
    doy = local.day_of_year
    years = sorted(set(local.year)) if len(local) else []
    calendar = holidays.country_holidays(country, years=years) if years else {}
    dates = local.date
    is_holiday = np.fromiter((d in calendar for d in dates), dtype=bool, count=len(dates))
    two_pi = 2 * np.pi
    return pd.DataFrame(
        {
            "hour_of_day": np.asarray(hour, dtype=float),
            "day_of_week": np.asarray(dow, dtype=int),
            "month": np.asarray(local.month, dtype=int),
            "day_of_year": np.asarray(doy, dtype=int),
            "is_weekend": np.asarray(dow >= 5, dtype=bool),
            "is_holiday": is_holiday,
            "hour_sin": np.sin(two_pi * np.asarray(hour) / 24),
            "hour_cos": np.cos(two_pi * np.asarray(hour) / 24),
            "dow_sin": np.sin(two_pi * np.asarray(dow) / 7),
            "dow_cos": np.cos(two_pi * np.asarray(dow) / 7),
            "doy_sin": np.sin(two_pi * np.asarray(doy) / 365.25),
            "doy_cos": np.cos(two_pi * np.asarray(doy) / 365.25),
        },
        index=index,
    )


def tariff_features(index: pd.DatetimeIndex, tariff: Tariff) -> pd.DataFrame:
    """Tariff import price and time-of-use period of each interval (judged at its start)."""
    import pandas as pd

    periods = [tariff.period_at(t.to_pydatetime()) for t in index]
    return pd.DataFrame(
        {
            "tariff_price_per_kwh": [tariff.prices_per_kwh[p] for p in periods],
            "tou_period": periods,
            "tou_code": [TOU_CODES[p] for p in periods],
        },
        index=index,
    )


def solar_features(index: pd.DatetimeIndex, latitude: float, longitude: float) -> pd.DataFrame:
    """Clear-sky GHI (pvlib, Ineichen) and sun elevation at each interval's midpoint."""
    import numpy as np
    import pandas as pd
    import pvlib

    if len(index) == 0:
        return pd.DataFrame({"clearsky_ghi_w_m2": [], "solar_elevation_deg": []}, index=index)
    location = pvlib.location.Location(latitude, longitude, tz="UTC")
    mid = index + pd.Timedelta(minutes=7.5)
    with warnings.catch_warnings():
        # pvlib still calls DatetimeIndex.dayofyear, deprecated in pandas 3
        warnings.filterwarnings("ignore", message=".*dayofyear is deprecated")
        position = location.get_solarposition(mid)
        clear = location.get_clearsky(mid, model="ineichen", solar_position=position)
    return pd.DataFrame(
        {
            "clearsky_ghi_w_m2": np.clip(clear["ghi"].to_numpy(dtype=float), 0.0, None),
            "solar_elevation_deg": position["apparent_elevation"].to_numpy(dtype=float),
        },
        index=index,
    )


def clear_sky_index(measured_w_m2: pd.Series, clear_w_m2: pd.Series) -> pd.Series:
    """Measured / clear-sky irradiance, NaN where the clear sky is below MIN_CLEAR_GHI_W_M2."""
    ratio = measured_w_m2 / clear_w_m2.where(clear_w_m2 >= MIN_CLEAR_GHI_W_M2)
    return ratio.clip(lower=0.0, upper=2.0)


def known_ahead_features(index: pd.DatetimeIndex, site: SiteContext) -> pd.DataFrame:
    """Every `known_ahead` column for the intervals of `index` (future ones included)."""
    import pandas as pd

    frame = pd.concat(
        [
            calendar_features(index, site.timezone, site.country),
            tariff_features(index, site.tariff),
            solar_features(index, site.latitude, site.longitude),
        ],
        axis=1,
    )
    return frame[list(KNOWN_AHEAD)]


def build_features(
    observed: pd.DataFrame,
    site: SiteContext,
    *,
    short_window_steps: int,
    long_window_steps: int,
) -> pd.DataFrame:
    """All feature columns on the grid of `observed`.

    Args:
        observed: one column per source (`load_kw`, …) and `<x>_filled`, on a regular
            15-minute UTC grid (the output of `resample`), including enough history before the
            rows wanted for the lags and windows (one week plus the long window).
        site: the site's time zone, country, location and tariff.
        short_window_steps: intervals in the short trailing window.
        long_window_steps: intervals in the long trailing window.

    Returns:
        A frame with exactly the columns of FEATURE_COLUMNS, same index.
    """
    import numpy as np
    import pandas as pd

    index = observed.index
    out = pd.DataFrame(index=index)
    for s in SOURCES:
        out[s.column] = observed.get(s.column, np.nan)
        flag = f"{s.column}_filled"
        out[flag] = observed[flag].astype(bool) if flag in observed else False
    ahead = known_ahead_features(index, site)
    out["clear_sky_index"] = clear_sky_index(out["irradiance_w_m2"], ahead["clearsky_ghi_w_m2"])
    for name in POWER_SOURCES:
        series = out[name]
        out[f"{name}_lag_1"] = lag(series, 1)
        out[f"{name}_lag_96"] = lag(series, STEPS_PER_DAY)
        out[f"{name}_lag_672"] = lag(series, STEPS_PER_WEEK)
        out[f"{name}_mean_short"], out[f"{name}_std_short"] = trailing_mean_std(
            series, short_window_steps
        )
        out[f"{name}_mean_long"], out[f"{name}_std_long"] = trailing_mean_std(
            series, long_window_steps
        )
    for name in ("price_per_kwh", "irradiance_w_m2", "temp_c", "clear_sky_index"):
        out[f"{name}_lag_1"] = lag(out[name], 1)
    out["clear_sky_index_mean_short"] = trailing_mean_std(
        out["clear_sky_index"], short_window_steps
    )[0]
    out = pd.concat([out, ahead], axis=1)
    return out[[c.name for c in FEATURE_COLUMNS]]
