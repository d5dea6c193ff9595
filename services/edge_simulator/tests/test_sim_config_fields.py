"""Every configuration field changes the simulated output (one case per field), and bad files fail."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from derbus.errors import ConfigError
from derbus.tariff import Tariff
from edge_simulator.fleet import StepResult, run
from edge_simulator.service import build_fleet
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig, dump_sim_config, load_sim_config
from edge_simulator.sky import SkyModel
from edge_simulator.testing import T0

PROFILES = Path(__file__).resolve().parents[3] / "data" / "profiles" / "simbench_2016_15min.csv"
EXPENSIVE_TARIFF = Tariff(prices_per_kwh={"off_peak": 0.2, "shoulder": 0.3, "peak": 0.5})

CHANGES: dict[str, Any] = {
    "weather.annual_mean_c": 22.0,
    "weather.seasonal_amplitude_c": 2.0,
    "weather.daily_amplitude_c": 9.0,
    "weather.noise_c": 2.0,
    "solar.capacity_kw": 3.0,
    "solar.panel_area_m2": 20.0,
    "solar.panel_efficiency": 0.15,
    "solar.inverter_efficiency": 0.9,
    "solar.temp_coeff_per_c": -0.006,
    "solar.noct_c": 50.0,
    "solar.tilt_deg": 10.0,
    "solar.azimuth_deg": 120.0,
    "solar.altitude_m": 1500.0,
    "solar.linke_turbidity": 5.0,
    "solar.cloud_mean": 0.6,
    "solar.cloud_volatility": 0.4,
    "solar.cloud_reversion_per_h": 2.0,
    "solar.cloud_max": 0.2,
    "battery.capacity_kwh": 6.0,
    "battery.max_charge_kw": 2.0,
    "battery.max_discharge_kw": 2.0,
    "battery.round_trip_efficiency": 0.8,
    "battery.min_soc_pct": 30.0,
    "battery.max_soc_pct": 80.0,
    "battery.initial_soc_pct": 70.0,
    "battery.taper_band_pct": 25.0,
    "battery.taper_min_fraction": 0.5,
    "battery.cycle_fade_pct": 0.5,
    "battery.calendar_fade_pct_per_year": 5.0,
    "battery.initial_soh_pct": 90.0,
    "battery.nominal_voltage_v": 48.0,
    "battery.voltage_swing_pct": 20.0,
    "battery.internal_resistance_ohm": 0.5,
    "battery.thermal_time_constant_s": 600.0,
    "battery.thermal_resistance_c_per_kw": 40.0,
    "battery.room_temp_c": 30.0,
    "battery.self_consumption": False,
    "home_load.base_load_kw": 0.6,
    "home_load.base_noise": 0.3,
    "home_load.hvac_max_kw": 0.3,
    "home_load.hvac_kw_per_c": 0.5,
    "home_load.heating_setpoint_c": 23.0,
    "home_load.cooling_setpoint_c": 27.0,
    "home_load.night_setback_c": 0.0,
    "home_load.appliance_kw": 3.0,
    "home_load.appliance_rate_per_h": 1.0,
    "home_load.appliance_duration_min": 15.0,
    "home_load.lighting_kw": 0.6,
    "home_load.cooking_kw": 4.0,
    "home_load.cooking_hours": (12.0,),
    "ev.enabled": False,
    "ev.charger_kw": 3.7,
    "ev.battery_kwh": 8.0,
    "ev.arrival_hour": 14.0,
    "ev.departure_hour": 5.0,
    "ev.time_std_h": 0.0,
    "ev.energy_mean_kwh": 30.0,
    "ev.energy_std_kwh": 0.0,
    "ev.session_probability": 0.0,
    "switchable.p_kw": 3.0,
    "switchable.on_hours": ((12.0, 14.0),),
    "grid_price.tariff": EXPENSIVE_TARIFF.model_dump(),
    "grid_price.volatility": 0.5,
    "grid_price.reversion_per_h": 5.0,
    "grid_price.carbon_base_g_per_kwh": 400.0,
    "grid_price.carbon_solar_dip": 0.0,
    "grid_price.carbon_peak_uplift": 1.0,
    "replay.file": {"file": str(PROFILES), "load_column": "h0-a_load_pu"},
    "replay.load_column": {"file": str(PROFILES), "load_column": "g1-a_load_pu"},
    "replay.pv_column": {"file": str(PROFILES), "pv_column": "pv1_pv_pu"},
    "size_spread": 0.5,
}
EXEMPT = {
    "switchable.name": "a label for people; the device ids are load1 / load2",
    "replay.load_peak_kw": "only acts with a replayed load: test_replay_load_peak_scales",
}


def _all_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not Tariff:
            out.extend(_all_fields(kind, f"{name}."))
        elif name == "switchable":
            out.extend(f"switchable.{n}" for n in type(SimConfig().switchable[0]).model_fields)
        else:
            out.append(prefix + name)
    return out


def config_with(path: str, value: Any) -> SimConfig:
    data = SimConfig().model_dump()
    section, _, name = path.rpartition(".")
    if not section:
        data[name] = value
    elif section == "switchable":
        data["switchable"][0][name] = value
    elif isinstance(value, dict) and section == "replay":
        data["replay"].update(value)
    else:
        data[section][name] = value
    return SimConfig.model_validate(data)


_SKIES: dict[tuple[float, ...], SkyModel] = {}


def fingerprint(config: SimConfig) -> np.ndarray:
    fleet = build_fleet(Settings(), config, T0)
    s = config.solar
    key = (s.tilt_deg, s.azimuth_deg, s.altitude_m, s.linke_turbidity)
    fleet.sky = _SKIES.setdefault(key, fleet.sky)  # pvlib once per module plane (speed only)
    results: list[StepResult] = run(
        fleet, T0, T0 + timedelta(hours=24) - timedelta(seconds=900), 900
    )
    arrays = [
        getattr(r, f.name)
        for r in results
        for f in fields(r)
        if isinstance(getattr(r, f.name), np.ndarray)
    ]
    return np.concatenate(arrays)


@cache
def baseline() -> bytes:
    return fingerprint(SimConfig()).tobytes()


def test_the_table_covers_every_field() -> None:
    assert set(_all_fields(SimConfig)) == set(CHANGES) | set(EXEMPT)


@pytest.mark.parametrize("path", sorted(CHANGES))
def test_field_changes_the_output(path: str) -> None:
    changed = fingerprint(config_with(path, CHANGES[path]))
    assert changed.tobytes() != baseline(), f"{path} has no effect"


def test_replay_load_peak_scales() -> None:
    replay = {"file": str(PROFILES), "load_column": "h0-a_load_pu"}
    a = config_with("replay.file", replay)
    b = config_with("replay.file", {**replay, "load_peak_kw": 10.0})
    fa, fb = (build_fleet(Settings(), c, T0) for c in (a, b))
    ra, rb = fa.step(T0 + timedelta(hours=10), 60.0), fb.step(T0 + timedelta(hours=10), 60.0)
    assert rb.base_kw[0] == pytest.approx(2 * ra.base_kw[0])
    assert ra.base_kw[0] > 0


def test_replay_interpolates_the_profile_in_local_time() -> None:
    config = config_with("replay.pv_column", {"file": str(PROFILES), "pv_column": "pv1_pv_pu"})
    fleet = build_fleet(Settings(), config, T0)
    assert fleet.pv_profile is not None
    # 2016-06-22 12:00 and 12:15 local are rows of the file; 10:07:30 UTC is halfway (CEST)
    import pandas as pd

    frame = pd.read_csv(PROFILES, index_col="time")
    a, b = (
        frame.loc["2016-06-22T12:00:00", "pv1_pv_pu"],
        frame.loc["2016-06-22T12:15:00", "pv1_pv_pu"],
    )
    got = fleet.pv_profile.at(T0.replace(hour=10, minute=7, second=30), "Europe/Madrid")
    assert got == pytest.approx((a + b) / 2)


def test_config_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    dump_sim_config(SimConfig(), path)
    assert load_sim_config(path) == SimConfig()
    as_json = tmp_path / "sim.json"
    dump_sim_config(config_with("battery.capacity_kwh", 7.0), as_json)
    assert load_sim_config(as_json).battery.capacity_kwh == 7.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("battery:\n  capacity_kwh: 5\n  bogus: 1\n")
    with pytest.raises(ConfigError, match=r"battery\.bogus"):
        load_sim_config(bad)
    bad.write_text("battery:\n  min_soc_pct: 90\n  max_soc_pct: 50\n")
    with pytest.raises(ConfigError, match="min_soc_pct"):
        load_sim_config(bad)
    bad.write_text("solar:\n  capacity_kw: -1\n")
    with pytest.raises(ConfigError, match=r"solar\.capacity_kw"):
        load_sim_config(bad)
