"""The REST bodies of edge_simulator (what its OpenAPI shows)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SiteRating(BaseModel):
    """A simulated site and its ratings."""

    site_id: str
    pv_capacity_kw: float
    battery_capacity_kwh: float
    battery_max_charge_kw: float
    battery_max_discharge_kw: float
    modbus_unit: int | None = Field(description="its Modbus unit id (None past 247 sites)")


class Sites(BaseModel):
    """The simulated sites and the simulated time of the last step."""

    sim_time: str | None = Field(description="ISO 8601, None before the first step")
    steps: int
    sites: list[SiteRating]


class Solar(BaseModel):
    generation_kw: float
    available_kw: float
    limit_kw: float | None = Field(description="curtailment limit in force, None without")
    irradiance_w_m2: float
    clear_sky_w_m2: float
    cloud_cover: float
    cell_temp_c: float
    energy_kwh: float


class Battery(BaseModel):
    power_kw: float
    soc_pct: float
    soh_pct: float
    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    voltage_v: float
    temp_c: float
    cycles: float


class HomeLoad(BaseModel):
    total_kw: float
    base_kw: float
    hvac_kw: float
    appliances_kw: float
    lighting_kw: float
    cooking_kw: float
    ev_kw: float
    ev_plugged: bool
    ev_energy_needed_kwh: float
    load1_kw: float
    load2_kw: float
    outdoor_temp_c: float


class GridPrice(BaseModel):
    price_per_kwh: float
    feed_in_per_kwh: float
    tou_period: str
    demand_charge_per_kw: float
    carbon_g_per_kwh: float


class SiteRecord(BaseModel):
    """The latest nested record of a site (the `--once` / `--historical` line)."""

    timestamp: str
    device_id: str
    solar: Solar
    battery: Battery
    home_load: HomeLoad
    grid_price: GridPrice
    net_grid_flow_kw: float = Field(description="PCC power, kW (import positive)")
