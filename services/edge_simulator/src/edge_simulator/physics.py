"""The simulator's physics, once: the stateless formulas as functions on arrays, and the noise streams.

Every function here works on numpy arrays that broadcast: `Fleet.step` passes one entry per site
(shape (sites,)) and per-instant values as plain floats; `series.run_series` passes (steps, sites)
arrays and per-instant values as (steps, 1) columns. The recursions (the weather, cloud and price
deviations, appliance runs, EV delivery and the battery) stay with their two callers: the step
path advances them one step for all sites, the backfill path in a loop over plain floats, both
through `ou_step` where they share a formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TypeVar

import numpy as np

from derbus.messages import TouPeriod
from derbus.tariff import Tariff
from edge_simulator.noise import FloatArray
from edge_simulator.sim_config import (
    BatteryConfig,
    HomeLoadConfig,
    PriceConfig,
    SimConfig,
    SolarConfig,
)

# --- noise streams ---------------------------------------------------------------------------
# One stream per random quantity, so adding one never shifts the others. Per step one block of
# `STEP_STREAMS` uniforms is drawn: normal stream k uses rows 2k and 2k+1, then plain uniforms.
N_TEMP, N_CLOUD, N_BASE, N_PRICE, N_CARBON, N_V, N_F = 0, 1, 2, 3, 4, 5, 6
U_APP_START, U_APP_LEN, U_APP_KW = 14, 15, 16
STEP_STREAMS = 17
# streams keyed by the local day (not the instant), and the site size (keyed by nothing)
S_EV_ARR, S_EV_DEP, S_EV_GO, S_EV_E, S_COOK, S_SIZE = 20, 21, 22, 23, 24, 99

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TOU_PERIODS: tuple[TouPeriod, ...] = ("off_peak", "shoulder", "peak")
"""Time-of-use periods in index order (`series.run_series` reports `tou_period_index`)."""

Arr = TypeVar("Arr", float, FloatArray)


# --- the calendar of one instant ---------------------------------------------------------------
@dataclass(slots=True)
class Instant:
    """What one instant means to the models besides the sky (local time, tariff, battery age).

    Attributes:
        counter: the noise counter (epoch ms).
        now_s: epoch seconds.
        hour: local hour of day, fractional.
        day: local day (proleptic ordinal), the key of the per-day draws.
        midnight_s: epoch seconds of the local midnight starting `day`.
        seasonal_c: seasonal outdoor temperature term, °C.
        daily_c: daily outdoor temperature term, °C.
        night: 1.0 in the heating set-back hours, else 0.0.
        lighting_use: 1.0 while the household is awake, else 0.05.
        activity: appliance start rate factor (1.0 day, 0.1 night).
        cooking_bumps: sum of the cooking peaks at this hour.
        switch_on: (load1, load2) own schedule, 1.0 on / 0.0 off.
        period: time-of-use period.
        age_years: battery calendar age since the simulation start, years.
    """

    counter: int
    now_s: float
    hour: float
    day: int
    midnight_s: float
    seasonal_c: float
    daily_c: float
    night: float
    lighting_use: float
    activity: float
    cooking_bumps: float
    switch_on: tuple[float, float]
    period: TouPeriod
    age_years: float


def hour_in(hour: float, windows: tuple[tuple[float, float], ...]) -> bool:
    """Whether `hour` lies in one of the [start, end) windows."""
    return any(start <= hour < end for start, end in windows)


def instant(
    now: datetime, tz: tzinfo, config: SimConfig, latitude: float, tariff: Tariff, start: datetime
) -> Instant:
    """The calendar of `now` (aware) for sites in `tz` at `latitude`, simulated since `start`."""
    local = now.astimezone(tz)
    hour = local.hour + local.minute / 60 + (local.second + local.microsecond * 1e-6) / 3600
    doy = local.timetuple().tm_yday
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    w, h = config.weather, config.home_load
    sw1, sw2 = config.switchable
    peak_doy = 200 if latitude >= 0 else 17
    return Instant(
        counter=int((now - EPOCH).total_seconds() * 1000),
        now_s=(now - EPOCH).total_seconds(),
        hour=hour,
        day=local.toordinal(),
        midnight_s=(midnight - EPOCH).total_seconds(),
        seasonal_c=w.seasonal_amplitude_c * math.cos(2 * math.pi * (doy - peak_doy) / 365.25),
        daily_c=w.daily_amplitude_c * math.cos(2 * math.pi * (hour - 15.0) / 24.0),
        night=float(hour < 6.0 or hour >= 23.0),
        lighting_use=1.0 if (6.0 <= hour < 8.5) or (17.0 <= hour < 23.5) else 0.05,
        activity=1.0 if 7.0 <= hour < 23.0 else 0.1,
        cooking_bumps=sum(math.exp(-0.5 * ((hour - hk) / 0.3) ** 2) for hk in h.cooking_hours),
        switch_on=(float(hour_in(hour, sw1.on_hours)), float(hour_in(hour, sw2.on_hours))),
        period=tariff.period_at(now),
        age_years=max(0.0, (now - start).total_seconds()) / (365.25 * 86400),
    )


# --- recursions' shared step -------------------------------------------------------------------
@dataclass(slots=True)
class OuParams:
    """One step of an Ornstein-Uhlenbeck process: decay and noise scale (Brownian when not
    reverting)."""

    decay: float
    std: float
    reverting: bool


def ou_params(reversion_per_h: float, vol: float, dt_h: float) -> OuParams:
    """The exact OU update over `dt_h` hours (> 0) for a reversion rate and a volatility."""
    if reversion_per_h <= 0:
        return OuParams(1.0, vol * math.sqrt(dt_h), False)
    decay = math.exp(-reversion_per_h * dt_h)
    return OuParams(decay, vol * math.sqrt((1 - decay * decay) / (2 * reversion_per_h)), True)


def ou_step(x: Arr, mean: float, p: OuParams, z: Arr) -> Arr:
    """The OU state after one step with standard normal noise `z` (floats or arrays)."""
    if p.reverting:
        return mean + (x - mean) * p.decay + p.std * z
    return x + p.std * z


# --- stateless formulas ------------------------------------------------------------------------
@dataclass(frozen=True)
class Solar:
    """The PV side of a step: clearness index, plane-of-array irradiance, cell temperature and
    the AC power available (before any limit)."""

    clearness: FloatArray
    poa_w_m2: FloatArray
    cell_temp_c: FloatArray
    available_kw: FloatArray


def solar(
    s: SolarConfig,
    clear_poa_w_m2: FloatArray | float,
    cloud: FloatArray,
    t_out: FloatArray,
    scale: FloatArray,
    capacity_kw: FloatArray,
    pv_unit: FloatArray | float | None,
) -> Solar:
    """PV output from the clear-sky irradiance, the cloud cover (Kasten-Czeplak) and the weather.

    `pv_unit` is a replayed per-unit profile (None: the PV model).
    """
    clearness = 1.0 - 0.75 * cloud**3.4
    poa = clear_poa_w_m2 * clearness
    cell = t_out + (s.noct_c - 20.0) / 800.0 * poa
    dc_kw = s.panel_area_m2 * scale * s.panel_efficiency * poa / 1000.0
    dc_kw = np.maximum(dc_kw * (1.0 + s.temp_coeff_per_c * (cell - 25.0)), 0.0)
    if pv_unit is not None:
        available = pv_unit * capacity_kw
    else:
        available = np.minimum(dc_kw * s.inverter_efficiency, capacity_kw)
    return Solar(clearness, poa, cell, np.maximum(available, 0.0))


def base_load_kw(h: HomeLoadConfig, scale: FloatArray, z_base: FloatArray) -> FloatArray:
    """The always-on load with its noise."""
    out: FloatArray = h.base_load_kw * scale * np.maximum(0.2, 1.0 + h.base_noise * z_base)
    return out


def hvac_kw(h: HomeLoadConfig, t_out: FloatArray, night: Arr, scale: FloatArray) -> FloatArray:
    """Heating or cooling in proportion to the distance from the (night set-back) set points."""
    setback = night * h.night_setback_c
    need_c = np.maximum(0.0, h.heating_setpoint_c - setback - t_out) + np.maximum(
        0.0, t_out - h.cooling_setpoint_c - setback
    )
    out: FloatArray = np.minimum(h.hvac_kw_per_c * need_c, h.hvac_max_kw) * scale
    return out


def appliance_start_probability(h: HomeLoadConfig, activity: float, dt_h: float) -> float:
    """Probability that an idle appliance starts within a step (Poisson starts)."""
    return 1.0 - math.exp(-h.appliance_rate_per_h * activity * dt_h)


def lighting_kw(
    h: HomeLoadConfig,
    ghi_w_m2: FloatArray | float,
    clearness: FloatArray,
    use: Arr,
    scale: FloatArray,
) -> FloatArray:
    """Lighting: the rated power times the missing daylight times the household's use."""
    daylight = np.clip(ghi_w_m2 * clearness / 200.0, 0.0, 1.0)
    out: FloatArray = h.lighting_kw * scale * (1.0 - daylight) * use
    return out


