"""Cold start: day-ahead forecasts for a site with little or no history (clear-sky PV, standard load profile).

A site that has just appeared has no feature history to learn from, yet the energy schedule
optimiser needs a load (and PV) forecast to plan anything. Until the feature table holds a day
of values in the last week, the forecaster issues a *cold-start* forecast, marked `model =
"cold_start"` and `meta.cold_start = true` on the bus, built from whatever has been measured:

* **load**: the BDEW 2025 household standard load profile (H25, dynamised, with the site
  country's public holidays, via `demandlib`) in the site's local time, scaled so that its mean
  over the measured intervals equals the measured mean (one 15-minute interval is enough).
* **PV**: pvlib's Ineichen clear-sky GHI times an array factor (kW per W/m²) measured from
  daylight readings (PV power over measured irradiance, else over clear-sky GHI), times the
  recently measured clear-sky index; before any daylight reading, a configured nameplate
  (`FORECASTER_COLD_START_PV_PEAK_KW`) with a performance ratio stands in for the array factor.
  The sun being down is known ahead, so night intervals are 0.

Measurements are the feature-table history the forecaster already has, extended by the raw
`readings` of the cloud database after its last value (the current, partial interval
included), so a forecast exists seconds after the first readings were stored.
Bands: load P10/P90 are factors of P50 chosen on SimBench data (`BANDS`); PV's P10 is 0 and
its P90 the clear-sky output. Nothing measured for a target (and, for PV, no nameplate) means
no forecast: that is the only case where the forecaster has nothing to offer.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from derbus import features as fx
from derbus.storage import as_utc, readings_table

if TYPE_CHECKING:
    import pandas as pd

    from forecaster.catalogue import Target

log = logging.getLogger(__name__)

MODEL_NAME = "cold_start"
LOAD_PROFILE = "BDEW H25 (demandlib)"
PV_PERFORMANCE_RATIO = 0.8
"""AC output at 1000 W/m² clear-sky GHI per kW of nameplate, before any daylight reading."""
DEFAULT_CLEAR_SKY_INDEX = 0.7
"""PV P50 clear-sky index when none was measured yet (long-run mean of mid-latitude sites)."""
RECENT_DAYLIGHT = timedelta(hours=3)
"""Daylight span whose measurements give the recent clear-sky index."""


@dataclass(frozen=True)
class Bands:
    """P10 and P90 as factors of P50 (PV: P90 as a factor of the clear-sky output)."""

    p10: float
    p90: float


BANDS: dict[str, Bands] = {
    "load": Bands(p10=0.32, p90=2.01),
    "pv": Bands(p10=0.0, p90=1.0),
}
"""Cold-start bands as factors of P50: the 10 % and 90 % quantiles of actual / P50 on SimBench
2016 January-June (h0-a load; pv1 daylight: 0.00 and 6.7, the latter from dawn and dusk, so
PV's P90 is the clear-sky output instead, `pv_forecast`). Scored on July-December and on other
columns by `bench/bench_coldstart.py` (figures in BENCHMARKS.md)."""


class ColdStartSettings(BaseSettings):
    """How the forecaster forecasts a site with little history (`FORECASTER_COLD_START_*`)."""

    model_config = SettingsConfigDict(env_prefix="FORECASTER_COLD_START_", extra="ignore")

    enabled: bool = Field(default=True, description="issue cold-start forecasts at all")
    lookback_h: float = Field(
        default=48.0, gt=0, le=24 * 7, description="raw readings read after the feature history, h"
    )
    pv_peak_kw: float | None = Field(
        default=None,
        gt=0,
        description="PV nameplate (kW) used until the first daylight reading; unset: no PV"
        " forecast before daylight has been measured",
    )
    retry_s: float = Field(
        default=10.0, gt=0, le=3600, description="retry period while a site has no forecast, s"
    )


# --- measurements ----------------------------------------------------------------------------


class Readings:
    """Raw readings of the cloud database (`derbus.storage.readings_table`), read-only."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.table = readings_table(sa.MetaData())

    def samples(self, site_id: str, column: str, start: datetime, end: datetime) -> pd.Series:
        """Samples of a feature source column (`fx.SOURCES`) in [start, end], by time."""
        import pandas as pd

        source = next(s for s in fx.SOURCES if s.column == column)
        r = self.table.c
        query = (
            sa.select(r.time, r.value)
            .where(
                r.site_id == site_id,
                r.device_id == source.device_id,
                r.metric == source.metric,
                r.time >= as_utc(start),
                r.time <= as_utc(end),
            )
            .order_by(r.time)
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            rows = []  # no readings table in this database (yet): nothing measured
        if not rows:
            return pd.Series([], index=pd.DatetimeIndex([], tz="UTC"), dtype=float)
        index = pd.DatetimeIndex([as_utc(t) for t, _ in rows]).tz_convert("UTC")
        return pd.Series([float(v) for _, v in rows], index=index, dtype=float)

    def sites(self, since: datetime) -> list[str]:
        """Sites with a load or PV reading since `since`."""
        r = self.table.c
        wanted = [s for s in fx.SOURCES if s.column in ("load_kw", "pv_kw")]
        query = (
            sa.select(r.site_id)
            .where(
                r.time >= as_utc(since),
                sa.or_(
                    *[sa.and_(r.device_id == s.device_id, r.metric == s.metric) for s in wanted]
                ),
            )
            .distinct()
        )
        try:
            with self.engine.connect() as conn:
                return sorted(conn.execute(query).scalars().all())
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):
            return []


def measured(history: pd.Series, samples: pd.Series, now: datetime) -> pd.Series:
    """15-minute means: the feature history, then raw samples after its last value, up to now.

    Args:
        history: feature-table values on the 15-minute UTC grid (NaN where missing).
        samples: raw readings (any spacing) by aware time.
        now: the information time; the interval containing it counts with what it has so far.

    Returns:
        Measured 15-minute means (NaN-free), interval starts as index, kW.
    """
    import pandas as pd

    known = history.dropna()
    known = known[known.index < pd.Timestamp(now)]
    if not samples.empty:
        after = samples[samples.index >= known.index[-1] + fx.STEP] if len(known) else samples
        after = after[after.index <= pd.Timestamp(now)]
        if not after.empty:
            grid = fx.grid(after.index[0].to_pydatetime(), now + fx.STEP)
            means, _ = fx.resample(after, grid, max_fill_steps=0)
            known = pd.concat([known, means.dropna()])
    return known[~known.index.duplicated(keep="first")].sort_index().astype(float)


# --- the two models ------------------------------------------------------------------------


def load_profile_kw(times: pd.DatetimeIndex, site: fx.SiteContext) -> pd.Series:
    """The H25 household profile (kW per GWh/a) at `times` (UTC interval starts)."""
    import holidays
    import pandas as pd
    from demandlib.bdew import H25  # type: ignore[import-untyped]

    first, last = times.min(), times.max()
    grid = pd.date_range(first, last, freq="15min").tz_convert(site.timezone)
    years = sorted({first.tz_convert(site.timezone).year, last.tz_convert(site.timezone).year})
    calendar = holidays.country_holidays(site.country, years=years)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecations inside demandlib
        profile = pd.Series(H25(grid, holidays=dict(calendar)), dtype=float)
    profile.index = profile.index.tz_convert("UTC")
    return profile.reindex(times)


def load_forecast(
    measured_kw: pd.Series, times: pd.DatetimeIndex, site: fx.SiteContext
) -> pd.DataFrame | None:
    """P10/P50/P90 of the site load at `times`: the standard profile scaled to the measured mean.

    Args:
        measured_kw: measured 15-minute mean load (kW, >= 0), at least one interval.
        times: the forecast's interval starts (UTC).
        site: time zone and country (holidays) of the site.

    Returns:
        Columns p10, p50, p90 (kW), index `times`; None when nothing was measured.
    """
    import pandas as pd

    if measured_kw.empty:
        return None
    span = measured_kw.index.union(times)
    shape = load_profile_kw(span, site)
    reference = float(shape.reindex(measured_kw.index).mean())
    scale = max(float(measured_kw.clip(lower=0.0).mean()), 0.0) / reference
    p50 = shape.reindex(times).to_numpy(dtype=float) * scale
    bands = BANDS["load"]
    return pd.DataFrame({"p10": p50 * bands.p10, "p50": p50, "p90": p50 * bands.p90}, index=times)


@dataclass(frozen=True)
class PvScale:
    """What the PV cold start stands on."""

    kw_per_w_m2: float
    """AC output per W/m² of clear-sky GHI under a clear sky, kW/(W/m²)."""
    clear_sky_index: float
    """Recent measured GHI-equivalent clear-sky index, 0..1.2."""
    basis: str
    """measured_irradiance, measured_power or nameplate."""


def pv_scale(
    pv_kw: pd.Series,
    irradiance_w_m2: pd.Series,
    clear_ghi_w_m2: pd.Series,
    pv_peak_kw: float | None,
) -> PvScale | None:
    """The array factor and recent clear-sky index from daylight measurements (or the nameplate).

    Args:
        pv_kw: measured 15-minute mean PV generation (kW).
        irradiance_w_m2: measured 15-minute mean plane-of-array irradiance (may be empty).
        clear_ghi_w_m2: clear-sky GHI at (at least) the measured intervals.
        pv_peak_kw: nameplate to fall back on before any daylight reading (None: no fallback).

    Returns:
        The scale, or None when neither daylight readings nor a nameplate exist.
    """
    clear = clear_ghi_w_m2.reindex(pv_kw.index)
    day = pv_kw[clear >= fx.MIN_CLEAR_GHI_W_M2]
    if day.empty:
        if pv_peak_kw is None:
            return None
        return PvScale(
            pv_peak_kw * PV_PERFORMANCE_RATIO / 1000.0, DEFAULT_CLEAR_SKY_INDEX, "nameplate"
        )
    recent = day[day.index > day.index[-1] - RECENT_DAYLIGHT]
    irr = irradiance_w_m2.reindex(day.index)
    with_irr = irr.notna() & (irr > fx.MIN_CLEAR_GHI_W_M2)
    if with_irr.any():
        # array factor from power over measured irradiance (weather cancels out), clear-sky
        # index from measured irradiance over clear-sky GHI in the recent daylight
        factor = float(day[with_irr].sum() / irr[with_irr].sum())
        recent_irr = irr.reindex(recent.index)
        index = float(recent_irr.sum() / clear.reindex(recent.index).sum())
        return PvScale(factor, min(max(index, 0.05), 1.2), "measured_irradiance")
    # power only: capacity and clouds cannot be told apart. The clearest interval seen gives
    # the array factor (at least what the recent output implies at the default index), the
    # recent output over it the clear-sky index
    ratio = day / clear.reindex(day.index)
    recent_ratio = float(recent.sum() / clear.reindex(recent.index).sum())
    factor = max(float(ratio.max()), recent_ratio / DEFAULT_CLEAR_SKY_INDEX)
    index = recent_ratio / factor if factor > 0 else DEFAULT_CLEAR_SKY_INDEX
    return PvScale(factor, index, "measured_power")


def pv_forecast(scale: PvScale, times: pd.DatetimeIndex, site: fx.SiteContext) -> pd.DataFrame:
    """P10/P50/P90 of PV generation at `times`: clear-sky output x the recent clear-sky index.

    Args:
        scale: array factor and clear-sky index (`pv_scale`).
        times: the forecast's interval starts (UTC).
        site: latitude and longitude for pvlib.

    Returns:
        Columns p10, p50, p90 (kW, >= 0; 0 while the clear-sky GHI is below
        `fx.MIN_CLEAR_GHI_W_M2`), index `times`.
    """
    import numpy as np
    import pandas as pd

    clear = fx.solar_features(times, site.latitude, site.longitude)["clearsky_ghi_w_m2"]
    ghi = clear.to_numpy(dtype=float)
    clear_kw = scale.kw_per_w_m2 * np.where(ghi >= fx.MIN_CLEAR_GHI_W_M2, ghi, 0.0)
    p50 = clear_kw * scale.clear_sky_index
    # P90: what the array gives under a clear sky (at least P50, the index may exceed 1)
    p90 = np.maximum(clear_kw * BANDS["pv"].p90, p50)
    return pd.DataFrame({"p10": p50 * BANDS["pv"].p10, "p50": p50, "p90": p90}, index=times)


# --- what the forecaster calls ------------------------------------------------------------------


@dataclass(frozen=True)
class ColdStartForecast:
    """A cold-start forecast and what it stood on."""

    frame: pd.DataFrame
    """p10, p50, p90 (kW) by interval start."""
    measured_intervals: int
    """15-minute intervals of measurements it was scaled on."""
    basis: str
    """load: standard_profile; PV: measured_irradiance, measured_power or nameplate."""

    def meta(self) -> dict[str, object]:
        """What the published forecast's `meta` says about it."""
        return {
            "cold_start": True,
            "cold_start_basis": self.basis,
            "cold_start_measured_intervals": self.measured_intervals,
        }


class ColdStart:
    """Issues cold-start forecasts from the feature history and the raw readings. Blocking."""

    def __init__(self, settings: ColdStartSettings, readings: Readings) -> None:
        self.settings = settings
        self.readings = readings

    def sites(self, now: datetime) -> list[str]:
        """Sites with load or PV readings within the lookback."""
        if not self.settings.enabled:
            return []
        return self.readings.sites(now - timedelta(hours=self.settings.lookback_h))

    def forecast(
        self,
        site_id: str,
        target: Target,
        history: pd.Series,
        issue_time: datetime,
        now: datetime,
        site: fx.SiteContext,
    ) -> ColdStartForecast | None:
        """The day ahead of `issue_time` for a site with little history; None with nothing."""
        from forecaster.design import DAY, day_ahead_times

        if not self.settings.enabled:
            return None
        import pandas as pd

        start = now - timedelta(hours=self.settings.lookback_h)
        known = history[history.index >= pd.Timestamp(start)]
        raw = self.readings.samples(site_id, target.column, self._raw_start(known, start), now)
        values = measured(known, raw, now)
        times = day_ahead_times(pd.Timestamp(issue_time), DAY)
        if not target.solar:
            frame = load_forecast(values, times, site)
            if frame is None:
                return None
            log.info(
                "%s/%s: cold start on %d measured intervals (standard load profile)",
                site_id,
                target.name,
                len(values),
            )
            return ColdStartForecast(frame, len(values), "standard_profile")
        irr_raw = self.readings.samples(
            site_id, "irradiance_w_m2", self._raw_start(known, start), now
        )
        irradiance = measured(
            pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC")), irr_raw, now
        )
        if values.empty and self.settings.pv_peak_kw is None:
            return None
        clear = fx.solar_features(values.index, site.latitude, site.longitude)
        scale = pv_scale(values, irradiance, clear["clearsky_ghi_w_m2"], self.settings.pv_peak_kw)
        if scale is None:
            return None
        log.info(
            "%s/%s: cold start on %d measured intervals (%s)",
            site_id,
            target.name,
            len(values),
            scale.basis,
        )
        return ColdStartForecast(pv_forecast(scale, times, site), len(values), scale.basis)

    @staticmethod
    def _raw_start(known: pd.Series, start: datetime) -> datetime:
        measured_known = known.dropna()
        if measured_known.empty:
            return start
        last: datetime = measured_known.index[-1].to_pydatetime()
        return max(start, last + fx.STEP)
