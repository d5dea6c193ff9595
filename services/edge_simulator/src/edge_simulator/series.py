"""Time-vectorised stepping for backfills: many equal steps of a fleet at once, no setpoints.

`Fleet.step` is vectorised over sites; a one-site backfill pays numpy's per-call overhead on
one-element arrays ~100 times a step. Here the random numbers, calendar, sky and the stateless
formulas of `physics` (the same functions `Fleet.step` calls) run on all steps at once (arrays
of shape (steps, sites)), and only the recursions (weather, cloud and price deviations,
appliance runs, EV delivery, the battery) run in a tight loop over plain floats. The result
equals stepping the fleet one step at a time (`tests/test_series.py` compares). The fleet's
state is carried over, so consecutive calls (chunks of days) continue each other.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

from edge_simulator import noise, physics
from edge_simulator.fleet import Fleet
from edge_simulator.noise import FloatArray
from edge_simulator.physics import OuParams


def ou_path(
    x0: float, mean: float, params: OuParams, z: list[float], lo: float = -math.inf,
    hi: float = math.inf,
) -> tuple[list[float], float]:  # fmt: skip
    """`physics.ou_step` over a noise path (optionally clipped to [lo, hi]): the path and its end."""
    out = []
    x = x0
    for zk in z:
        x = min(max(physics.ou_step(x, mean, params, zk), lo), hi)
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
    # --- per-step calendar, sky and day draws (the instants of `Fleet.step`) -------------------
    cals = [
        physics.instant(t, fleet.tz, cfg, loc.latitude, fleet.tariff, fleet.start) for t in times
    ]
    skies = [fleet.sky.at(t) for t in times]
    today, yesterday = [], []  # in step order: the fleet caches only the last few days' draws
    for c in cals:
        today.append(fleet.day_draws(c.day, c.midnight_s))
        ev_y = fleet.day_draws(c.day - 1, c.midnight_s - 86400.0) if ev_cfg.enabled else None
        yesterday.append(ev_y or today[-1])

    def col(values: list[float]) -> FloatArray:
        return np.asarray(values, dtype=float)[:, None]

    def draws(rows: list[tuple[FloatArray, ...]], k: int) -> FloatArray:
        return np.stack([row[k] for row in rows])

    now_s = col([c.now_s for c in cals])
    period = col([float(physics.TOU_PERIODS.index(c.period)) for c in cals])
    poa_clear = col([sky.poa_w_m2 for sky in skies])
    ghi = col([sky.ghi_w_m2 for sky in skies])
    u = noise.uniform_blocks(fleet.keys, [c.counter for c in cals], physics.STEP_STREAMS)

    def z(k: int) -> FloatArray:
        return noise.box_muller(u[:, 2 * k], u[:, 2 * k + 1])

    scale = fleet.scale[None, :]
    z_temp, z_cloud = z(physics.N_TEMP).T.tolist(), z(physics.N_CLOUD).T.tolist()
    z_price = z(physics.N_PRICE).T.tolist()
    # --- weather, clouds and price deviations: OU recursions per site ---------------------------
    temp_dev = np.empty((n_t, n))
    cloud = np.empty((n_t, n))
    price_dev = np.empty((n_t, n))
    p_temp = physics.ou_params(0.5, w.noise_c, dt_h)
    p_cloud = physics.ou_params(s.cloud_reversion_per_h, s.cloud_volatility, dt_h)
    p_price = physics.ou_params(gp.reversion_per_h, gp.volatility, dt_h)
    for i in range(n):
        temp_dev[:, i], fleet.temp_dev_c[i] = ou_path(fleet.temp_dev_c[i], 0.0, p_temp, z_temp[i])
        cloud[:, i], fleet.cloud[i] = ou_path(
            fleet.cloud[i], s.cloud_mean, p_cloud, z_cloud[i], 0.0, s.cloud_max
        )
        price_dev[:, i], fleet.price_dev[i] = ou_path(fleet.price_dev[i], 0.0, p_price, z_price[i])
    t_out = (
        w.annual_mean_c + col([c.seasonal_c for c in cals]) + col([c.daily_c for c in cals])
        + temp_dev
    )  # fmt: skip
    # --- solar --------------------------------------------------------------------------------
    pv_unit = None
    if fleet.pv_profile is not None:
        pv_unit = col([fleet.pv_profile.at(t, loc.timezone) for t in times])
    sun = physics.solar(s, poa_clear, cloud, t_out, scale, fleet.pv_capacity_kw[None, :], pv_unit)
    generation = available = sun.available_kw
    # --- home load ----------------------------------------------------------------------------
    zeros = np.zeros((n_t, n))
    if fleet.load_profile is not None:
        load_unit = col([fleet.load_profile.at(t, loc.timezone) for t in times])
        base = load_unit * (cfg.replay.load_peak_kw * scale)
        hvac = appliance = lighting = cooking = zeros
    else:
        base = physics.base_load_kw(h, scale, z(physics.N_BASE))
        hvac = physics.hvac_kw(h, t_out, col([c.night for c in cals]), scale)
        appliance = np.empty((n_t, n))
        p_start = [physics.appliance_start_probability(h, c.activity, dt_h) for c in cals]
        u_start = u[:, physics.U_APP_START].T.tolist()
        u_len = u[:, physics.U_APP_LEN].T.tolist()
        u_kw = u[:, physics.U_APP_KW].T.tolist()
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
        use = col([c.lighting_use for c in cals])
        lighting = physics.lighting_kw(h, ghi, sun.clearness, use, scale)
        cooking = physics.cooking_kw(
            h, scale, draws(today, 4), col([c.cooking_bumps for c in cals])
        )
    # --- EV sessions: which session (vectorised), then the delivery recursion per site ---------
    ev = np.zeros((n_t, n))
    ev_need = np.zeros((n_t, n))
    ev_plugged = np.zeros((n_t, n))
    if ev_cfg.enabled:
        sessions, energies = physics.ev_sessions(
            col([float(c.day) for c in cals]), now_s,
            tuple(draws(today, k) for k in range(4)),
            tuple(draws(yesterday, k) for k in range(4)),
        )  # fmt: skip
        for i in range(n):
            session, delivered = float(fleet.ev_session[i]), float(fleet.ev_delivered_kwh[i])
            charger = ev_cfg.charger_kw * float(fleet.scale[i])
            for k, (new, energy) in enumerate(
                zip(sessions[:, i].tolist(), energies[:, i].tolist(), strict=True)
            ):
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
    on1 = col([c.switch_on[0] for c in cals])
    on2 = col([c.switch_on[1] for c in cals])
    load1 = on1 * sw1.p_kw * scale
    load2 = on2 * sw2.p_kw * scale
    total = base + hvac + appliance + lighting + cooking + ev + load1 + load2
    # --- battery ------------------------------------------------------------------------------
    p_bat, soc_out, soh_out, cap_out = (np.empty((n_t, n)) for _ in range(4))
    taper_c_out, taper_d_out, volt_out, temp_out, cyc_out, energy_out = (
        np.empty((n_t, n)) for _ in range(6))  # fmt: skip
    eta_c, eta_d = b.charge_efficiency, b.discharge_efficiency
    decay_th = 1.0 - math.exp(-dt_s / b.thermal_time_constant_s)
    ages = [c.age_years for c in cals]
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
            p_bat[k, i], soc_out[k, i], soh_out[k, i], cap_out[k, i] = p, soc_now, soh, cap_now
            taper_c_out[k, i], taper_d_out[k, i] = tc, td
            volt_out[k, i] = physics.battery_voltage_v(b, soc_now, stored)
            temp_out[k, i], cyc_out[k, i], energy_out[k, i] = temp, cycles, energy_kwh
        fleet.energy_kwh[i], fleet.cycles[i], fleet.battery_temp_c[i] = energy_kwh, cycles, temp
    # --- price, PCC, counters -----------------------------------------------------------------
    period_price = np.asarray([fleet.tariff.prices_per_kwh[p] for p in physics.TOU_PERIODS])[
        period[:, 0].astype(int)
    ][:, None]
    price = physics.price_per_kwh(period_price, price_dev)
    carbon = physics.carbon_g_per_kwh(gp, ghi, (period == 2.0) * 1.0, z(physics.N_CARBON))
    pcc = physics.grid_point(total, generation, p_bat, scale, z(physics.N_V), z(physics.N_F))
    cnt = fleet.counters

    def counter(name: str, x: FloatArray) -> FloatArray:
        path = np.cumsum(np.concatenate([cnt[name][None, :], x * dt_h]), axis=0)[1:]
        cnt[name] = path[-1].copy()
        return path

    fleet.last_ts = times[-1]
    return {
        "ts_epoch_s": now_s[:, 0], "tou_period_index": period[:, 0],
        "clear_sky_w_m2": poa_clear[:, 0], "outdoor_temp_c": t_out,
        "irradiance_w_m2": sun.poa_w_m2, "cloud_cover": cloud, "cell_temp_c": sun.cell_temp_c,
        "pv_available_kw": available, "pv_generation_kw": generation,
        "pv_limit_kw": np.full((n_t, n), np.nan), "pv_energy_kwh": counter("pv", generation),
        "battery_p_kw": p_bat, "battery_soc_pct": soc_out, "battery_soh_pct": soh_out,
        "battery_capacity_kwh": cap_out,
        "battery_max_charge_kw": fleet.battery_max_charge_kw[None, :] * taper_c_out,
        "battery_max_discharge_kw": fleet.battery_max_discharge_kw[None, :] * taper_d_out,
        "battery_voltage_v": volt_out, "battery_temp_c": temp_out, "battery_cycles": cyc_out,
        "battery_energy_kwh": energy_out, "base_kw": base, "hvac_kw": hvac,
        "appliance_kw": appliance, "lighting_kw": lighting, "cooking_kw": cooking, "ev_kw": ev,
        "ev_plugged": ev_plugged, "ev_need_kwh": ev_need, "ev_energy_kwh": counter("ev", ev),
        "load1_kw": load1, "load2_kw": load2, "load1_on": on1 + zeros, "load2_on": on2 + zeros,
        "load_total_kw": total, "load_energy_kwh": counter("load", total),
        "price_per_kwh": price, "carbon_g_per_kwh": carbon, "pcc_p_kw": pcc.p_kw,
        "pcc_q_kvar": pcc.q_kvar, "pcc_voltage_v": pcc.voltage_v,
        "pcc_frequency_hz": pcc.frequency_hz,
        "import_kwh": counter("import", np.maximum(pcc.p_kw, 0.0)),
        "export_kwh": counter("export", np.maximum(-pcc.p_kw, 0.0)),
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