def cooking_kw(
    h: HomeLoadConfig, scale: FloatArray, day_factor: FloatArray, bumps: Arr
) -> FloatArray:
    """Cooking at the meal-time peaks, scaled by the day's factor."""
    out: FloatArray = h.cooking_kw * scale * day_factor * bumps
    return out


def ev_sessions(
    day: Arr,
    now_s: Arr,
    today: tuple[FloatArray, ...],
    yesterday: tuple[FloatArray, ...],
) -> tuple[FloatArray, FloatArray]:
    """The EV session each site is in (its day, -1 for none) and that session's energy, kWh.

    `today` and `yesterday` are the per-day draws (arrival, departure, occurs, energy, …) of
    the local day and the one before: a session runs from its day's arrival to the next
    morning's departure.
    """
    arr_t, _, occ_t, e_t = today[:4]
    _, dep_y, occ_y, e_y = yesterday[:4]
    in_today = (occ_t > 0) & (now_s >= arr_t)
    in_yesterday = (occ_y > 0) & (now_s < dep_y)
    session = np.where(in_today, day * 1.0, np.where(in_yesterday, day - 1.0, -1.0))
    energy = np.where(in_today, e_t, np.where(in_yesterday, e_y, 0.0))
    return session, energy


def battery_voltage_v(b: BatteryConfig, soc_pct: Arr, stored_kw: Arr) -> Arr:
    """Terminal voltage: open-circuit voltage by SoC plus the drop over the internal resistance."""
    ocv = b.nominal_voltage_v * (1.0 + b.voltage_swing_pct / 100.0 * (soc_pct / 100.0 - 0.5))
    return ocv + stored_kw * 1000.0 / b.nominal_voltage_v * b.internal_resistance_ohm


