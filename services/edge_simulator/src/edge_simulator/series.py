"""Time-vectorised stepping for backfills: many equal steps of a fleet at once, no setpoints.

`Fleet.step` is vectorised over sites; a one-site backfill pays numpy's per-call overhead on
one-element arrays ~100 times a step. Here the random numbers, calendar, sky and every
stateless formula are computed for all steps at once (arrays of shape (steps, sites)), and the
recursions (weather, clouds and price deviations, appliance runs, EV sessions, the battery) run
in a tight loop over plain floats. The formulas are `Fleet.step`'s, in the same order: the
result equals stepping the fleet one step at a time to ~1e-12 (numpy's vectorised
transcendental functions may round the last bit differently; `tests/test_series.py` compares).
The fleet's state is carried over, so consecutive calls (chunks of days) continue each other.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

from derbus.messages import TouPeriod
from edge_simulator import noise
from edge_simulator.fleet import (
    _EPOCH,
    _N_BASE,
    _N_CARBON,
    _N_CLOUD,
    _N_F,
    _N_PRICE,
    _N_TEMP,
    _N_V,
    _STEP_STREAMS,
    _U_APP_KW,
    _U_APP_LEN,
    _U_APP_START,
    Fleet,
    _hour_mask,
)
from edge_simulator.noise import FloatArray


def _uniform_blocks(keys: noise.KeyArray, counters: list[int]) -> FloatArray:
    """`noise.uniform_block` for many counters at once: shape (steps, streams, sites)."""
    streams = np.arange(_STEP_STREAMS, dtype=np.uint64)
    c = np.asarray(counters, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = c * np.uint64(noise._GOLDEN)
        salts = base[:, None] ^ (streams * np.uint64(0xD1B54A32D192ED03))[None, :]
        bits = noise._mix(keys[None, None, :] ^ salts[:, :, None])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _ou_params(reversion_per_h: float, vol: float, dt_h: float) -> tuple[float, float, bool]:
    """(decay, std, mean-reverting?) of `fleet._ou` for one step length."""
    if reversion_per_h <= 0:
        return 1.0, vol * math.sqrt(dt_h), False
    decay = math.exp(-reversion_per_h * dt_h)
    return decay, vol * math.sqrt((1 - decay * decay) / (2 * reversion_per_h)), True


def _ou_path(x0: float, mean: float, params: tuple[float, float, bool], z: list[float],
             lo: float = -math.inf, hi: float = math.inf) -> tuple[list[float], float]:  # fmt: skip
    """The OU recursion of `fleet._ou` (optionally clipped to [lo, hi]) over a noise path."""
    decay, std, reverting = params
    out = []
    x = x0
    for zk in z:
        x = mean + (x - mean) * decay + std * zk if reverting else x + std * zk
        x = min(max(x, lo), hi)
        out.append(x)
    return out, x


def run_series(fleet: Fleet, times: list[datetime], dt_s: float) -> dict[str, FloatArray]:
    """Step `fleet` through `times` (each `dt_s` after the previous), without setpoints.

    Args:
        fleet: the fleet (its state is advanced as by `fleet.step(t, dt_s)` for each t).
        times: aware instants, increasing by `dt_s`.
        dt_s: step length, s (> 0).

    Returns:
        The `StepResult` fields as arrays of shape (steps, sites), plus `ts_epoch_s`,
        `tou_period_index` (index into ("off_peak", "shoulder", "peak")) and `clear_sky_w_m2`.
    """
    if dt_s <= 0:
        raise ValueError("dt_s must be > 0")
    cfg, loc, n, n_t = fleet.config, fleet.location, fleet.n_sites, len(times)
    dt_h = dt_s / 3600.0
    w, s, h, b, gp, ev_cfg = (cfg.weather, cfg.solar, cfg.home_load, cfg.battery,
                              cfg.grid_price, cfg.ev)  # fmt: skip
    sw1, sw2 = cfg.switchable
    periods: tuple[TouPeriod, ...] = ("off_peak", "shoulder", "peak")
    peak_doy = 200 if loc.latitude >= 0 else 17
    # --- per-step scalars (calendar, sky, day draws), in `Fleet.step`'s order -----------------
    counters: list[int] = []
    cols: dict[str, list[float]] = {k: [] for k in (
        "hour", "seasonal", "daily", "poa", "ghi", "night", "awake", "activity", "bumps",
        "sw1", "sw2", "period", "age", "now_s", "pv_unit", "load_unit")}  # fmt: skip
    day_rows: list[tuple[int, tuple[FloatArray, ...], tuple[FloatArray, ...]]] = []
    for now in times:
        counters.append(int((now - _EPOCH).total_seconds() * 1000))
        local = now.astimezone(fleet._tz)
        hour = local.hour + local.minute / 60 + (local.second + local.microsecond * 1e-6) / 3600
        doy = local.timetuple().tm_yday
        day = local.toordinal()
        midnight_s = (
            local.replace(hour=0, minute=0, second=0, microsecond=0) - _EPOCH
        ).total_seconds()
        today = fleet._day_draws(day, midnight_s)
        yesterday = fleet._day_draws(day - 1, midnight_s - 86400.0) if ev_cfg.enabled else today
        day_rows.append((day, today, yesterday))
        clear = fleet.sky.at(now)
        c = cols
        c["hour"].append(hour)
        c["seasonal"].append(
            w.seasonal_amplitude_c * math.cos(2 * math.pi * (doy - peak_doy) / 365.25)
        )
        c["daily"].append(w.daily_amplitude_c * math.cos(2 * math.pi * (hour - 15.0) / 24.0))
        c["poa"].append(clear.poa_w_m2)
        c["ghi"].append(clear.ghi_w_m2)
        c["night"].append(float(hour < 6.0 or hour >= 23.0))
        c["awake"].append(float((6.0 <= hour < 8.5) or (17.0 <= hour < 23.5)))
        c["activity"].append(1.0 if 7.0 <= hour < 23.0 else 0.1)
        c["bumps"].append(sum(math.exp(-0.5 * ((hour - hk) / 0.3) ** 2) for hk in h.cooking_hours))
        c["sw1"].append(float(_hour_mask(hour, sw1.on_hours)))
        c["sw2"].append(float(_hour_mask(hour, sw2.on_hours)))
        c["period"].append(float(periods.index(fleet._tariff.period_at(now))))
        c["age"].append(max(0.0, (now - fleet.start).total_seconds()) / (365.25 * 86400))
        c["now_s"].append((now - _EPOCH).total_seconds())
        if fleet.pv_profile is not None:
            c["pv_unit"].append(fleet.pv_profile.at(now, loc.timezone))
        if fleet.load_profile is not None:
            c["load_unit"].append(fleet.load_profile.at(now, loc.timezone))
    col = {k: np.asarray(v, dtype=float)[:, None] for k, v in cols.items() if v}
    u = _uniform_blocks(fleet.keys, counters)  # (n_t, streams, n)

    def z(k: int) -> FloatArray:
        return noise.box_muller(u[:, 2 * k], u[:, 2 * k + 1])

    scale = fleet.scale[None, :]
    z_temp, z_cloud = z(_N_TEMP).T.tolist(), z(_N_CLOUD).T.tolist()
    z_price = z(_N_PRICE).T.tolist()
    # --- weather and clouds: OU recursions per site -------------------------------------------
    temp_dev = np.empty((n_t, n))
    cloud = np.empty((n_t, n))
    price_dev = np.empty((n_t, n))
    p_temp = _ou_params(0.5, w.noise_c, dt_h)
    p_cloud = _ou_params(s.cloud_reversion_per_h, s.cloud_volatility, dt_h)
    p_price = _ou_params(gp.reversion_per_h, gp.volatility, dt_h)
    for i in range(n):
        temp_dev[:, i], fleet.temp_dev_c[i] = _ou_path(fleet.temp_dev_c[i], 0.0, p_temp, z_temp[i])
        cloud[:, i], fleet.cloud[i] = _ou_path(
            fleet.cloud[i], s.cloud_mean, p_cloud, z_cloud[i], 0.0, s.cloud_max
        )
        price_dev[:, i], fleet.price_dev[i] = _ou_path(fleet.price_dev[i], 0.0, p_price, z_price[i])
    t_out = w.annual_mean_c + col["seasonal"] + col["daily"] + temp_dev
    # --- solar --------------------------------------------------------------------------------
    clearness = 1.0 - 0.75 * cloud**3.4
    poa = col["poa"] * clearness
    cell = t_out + (s.noct_c - 20.0) / 800.0 * poa
    dc_kw = s.panel_area_m2 * scale * s.panel_efficiency * poa / 1000.0
    dc_kw = np.maximum(dc_kw * (1.0 + s.temp_coeff_per_c * (cell - 25.0)), 0.0)
    cap_pv = fleet.pv_capacity_kw[None, :]
    if fleet.pv_profile is not None:
        available = col["pv_unit"] * cap_pv
    else:
        available = np.minimum(dc_kw * s.inverter_efficiency, cap_pv)
    generation = available = np.maximum(available, 0.0)
    # --- home load ----------------------------------------------------------------------------
    zeros = np.zeros((n_t, n))
    if fleet.load_profile is not None:
        base = col["load_unit"] * (cfg.replay.load_peak_kw * scale)
        hvac = appliance = lighting = cooking = zeros
    else:
        base = h.base_load_kw * scale * np.maximum(0.2, 1.0 + h.base_noise * z(_N_BASE))
        setback = col["night"] * h.night_setback_c
        need_c = np.maximum(0.0, h.heating_setpoint_c - setback - t_out) + np.maximum(
            0.0, t_out - h.cooling_setpoint_c - setback
        )
        hvac = np.minimum(h.hvac_kw_per_c * need_c, h.hvac_max_kw) * scale
        appliance = np.empty((n_t, n))
        p_start = [1.0 - math.exp(-h.appliance_rate_per_h * a * dt_h) for a in cols["activity"]]
        u_start = u[:, _U_APP_START].T.tolist()
        u_len = u[:, _U_APP_LEN].T.tolist()
        u_kw = u[:, _U_APP_KW].T.tolist()
        for i in range(n):
            left, p_app = float(fleet.appliance_left_s[i]), float(fleet.appliance_p_kw[i])
            app_kw = h.appliance_kw * float(fleet.scale[i])
            row = []
            for k in range(n_t):
                if left <= 0 and u_start[i][k] < p_start[k]:
                    left = h.appliance_duration_min * 60 * (0.5 + u_len[i][k])
                    p_app = app_kw * (0.6 + 0.8 * u_kw[i][k])
                row.append(p_app if left > 0 else 0.0)
                left = max(left - dt_s, 0.0)
            appliance[:, i] = row
            fleet.appliance_left_s[i], fleet.appliance_p_kw[i] = left, p_app
        daylight = np.clip(col["ghi"] * clearness / 200.0, 0.0, 1.0)
        lit = np.where(col["awake"] > 0, 1.0, 0.05)
        lighting = h.lighting_kw * scale * (1.0 - daylight) * lit
        day_factor = np.asarray([row[1][4] for row in day_rows])
        cooking = h.cooking_kw * scale * day_factor * col["bumps"]
    # --- EV sessions --------------------------------------------------------------------------
    ev = np.zeros((n_t, n))
    ev_need = np.zeros((n_t, n))
    ev_plugged = np.zeros((n_t, n))
    if ev_cfg.enabled:
        now_s = cols["now_s"]
        for i in range(n):
            session, delivered = float(fleet.ev_session[i]), float(fleet.ev_delivered_kwh[i])
            charger = ev_cfg.charger_kw * float(fleet.scale[i])
            for k, (day, (arr_t, _, occ_t, e_t, _c), (_, dep_y, occ_y, e_y, _c2)) in enumerate(
                day_rows
            ):
                today = occ_t[i] > 0 and now_s[k] >= arr_t[i]
                yesterday = occ_y[i] > 0 and now_s[k] < dep_y[i]
                new = float(day) if today else (float(day - 1) if yesterday else -1.0)
                energy = float(e_t[i]) if today else (float(e_y[i]) if yesterday else 0.0)
                if new != session:
                    delivered = 0.0
                session = new
                need = max(energy - delivered, 0.0)
                cap = min(charger, need / max(dt_h, 1e-12))
                p = cap if session >= 0 and need > 1e-9 else 0.0
                delivered = delivered + p * dt_h
                ev[k, i] = p
                ev_need[k, i] = max(energy - delivered, 0.0)
                ev_plugged[k, i] = float(session >= 0)
            fleet.ev_session[i], fleet.ev_delivered_kwh[i] = session, delivered
    load1 = col["sw1"] * sw1.p_kw * scale
    load2 = col["sw2"] * sw2.p_kw * scale
    total = base + hvac + appliance + lighting + cooking + ev + load1 + load2
    # --- battery ------------------------------------------------------------------------------
    p_bat, soc_out, soh_out, cap_out = (np.empty((n_t, n)) for _ in range(4))
    taper_c_out, taper_d_out, volt_out, temp_out, cyc_out, energy_out = (
        np.empty((n_t, n)) for _ in range(6))  # fmt: skip
    eta_c, eta_d = b.charge_efficiency, b.discharge_efficiency
    decay_th = 1.0 - math.exp(-dt_s / b.thermal_time_constant_s)
    ages = cols["age"]
    default = (generation - total).T.tolist() if b.self_consumption else zeros.T.tolist()
    for i in range(n):
        rated = float(fleet.battery_capacity_kwh[i])
        max_c, max_d = (
            float(fleet.battery_max_charge_kw[i]),
            float(fleet.battery_max_discharge_kw[i]),
        )
        energy_kwh, cycles, temp = (float(fleet.energy_kwh[i]), float(fleet.cycles[i]),
                                    float(fleet.battery_temp_c[i]))  # fmt: skip
        for k in range(n_t):
            soh = min(max(b.initial_soh_pct - b.cycle_fade_pct * cycles
                          - b.calendar_fade_pct_per_year * ages[k], 1.0), 100.0)  # fmt: skip
            cap_now = rated * soh / 100.0
            e_min = cap_now * b.min_soc_pct / 100.0
            e_max = cap_now * b.max_soc_pct / 100.0
            e = min(energy_kwh, cap_now)
            soc = e / cap_now * 100.0
            if b.taper_band_pct > 0:
                tc = min(max((b.max_soc_pct - soc) / b.taper_band_pct, b.taper_min_fraction), 1.0)
                td = min(max((soc - b.min_soc_pct) / b.taper_band_pct, b.taper_min_fraction), 1.0)
            else:
                tc = td = 1.0
            ch_lim = 0.0 if e >= e_max - 1e-9 else max_c * tc
            dis_lim = 0.0 if e <= e_min + 1e-9 else max_d * td
            ch_lim = min(ch_lim, max(e_max - e, 0.0) / (eta_c * dt_h))
            dis_lim = min(dis_lim, max(e - e_min, 0.0) * eta_d / dt_h)
            p = min(max(default[i][k], -dis_lim), ch_lim)
            stored = p * eta_c if p > 0 else p / eta_d
            energy_kwh = min(max(e + stored * dt_h, 0.0), cap_now)
            cycles = cycles + abs(stored) * dt_h / (2.0 * rated)
            temp = temp + decay_th * (
                b.room_temp_c + b.thermal_resistance_c_per_kw * abs(p - stored) - temp
            )
            soc_now = energy_kwh / cap_now * 100.0
            ocv = b.nominal_voltage_v * (
                1.0 + b.voltage_swing_pct / 100.0 * (soc_now / 100.0 - 0.5)
            )
            p_bat[k, i], soc_out[k, i], soh_out[k, i], cap_out[k, i] = p, soc_now, soh, cap_now
            taper_c_out[k, i], taper_d_out[k, i] = tc, td
            volt_out[k, i] = ocv + stored * 1000.0 / b.nominal_voltage_v * b.internal_resistance_ohm
            temp_out[k, i], cyc_out[k, i], energy_out[k, i] = temp, cycles, energy_kwh
        fleet.energy_kwh[i], fleet.cycles[i], fleet.battery_temp_c[i] = energy_kwh, cycles, temp
    # --- price, PCC, counters -----------------------------------------------------------------
    tariff = fleet._tariff
    period_price = np.asarray([tariff.prices_per_kwh[p] for p in periods])[
        col["period"][:, 0].astype(int)
    ][:, None]
    price = np.maximum(period_price * (1.0 + price_dev), 0.0)
    daylight_clear = np.minimum(col["ghi"] / 800.0, 1.0)
    uplift = np.where(col["period"] == 2.0, gp.carbon_peak_uplift, 0.0)
    carbon = np.maximum(
        gp.carbon_base_g_per_kwh * (1.0 - gp.carbon_solar_dip * daylight_clear)
        * (1.0 + uplift) * (1.0 + 0.03 * z(_N_CARBON)),
        0.0,
    )  # fmt: skip
    pcc = total - generation + p_bat
    cnt = fleet.counters

    def counter(name: str, x: FloatArray) -> FloatArray:
        path = np.cumsum(np.concatenate([cnt[name][None, :], x * dt_h]), axis=0)[1:]
        cnt[name] = path[-1].copy()
        return path

    fleet.last_ts = times[-1]
    return {
        "ts_epoch_s": col["now_s"][:, 0], "tou_period_index": col["period"][:, 0],
        "clear_sky_w_m2": col["poa"][:, 0], "outdoor_temp_c": t_out, "irradiance_w_m2": poa,
        "cloud_cover": cloud, "cell_temp_c": cell, "pv_available_kw": available,
        "pv_generation_kw": generation, "pv_limit_kw": np.full((n_t, n), np.nan),
        "pv_energy_kwh": counter("pv", generation), "battery_p_kw": p_bat,
        "battery_soc_pct": soc_out, "battery_soh_pct": soh_out, "battery_capacity_kwh": cap_out,
        "battery_max_charge_kw": fleet.battery_max_charge_kw[None, :] * taper_c_out,
        "battery_max_discharge_kw": fleet.battery_max_discharge_kw[None, :] * taper_d_out,
        "battery_voltage_v": volt_out, "battery_temp_c": temp_out, "battery_cycles": cyc_out,
        "battery_energy_kwh": energy_out, "base_kw": base, "hvac_kw": hvac,
        "appliance_kw": appliance, "lighting_kw": lighting, "cooking_kw": cooking, "ev_kw": ev,
        "ev_plugged": ev_plugged, "ev_need_kwh": ev_need, "ev_energy_kwh": counter("ev", ev),
        "load1_kw": load1, "load2_kw": load2, "load1_on": col["sw1"] + zeros,
        "load2_on": col["sw2"] + zeros, "load_total_kw": total,
        "load_energy_kwh": counter("load", total), "price_per_kwh": price,
        "carbon_g_per_kwh": carbon, "pcc_p_kw": pcc,
        "pcc_q_kvar": 0.33 * total - 0.1 * generation,
        "pcc_voltage_v": 230.0 * (1.0 - 0.003 * pcc / scale) + 0.5 * z(_N_V),
        "pcc_frequency_hz": 50.0 + 0.01 * z(_N_F),
        "import_kwh": counter("import", np.maximum(pcc, 0.0)),
        "export_kwh": counter("export", np.maximum(-pcc, 0.0)),
    }  # fmt: skip


def step_times(start: datetime, end: datetime, dt_s: float) -> list[datetime]:
    """The step instants of [start, end) every dt_s seconds."""
    out = []
    t = start
    step = timedelta(seconds=dt_s)
    while t < end:
        out.append(t)
        t += step
    return out
