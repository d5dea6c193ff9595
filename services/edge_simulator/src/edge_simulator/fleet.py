"""The physics of N sites, vectorised: one `Fleet.step(now, dt_s, overrides)` advances all of them.

Pure: no bus, no clock (time is an argument), no environment. State lives in numpy arrays, one
entry per site; each site's randomness comes from `noise` keyed by its seed, so a site's data
does not depend on how many other sites run. Signs are load-referenced (see derbus.messages):
battery + charging, PV generation positive, PCC = load - pv + battery (+ import).

A step covers the interval (now - dt_s, now]: powers are the interval's averages, energies and
SoC the values at `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from derbus.messages import TouPeriod
from edge_simulator import noise, physics
from edge_simulator.noise import FloatArray
from edge_simulator.physics import (
    N_BASE,
    N_CARBON,
    N_CLOUD,
    N_F,
    N_PRICE,
    N_TEMP,
    N_V,
    S_COOK,
    S_EV_ARR,
    S_EV_DEP,
    S_EV_E,
    S_EV_GO,
    S_SIZE,
    STEP_STREAMS,
    U_APP_KW,
    U_APP_LEN,
    U_APP_START,
)
from edge_simulator.replay import Profile
from edge_simulator.sim_config import SimConfig
from edge_simulator.sky import SkyModel


@dataclass(frozen=True)
class Location:
    """Where the sites are (all sites of a fleet share it)."""

    latitude: float = 41.39
    longitude: float = 2.17
    timezone: str = "Europe/Madrid"


def site_ids(n_sites: int, single_id: str = "site-1", first: int | None = None) -> list[str]:
    """Site ids: the configured id for one site, `site-0001` … for more; a shard of a fleet
    (`first` = the index of its first site) is numbered from `site-<first + 1>`."""
    if n_sites == 1 and first is None:
        return [single_id]
    start = first or 0
    return [f"site-{i + 1:04d}" for i in range(start, start + n_sites)]


@dataclass
class Overrides:
    """Setpoints applied in one step, per site; NaN means none (the device's own behaviour).

    Attributes:
        battery_p_kw: battery power request, kW, + charge / - discharge.
        pv_limit_kw: PV output limit, kW.
        load1_on: relay of load1 (1 on / 0 off).
        load2_on: relay of load2.
        ev_on: EV charger enabled (1) or paused (0).
    """

    battery_p_kw: FloatArray
    pv_limit_kw: FloatArray
    load1_on: FloatArray
    load2_on: FloatArray
    ev_on: FloatArray

    @classmethod
    def none(cls, n_sites: int) -> Overrides:
        """No setpoint anywhere."""
        return cls(*(np.full(n_sites, np.nan) for _ in range(5)))


@dataclass
class StepResult:
    """Everything one step computed, one array entry per site (see the module docstring)."""

    ts: datetime
    dt_s: float
    tou_period: TouPeriod
    outdoor_temp_c: FloatArray
    clear_sky_w_m2: float
    irradiance_w_m2: FloatArray
    cloud_cover: FloatArray
    cell_temp_c: FloatArray
    pv_available_kw: FloatArray
    pv_generation_kw: FloatArray
    pv_limit_kw: FloatArray
    pv_energy_kwh: FloatArray
    battery_p_kw: FloatArray
    battery_soc_pct: FloatArray
    battery_soh_pct: FloatArray
    battery_capacity_kwh: FloatArray
    battery_max_charge_kw: FloatArray
    battery_max_discharge_kw: FloatArray
    battery_voltage_v: FloatArray
    battery_temp_c: FloatArray
    battery_cycles: FloatArray
    battery_energy_kwh: FloatArray
    base_kw: FloatArray
    hvac_kw: FloatArray
    appliance_kw: FloatArray
    lighting_kw: FloatArray
    cooking_kw: FloatArray
    ev_kw: FloatArray
    ev_plugged: FloatArray
    ev_need_kwh: FloatArray
    ev_energy_kwh: FloatArray
    load1_kw: FloatArray
    load2_kw: FloatArray
    load1_on: FloatArray
    load2_on: FloatArray
    load_total_kw: FloatArray
    load_energy_kwh: FloatArray
    price_per_kwh: FloatArray
    feed_in_per_kwh: float
    demand_charge_per_kw: float
    carbon_g_per_kwh: FloatArray
    pcc_p_kw: FloatArray
    pcc_q_kvar: FloatArray
    pcc_voltage_v: FloatArray
    pcc_frequency_hz: FloatArray
    import_kwh: FloatArray
    export_kwh: FloatArray


@dataclass
class Fleet:
    """N simulated sites sharing a configuration and a location, each with its own seed.

    Args:
        config: the physical models' configuration.
        location: latitude, longitude and time zone of the sites.
        n_sites: how many sites.
        seed: run seed; site i's randomness depends only on (seed, i).
        start: the simulation start (battery age and the first step).
        site_id: id of a single site (ignored for n_sites > 1).
        load_profile: replayed per-unit load (else the synthetic home load).
        pv_profile: replayed per-unit PV (else pvlib + clouds).
        first_site: this fleet is the shard of a larger one starting at that site index: its
            sites are exactly those sites of the larger fleet (ids, seeds, all their values).
    """

    config: SimConfig
    location: Location
    n_sites: int
    seed: int
    start: datetime
    site_id: str = "site-1"
    load_profile: Profile | None = None
    pv_profile: Profile | None = None
    first_site: int | None = None
    ids: list[str] = field(init=False)
    sky: SkyModel = field(init=False)

    def __post_init__(self) -> None:
        if self.n_sites < 1:
            raise ValueError("n_sites must be >= 1")
        cfg = self.config
        n = self.n_sites
        self.ids = site_ids(n, self.site_id, self.first_site)
        self.index = {sid: i for i, sid in enumerate(self.ids)}
        self.tz = ZoneInfo(self.location.timezone)
        self.tariff = cfg.grid_price.tariff.model_copy(update={"timezone": self.location.timezone})
        self.keys = noise.site_keys(self.seed, n, self.first_site or 0)
        u = noise.uniform(self.keys, 0, S_SIZE)
        self.scale: FloatArray = 1.0 + cfg.size_spread * (2.0 * u - 1.0)
        self.sky = SkyModel(
            self.location.latitude,
            self.location.longitude,
            cfg.solar.altitude_m,
            cfg.solar.tilt_deg,
            cfg.solar.azimuth_deg,
            cfg.solar.linke_turbidity,
        )
        b = cfg.battery
        self.pv_capacity_kw: FloatArray = cfg.solar.capacity_kw * self.scale
        self.battery_capacity_kwh: FloatArray = b.capacity_kwh * self.scale
        self.battery_max_charge_kw: FloatArray = b.max_charge_kw * self.scale
        self.battery_max_discharge_kw: FloatArray = b.max_discharge_kw * self.scale
        cap_now = self.battery_capacity_kwh * b.initial_soh_pct / 100.0
        self.energy_kwh: FloatArray = cap_now * b.initial_soc_pct / 100.0
        self.cycles: FloatArray = np.zeros(n)
        self.battery_temp_c: FloatArray = np.full(n, b.room_temp_c)
        self.cloud: FloatArray = np.full(n, min(cfg.solar.cloud_mean, cfg.solar.cloud_max))
        self.temp_dev_c: FloatArray = np.zeros(n)
        self.price_dev: FloatArray = np.zeros(n)
        self.appliance_left_s: FloatArray = np.zeros(n)
        self.appliance_p_kw: FloatArray = np.zeros(n)
        self.ev_session: FloatArray = np.full(n, -1.0)
        self.ev_delivered_kwh: FloatArray = np.zeros(n)
        self.counters = {name: np.zeros(n) for name in ("pv", "load", "ev", "import", "export")}
        self.last_ts = self.start
        self._daily: dict[int, tuple[FloatArray, ...]] = {}

    # --- helpers -------------------------------------------------------------------------------
    def day_draws(self, day: int, midnight_s: float) -> tuple[FloatArray, ...]:
        """The per-day draws of `day` (cached): EV plan and cooking factor."""
        got = self._daily.get(day)
        if got is None:
            cook = 0.3 + 0.9 * noise.uniform(self.keys, day, S_COOK)
            got = self._daily[day] = (*self._ev_plan(day, midnight_s), cook)
            if len(self._daily) > 4:
                del self._daily[min(self._daily)]
        return got

    def _ev_plan(self, day: int, midnight_s: float) -> tuple[FloatArray, ...]:
        """Arrival, departure (epoch s), whether it happens and energy for the session of `day`."""
        ev = self.config.ev
        z_arr = noise.normal(self.keys, day, S_EV_ARR)
        z_dep = noise.normal(self.keys, day, S_EV_DEP)
        arr_h = np.clip(ev.arrival_hour + ev.time_std_h * z_arr, 12.0, 23.99)
        dep_h = np.clip(ev.departure_hour + ev.time_std_h * z_dep, 0.0, 12.0)
        occurs = (noise.uniform(self.keys, day, S_EV_GO) < ev.session_probability).astype(float)
        energy = np.clip(
            ev.energy_mean_kwh + ev.energy_std_kwh * noise.normal(self.keys, day, S_EV_E),
            0.5,
            0.9 * ev.battery_kwh,
        )
        return midnight_s + arr_h * 3600, midnight_s + (24 + dep_h) * 3600, occurs, energy

    def reset_clock(self, when: datetime) -> None:
        """Set the instant the next step's interval starts from (no physics)."""
        self.last_ts = when

    # --- the step ----------------------------------------------------------------------------
    def step(
        self,
        now: datetime,
        dt_s: float | None = None,
        ovr: Overrides | None = None,
        extra_load_kw: FloatArray | None = None,
    ) -> StepResult:
        """Advance every site to `now` over `dt_s` seconds (default: since the last step).

        Args:
            now: aware instant the step ends at.
            dt_s: interval length, s (>= 0); None = time since the previous step.
            ovr: setpoints to apply (None = none).
            extra_load_kw: load outside the site model per site, kW (the OCPP charge points),
                added to the site's load and so to its PCC power (None = none).
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if dt_s is None:
            dt_s = max(0.0, (now - self.last_ts).total_seconds())
        if dt_s < 0:
            raise ValueError("dt_s must be >= 0")
        self.last_ts = now
        cfg = self.config
        n = self.n_sites
        ovr = ovr or Overrides.none(n)
        dt_h = dt_s / 3600.0
        scale = self.scale
        cal = physics.instant(now, self.tz, cfg, self.location.latitude, self.tariff, self.start)
        u = noise.uniform_block(self.keys, cal.counter, STEP_STREAMS)

        def z(k: int) -> FloatArray:
            return noise.box_muller(u[2 * k], u[2 * k + 1])

        day = cal.day
        arr_t, _, occ_t, e_t, day_factor = self.day_draws(day, cal.midnight_s)

        def ou(
            x: FloatArray, mean: float, reversion_per_h: float, vol: float, k: int
        ) -> FloatArray:
            if dt_h <= 0:
                return x
            return physics.ou_step(x, mean, physics.ou_params(reversion_per_h, vol, dt_h), z(k))

        # weather ---------------------------------------------------------------------------
        w = cfg.weather
        self.temp_dev_c = ou(self.temp_dev_c, 0.0, 0.5, w.noise_c, N_TEMP)
        t_out = w.annual_mean_c + cal.seasonal_c + cal.daily_c + self.temp_dev_c

        # solar -----------------------------------------------------------------------------
        s = cfg.solar
        clear = self.sky.at(now)
        self.cloud = np.clip(
            ou(self.cloud, s.cloud_mean, s.cloud_reversion_per_h, s.cloud_volatility, N_CLOUD),
            0.0,
            s.cloud_max,
        )
        pv_unit = None
        if self.pv_profile is not None:
            pv_unit = self.pv_profile.at(now, self.location.timezone)
        sun = physics.solar(
            s, clear.poa_w_m2, self.cloud, t_out, scale, self.pv_capacity_kw, pv_unit
        )
        available = sun.available_kw
        limit = np.where(np.isnan(ovr.pv_limit_kw), np.inf, np.maximum(ovr.pv_limit_kw, 0.0))
        generation = np.minimum(available, limit)

        # home load -------------------------------------------------------------------------
        h = cfg.home_load
        if self.load_profile is not None:
            base = self.load_profile.at(now, self.location.timezone) * (
                cfg.replay.load_peak_kw * scale
            )
            hvac = appliance = lighting = cooking = np.zeros(n)
        else:
            base = physics.base_load_kw(h, scale, z(N_BASE))
            hvac = physics.hvac_kw(h, t_out, cal.night, scale)
            p_start = physics.appliance_start_probability(h, cal.activity, dt_h)
            starts = (self.appliance_left_s <= 0) & (u[U_APP_START] < p_start)
            self.appliance_left_s = np.where(
                starts,
                h.appliance_duration_min * 60 * (0.5 + u[U_APP_LEN]),
                self.appliance_left_s,
            )
            self.appliance_p_kw = np.where(
                starts,
                h.appliance_kw * scale * (0.6 + 0.8 * u[U_APP_KW]),
                self.appliance_p_kw,
            )
            appliance = np.where(self.appliance_left_s > 0, self.appliance_p_kw, 0.0)
            self.appliance_left_s = np.maximum(self.appliance_left_s - dt_s, 0.0)
            lighting = physics.lighting_kw(
                h, clear.ghi_w_m2, sun.clearness, cal.lighting_use, scale
            )
            cooking = physics.cooking_kw(h, scale, day_factor, cal.cooking_bumps)

        # EV: sessions are a pure function of (site, local day); the state is what was delivered
        ev_cfg = cfg.ev
        if ev_cfg.enabled:
            yesterday = self.day_draws(day - 1, cal.midnight_s - 86400.0)
            session, energy = physics.ev_sessions(
                float(day), cal.now_s, (arr_t, _, occ_t, e_t), yesterday
            )
            self.ev_delivered_kwh = np.where(session != self.ev_session, 0.0, self.ev_delivered_kwh)
            self.ev_session = session
            plugged = session >= 0
            need = np.maximum(energy - self.ev_delivered_kwh, 0.0)
            enabled = np.isnan(ovr.ev_on) | (ovr.ev_on >= 0.5)
            charger = ev_cfg.charger_kw * scale
            cap = charger if dt_h <= 0 else np.minimum(charger, need / max(dt_h, 1e-12))
            ev = np.where(plugged & enabled & (need > 1e-9), cap, 0.0)
            self.ev_delivered_kwh = self.ev_delivered_kwh + ev * dt_h
            ev_need = np.maximum(energy - self.ev_delivered_kwh, 0.0)
            ev_plugged = plugged.astype(float)
        else:
            ev = ev_need = ev_plugged = np.zeros(n)

        sw1, sw2 = cfg.switchable
        own1, own2 = cal.switch_on
        on1 = np.where(np.isnan(ovr.load1_on), own1, (ovr.load1_on >= 0.5).astype(float))
        on2 = np.where(np.isnan(ovr.load2_on), own2, (ovr.load2_on >= 0.5).astype(float))
        load1 = on1 * sw1.p_kw * scale
        load2 = on2 * sw2.p_kw * scale
        total = base + hvac + appliance + lighting + cooking + ev + load1 + load2
        if extra_load_kw is not None:
            total = total + extra_load_kw

        # battery ----------------------------------------------------------------------------
        b = cfg.battery
        soh = np.clip(
            b.initial_soh_pct
            - b.cycle_fade_pct * self.cycles
            - b.calendar_fade_pct_per_year * cal.age_years,
            1.0,
            100.0,
        )
        cap_now = self.battery_capacity_kwh * soh / 100.0
        e_min = cap_now * b.min_soc_pct / 100.0
        e_max = cap_now * b.max_soc_pct / 100.0
        e = np.minimum(self.energy_kwh, cap_now)  # capacity fade takes the energy above it
        soc = e / cap_now * 100.0
        if b.taper_band_pct > 0:
            taper_c = np.clip((b.max_soc_pct - soc) / b.taper_band_pct, b.taper_min_fraction, 1.0)
            taper_d = np.clip((soc - b.min_soc_pct) / b.taper_band_pct, b.taper_min_fraction, 1.0)
        else:
            taper_c = taper_d = np.ones(n)
        eta_c, eta_d = b.charge_efficiency, b.discharge_efficiency
        ch_lim = np.where(e >= e_max - 1e-9, 0.0, self.battery_max_charge_kw * taper_c)
        dis_lim = np.where(e <= e_min + 1e-9, 0.0, self.battery_max_discharge_kw * taper_d)
        if dt_h > 0:
            ch_lim = np.minimum(ch_lim, np.maximum(e_max - e, 0.0) / (eta_c * dt_h))
            dis_lim = np.minimum(dis_lim, np.maximum(e - e_min, 0.0) * eta_d / dt_h)
        default = generation - total if b.self_consumption else np.zeros(n)
        request = np.where(np.isnan(ovr.battery_p_kw), default, ovr.battery_p_kw)
        p_bat = np.clip(request, -dis_lim, ch_lim)
        stored = np.where(p_bat > 0, p_bat * eta_c, p_bat / eta_d)  # DC kW into the cells
        self.energy_kwh = np.clip(e + stored * dt_h, 0.0, cap_now)
        self.cycles = self.cycles + np.abs(stored) * dt_h / (2.0 * self.battery_capacity_kwh)
        losses_kw = np.abs(p_bat - stored)
        decay = 1.0 - math.exp(-dt_s / b.thermal_time_constant_s)
        self.battery_temp_c = self.battery_temp_c + decay * (
            b.room_temp_c + b.thermal_resistance_c_per_kw * losses_kw - self.battery_temp_c
        )
        soc_now = self.energy_kwh / cap_now * 100.0
        voltage = physics.battery_voltage_v(b, soc_now, stored)

        # price ------------------------------------------------------------------------------
        gp = cfg.grid_price
        period = cal.period
        self.price_dev = ou(self.price_dev, 0.0, gp.reversion_per_h, gp.volatility, N_PRICE)
        price = physics.price_per_kwh(self.tariff.prices_per_kwh[period], self.price_dev)
        peak = float(period == "peak")
        carbon = physics.carbon_g_per_kwh(gp, clear.ghi_w_m2, peak, z(N_CARBON))

        # point of common coupling ------------------------------------------------------------
        pcc = physics.grid_point(total, generation, p_bat, scale, z(N_V), z(N_F))
        c = self.counters
        c["pv"] = c["pv"] + generation * dt_h
        c["load"] = c["load"] + total * dt_h
        c["ev"] = c["ev"] + ev * dt_h
        c["import"] = c["import"] + np.maximum(pcc.p_kw, 0.0) * dt_h
        c["export"] = c["export"] + np.maximum(-pcc.p_kw, 0.0) * dt_h

        return StepResult(
            ts=now,
            dt_s=dt_s,
            tou_period=period,
            outdoor_temp_c=t_out,
            clear_sky_w_m2=clear.poa_w_m2,
            irradiance_w_m2=sun.poa_w_m2,
            cloud_cover=self.cloud,
            cell_temp_c=sun.cell_temp_c,
            pv_available_kw=available,
            pv_generation_kw=generation,
            pv_limit_kw=np.where(np.isinf(limit), np.nan, limit),
            pv_energy_kwh=c["pv"],
            battery_p_kw=p_bat,
            battery_soc_pct=soc_now,
            battery_soh_pct=soh,
            battery_capacity_kwh=cap_now,
            battery_max_charge_kw=self.battery_max_charge_kw * taper_c,
            battery_max_discharge_kw=self.battery_max_discharge_kw * taper_d,
            battery_voltage_v=voltage,
            battery_temp_c=self.battery_temp_c,
            battery_cycles=self.cycles,
            battery_energy_kwh=self.energy_kwh,
            base_kw=np.asarray(base, dtype=float),
            hvac_kw=hvac,
            appliance_kw=appliance,
            lighting_kw=lighting,
            cooking_kw=cooking,
            ev_kw=ev,
            ev_plugged=ev_plugged,
            ev_need_kwh=ev_need,
            ev_energy_kwh=c["ev"],
            load1_kw=load1,
            load2_kw=load2,
            load1_on=on1,
            load2_on=on2,
            load_total_kw=total,
            load_energy_kwh=c["load"],
            price_per_kwh=price,
            feed_in_per_kwh=self.tariff.feed_in_per_kwh,
            demand_charge_per_kw=self.tariff.demand_charge_per_kw,
            carbon_g_per_kwh=carbon,
            pcc_p_kw=pcc.p_kw,
            pcc_q_kvar=pcc.q_kvar,
            pcc_voltage_v=pcc.voltage_v,
            pcc_frequency_hz=pcc.frequency_hz,
            import_kwh=c["import"],
            export_kwh=c["export"],
        )


def run(fleet: Fleet, start: datetime, end: datetime, interval_s: float) -> list[StepResult]:
    """Step a fleet from `start` (exclusive) to `end` (inclusive) every `interval_s` seconds."""
    fleet.reset_clock(start)
    out = []
    t = start + timedelta(seconds=interval_s)
    while t <= end:
        out.append(fleet.step(t, interval_s))
        t += timedelta(seconds=interval_s)
    return out
