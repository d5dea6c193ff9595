"""The services' defaults describe the same demo site: what `make run` plans for is what it runs."""

from __future__ import annotations

from typing import Any

import pytest

from derbus.launcher import demo_stations
from derbus.settings import SiteSettings
from edge_simulator.ocpp_cp import OcppSimSettings
from edge_simulator.sim_config import BatteryConfig
from ev_charging.settings import Settings as EvSettings
from peak_shaving.settings import Settings as PeakShavingSettings


def ps_default(name: str) -> Any:
    """peak_shaving's default of a setting (as declared: no PEAK_SHAVING_* environment applies)."""
    return PeakShavingSettings.model_fields[name].default


def test_peak_shaving_plans_for_the_simulated_battery() -> None:
    sim = BatteryConfig()
    assert ps_default("battery_capacity_kwh") == sim.capacity_kwh
    assert ps_default("battery_max_charge_kw") == sim.max_charge_kw
    assert ps_default("battery_max_discharge_kw") == sim.max_discharge_kw
    assert ps_default("charge_efficiency") == pytest.approx(sim.charge_efficiency, abs=1e-3)
    assert ps_default("discharge_efficiency") == pytest.approx(sim.discharge_efficiency, abs=1e-3)
    assert ps_default("soc_min_pct") == sim.min_soc_pct
    assert ps_default("soc_max_pct") == sim.max_soc_pct


def test_ev_charging_accepts_the_station_the_simulator_names() -> None:
    sim = OcppSimSettings.model_validate({})
    site = SiteSettings.model_fields["id"].default
    stations = EvSettings.model_validate({"stations": demo_stations({})}).stations
    station = stations[sim.station_prefix + site]
    assert station.site_id == site
    assert sim.id_token in station.id_tokens
