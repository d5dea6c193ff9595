"""Simulation model configuration (the `--config` file): solar, battery, home load, EV, price."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from derbus.errors import ConfigError
from derbus.settings import describe_validation_error
from derbus.tariff import Tariff


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class WeatherConfig(_Config):
    """Outdoor temperature: annual mean, seasonal and daily swings (local solar time)."""

    annual_mean_c: float = Field(default=16.0, description="mean outdoor temperature, °C")
    seasonal_amplitude_c: float = Field(
        default=8.0, ge=0, description="half the summer-winter difference, °C"
    )
    daily_amplitude_c: float = Field(
        default=5.0, ge=0, description="half the day-night difference (peak 15:00), °C"
    )
    noise_c: float = Field(default=0.5, ge=0, description="std of the random deviation, °C")


class SolarConfig(_Config):
    """PV array and inverter. Irradiance from pvlib (solar position + Ineichen clear sky)."""

    capacity_kw: float = Field(default=5.0, gt=0, description="inverter AC capacity, kW")
    panel_area_m2: float = Field(default=30.0, gt=0, description="module area, m²")
    panel_efficiency: float = Field(
        default=0.20, gt=0, le=0.5, description="module efficiency at 25 °C (fraction)"
    )
    inverter_efficiency: float = Field(default=0.96, gt=0, le=1, description="DC→AC (fraction)")
    temp_coeff_per_c: float = Field(
        default=-0.004, le=0, description="power change per °C of cell above 25 °C (fraction/°C)"
    )
    noct_c: float = Field(default=45.0, ge=20, le=80, description="nominal operating cell temp")
    tilt_deg: float = Field(default=30.0, ge=0, le=90, description="module tilt, degrees")
    azimuth_deg: float = Field(
        default=180.0, ge=0, lt=360, description="module azimuth, degrees from north (180 = S)"
    )
    altitude_m: float = Field(default=12.0, ge=-400, le=9000, description="site altitude, m")
    linke_turbidity: float = Field(
        default=3.0, gt=0, le=10, description="Linke turbidity for the Ineichen clear sky"
    )
    cloud_mean: float = Field(default=0.3, ge=0, le=1, description="long-run cloud cover (0..1)")
    cloud_volatility: float = Field(
        default=0.15, ge=0, description="cloud random-walk std per sqrt(hour)"
    )
    cloud_reversion_per_h: float = Field(
        default=0.3, ge=0, description="pull of the cloud walk to its mean, 1/h"
    )
    cloud_max: float = Field(default=1.0, ge=0, le=1, description="upper bound of cloud cover")


class BatteryConfig(_Config):
    """Battery: capacity, power limits, split efficiencies, SoC window, taper, ageing, thermal."""

    capacity_kwh: float = Field(default=10.0, gt=0, description="usable capacity when new, kWh")
    max_charge_kw: float = Field(default=5.0, gt=0, description="charge power limit, kW")
    max_discharge_kw: float = Field(default=5.0, gt=0, description="discharge power limit, kW")
    round_trip_efficiency: float = Field(
        default=0.90, gt=0, le=1, description="AC-AC, split evenly: sqrt on charge and discharge"
    )
    min_soc_pct: float = Field(default=10.0, ge=0, lt=100, description="lower SoC limit, %")
    max_soc_pct: float = Field(default=95.0, gt=0, le=100, description="upper SoC limit, %")
    initial_soc_pct: float = Field(default=50.0, ge=0, le=100, description="SoC at start, %")
    taper_band_pct: float = Field(
        default=10.0, ge=0, le=50, description="SoC band next to a limit where power tapers, %"
    )
    taper_min_fraction: float = Field(
        default=0.1, ge=0, le=1, description="power limit fraction left at the SoC limit"
    )
    cycle_fade_pct: float = Field(
        default=0.004, ge=0, description="state-of-health loss per equivalent full cycle, %"
    )
    calendar_fade_pct_per_year: float = Field(
        default=1.0, ge=0, description="state-of-health loss per year of age, %"
    )
    initial_soh_pct: float = Field(default=100.0, gt=0, le=100, description="health at start, %")
    nominal_voltage_v: float = Field(default=400.0, gt=0, description="nominal DC voltage, V")
    voltage_swing_pct: float = Field(
        default=10.0, ge=0, le=50, description="OCV span from empty to full, ± % of nominal / 2"
    )
    internal_resistance_ohm: float = Field(default=0.1, ge=0, description="DC resistance, Ω")
    thermal_time_constant_s: float = Field(default=3600.0, gt=0, description="cell heating τ, s")
    thermal_resistance_c_per_kw: float = Field(
        default=15.0, ge=0, description="temperature rise per kW of losses, °C/kW"
    )
    room_temp_c: float = Field(default=20.0, description="temperature of the battery's room, °C")
    self_consumption: bool = Field(
        default=True,
        description="without a setpoint: charge from PV surplus, discharge to cover load",
    )

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.min_soc_pct >= self.max_soc_pct:
            raise ValueError("battery.min_soc_pct must be below battery.max_soc_pct")
        return self

    @property
    def charge_efficiency(self) -> float:
        """One-way charge efficiency (the square root of the round trip)."""
        return float(self.round_trip_efficiency**0.5)

    @property
    def discharge_efficiency(self) -> float:
        """One-way discharge efficiency (the square root of the round trip)."""
        return float(self.round_trip_efficiency**0.5)


class HomeLoadConfig(_Config):
    """Home load: base, HVAC from outdoor temperature, appliances, lighting, cooking."""

    base_load_kw: float = Field(default=0.3, ge=0, description="always-on consumption, kW")
    base_noise: float = Field(default=0.1, ge=0, description="relative std of the base load")
    hvac_max_kw: float = Field(default=3.0, ge=0, description="HVAC electrical capacity, kW")
    hvac_kw_per_c: float = Field(
        default=0.25, ge=0, description="HVAC power per °C outside the comfort band, kW/°C"
    )
    heating_setpoint_c: float = Field(default=19.0, description="heat below this outdoor °C")
    cooling_setpoint_c: float = Field(default=24.0, description="cool above this outdoor °C")
    night_setback_c: float = Field(
        default=3.0, ge=0, description="comfort band widened at night (23:00-06:00), °C"
    )
    appliance_kw: float = Field(default=1.5, ge=0, description="typical appliance power, kW")
    appliance_rate_per_h: float = Field(
        default=0.25, ge=0, description="appliance starts per daytime hour"
    )
    appliance_duration_min: float = Field(default=60.0, gt=0, description="typical run time")
    lighting_kw: float = Field(default=0.3, ge=0, description="lighting when dark and awake, kW")
    cooking_kw: float = Field(default=2.0, ge=0, description="cooking peak power, kW")
    cooking_hours: tuple[float, ...] = Field(
        default=(7.5, 13.5, 20.5), description="local hours of the cooking peaks"
    )

    @model_validator(mode="after")
    def _band(self) -> Self:
        if self.heating_setpoint_c >= self.cooling_setpoint_c:
            raise ValueError("home_load.heating_setpoint_c must be below cooling_setpoint_c")
        return self


class EvConfig(_Config):
    """EV charging sessions: arrival, departure, energy needed, charger power."""

    enabled: bool = Field(default=True, description="the site has an EV charger")
    charger_kw: float = Field(default=7.4, gt=0, description="charger power, kW")
    battery_kwh: float = Field(default=60.0, gt=0, description="EV battery size, kWh")
    arrival_hour: float = Field(default=18.5, ge=0, lt=24, description="mean local arrival hour")
    departure_hour: float = Field(
        default=7.5, ge=0, lt=24, description="mean local departure hour (next morning)"
    )
    time_std_h: float = Field(default=1.0, ge=0, description="std of arrival/departure, h")
    energy_mean_kwh: float = Field(default=12.0, gt=0, description="mean energy per session")
    energy_std_kwh: float = Field(default=4.0, ge=0, description="std of energy per session")
    session_probability: float = Field(
        default=0.8, ge=0, le=1, description="chance the EV plugs in on a given evening"
    )

    @model_validator(mode="after")
    def _home_charging(self) -> Self:
        if self.arrival_hour < 12 or self.departure_hour > 12:
            raise ValueError(
                "ev.arrival_hour must be >= 12 and ev.departure_hour <= 12 (home charging:"
                " arrive in the afternoon or evening, leave the next morning)"
            )
        return self


class SwitchableLoadConfig(_Config):
    """A relay-switched load (water heater, pool pump…) with its own default schedule."""

    name: str = Field(default="water_heater", description="what the load is")
    p_kw: float = Field(default=2.0, gt=0, description="power when on, kW")
    on_hours: tuple[tuple[float, float], ...] = Field(
        default=((2.0, 5.0),), description="local [start, end) hour windows when on by default"
    )


def _default_switchables() -> tuple[SwitchableLoadConfig, SwitchableLoadConfig]:
    return (
        SwitchableLoadConfig(),
        SwitchableLoadConfig(name="pool_pump", p_kw=0.8, on_hours=((11.0, 15.0),)),
    )


class PriceConfig(_Config):
    """Grid price: the derbus time-of-use tariff plus mean-reverting volatility and carbon."""

    tariff: Tariff = Field(default_factory=Tariff, description="time-of-use tariff (derbus)")
    volatility: float = Field(
        default=0.1, ge=0, description="std of the relative price deviation per sqrt(hour)"
    )
    reversion_per_h: float = Field(default=1.0, ge=0, description="pull back to the tariff, 1/h")
    carbon_base_g_per_kwh: float = Field(default=250.0, ge=0, description="night carbon, g/kWh")
    carbon_solar_dip: float = Field(
        default=0.4, ge=0, le=1, description="fractional carbon drop at full daylight"
    )
    carbon_peak_uplift: float = Field(
        default=0.2, ge=0, description="fractional carbon rise in the peak period"
    )


class ReplayConfig(_Config):
    """Replay of CSV profile columns (per unit of annual peak) instead of the synthetic models."""

    file: Path | None = Field(default=None, description="CSV with a `time` column (local time)")
    load_column: str | None = Field(default=None, description="column driving the home load")
    pv_column: str | None = Field(default=None, description="column driving PV (× capacity_kw)")
    load_peak_kw: float = Field(
        default=5.0, gt=0, description="site load at 1.0 per unit (the profile's annual peak), kW"
    )

    @model_validator(mode="after")
    def _columns(self) -> Self:
        if self.file is None and (self.load_column or self.pv_column):
            raise ValueError("replay.file is required when replay.load_column/pv_column is set")
        if self.file is not None and not (self.load_column or self.pv_column):
            raise ValueError("replay.load_column or replay.pv_column is required with replay.file")
        return self


class SimConfig(_Config):
    """Everything the physical models need; loaded from `--config FILE` (YAML or JSON)."""

    weather: WeatherConfig = Field(default_factory=WeatherConfig)
    solar: SolarConfig = Field(default_factory=SolarConfig)
    battery: BatteryConfig = Field(default_factory=BatteryConfig)
    home_load: HomeLoadConfig = Field(default_factory=HomeLoadConfig)
    ev: EvConfig = Field(default_factory=EvConfig)
    switchable: tuple[SwitchableLoadConfig, SwitchableLoadConfig] = Field(
        default_factory=_default_switchables, description="devices load1 and load2"
    )
    grid_price: PriceConfig = Field(default_factory=PriceConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    size_spread: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="with many sites: each site's sizes scaled by a seeded factor in 1 ± spread",
    )


def load_sim_config(path: Path) -> SimConfig:
    """Read a YAML or JSON configuration file; unknown or invalid fields raise ConfigError."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    try:
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    try:
        return SimConfig.model_validate(data)
    except ValidationError as err:
        fields = tuple(".".join(str(p) for p in e["loc"]) for e in err.errors())
        raise ConfigError(f"config file {path}: {describe_validation_error(err)}", fields) from err


def dump_sim_config(config: SimConfig, path: Path) -> None:
    """Write a configuration file (YAML, or JSON for a `.json` path) that `load_sim_config` reads."""
    data = config.model_dump(mode="json")
    if path.suffix == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