def price_per_kwh(period_price: FloatArray | float, deviation: FloatArray) -> FloatArray:
    """The import price: the period's tariff price times (1 + the site's deviation), >= 0."""
    out: FloatArray = np.maximum(period_price * (1.0 + deviation), 0.0)
    return out


def carbon_g_per_kwh(
    gp: PriceConfig, ghi_w_m2: FloatArray | float, peak: Arr, z_carbon: FloatArray
) -> FloatArray:
    """Grid carbon intensity: lower in clear daylight, higher in the peak period (1.0), noisy."""
    daylight_clear = np.minimum(ghi_w_m2 / 800.0, 1.0)
    out: FloatArray = np.maximum(
        gp.carbon_base_g_per_kwh
        * (1.0 - gp.carbon_solar_dip * daylight_clear)
        * (1.0 + gp.carbon_peak_uplift * peak)
        * (1.0 + 0.03 * z_carbon),
        0.0,
    )
    return out


@dataclass(frozen=True)
class GridPoint:
    """The point of common coupling: active and reactive power, voltage and frequency."""

    p_kw: FloatArray
    q_kvar: FloatArray
    voltage_v: FloatArray
    frequency_hz: FloatArray


def grid_point(
    load_kw: FloatArray,
    generation_kw: FloatArray,
    battery_kw: FloatArray,
    scale: FloatArray,
    z_v: FloatArray,
    z_f: FloatArray,
) -> GridPoint:
    """The PCC from the site's powers (load-referenced) and its voltage and frequency noise."""
    pcc = load_kw - generation_kw + battery_kw
    return GridPoint(
        p_kw=pcc,
        q_kvar=0.33 * load_kw - 0.1 * generation_kw,
        voltage_v=230.0 * (1.0 - 0.003 * pcc / scale) + 0.5 * z_v,
        frequency_hz=50.0 + 0.01 * z_f,
    )
