"""Settings of the load manager (`LOAD_MANAGER_*`): net-balancing loads and rule, job scheduler, files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, ServiceSettings
from derbus.tariff import Tariff
from derbus.topics import topic_level

Rule = Literal["hysteresis", "min_on_time", "time_to_consume"]
"""Net-balancing rule: thresholds with a dead band, one threshold plus a minimum on-time, or
projecting the end-of-period balance from the current power."""


class LoadConfig(BaseModel):
    """One switchable load driven by the net-balancing controller.

    Thresholds are on the settlement-period balance (produced − consumed, Wh): positive means
    surplus so far in the period.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Annotated[str, topic_level("device_id")] = Field(
        description="device id of the load (topic level), e.g. load1"
    )
    rated_kw: float = Field(gt=0, le=1000, description="power drawn when on, kW")
    priority: int = Field(default=1, ge=1, description="1 = served first with surplus")
    on_wh: float = Field(default=100.0, description="hysteresis/min-on: switch on at balance >=")
    off_wh: float = Field(default=-10.0, description="hysteresis: switch off at balance <=")
    min_on_s: float = Field(default=0.0, ge=0, description="once on, stay on at least this long")
    min_off_s: float = Field(default=0.0, ge=0, description="once off, stay off at least this long")
    allowed_hours: list[int] = Field(
        default_factory=lambda: list(range(24)),
        description="local hours (0-23) in which the load may be on",
    )

    @field_validator("allowed_hours")
    @classmethod
    def _hours(cls, value: list[int]) -> list[int]:
        bad = [h for h in value if not 0 <= h <= 23]
        if bad:
            raise ValueError(f"allowed_hours must be 0..23, got {bad}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _band(self) -> Self:
        if self.off_wh >= self.on_wh:
            raise ValueError(f"off_wh ({self.off_wh}) must be below on_wh ({self.on_wh})")
        return self


def _field_loads() -> list[LoadConfig]:
    return [
        LoadConfig(device_id="load1", rated_kw=1.5, priority=1, on_wh=100.0, off_wh=-10.0),
        LoadConfig(device_id="load2", rated_kw=2.0, priority=2, on_wh=170.0, off_wh=100.0),
    ]


class HouseConfig(BaseModel):
    """One house of the neighbourhood the job scheduler plans for (its id is its site id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    house_id: Annotated[str, topic_level("house_id")]
    connection_limit_kw: float = Field(default=9.2, gt=0, description="max import at the meter")
    devices: dict[str, str] = Field(
        default_factory=dict, description="device id -> type (washing_machine, ev, …)"
    )


class Settings(ServiceSettings):
    """Load manager settings (`LOAD_MANAGER_*`; nested values such as `LOAD_MANAGER_LOADS` are JSON)."""

    model_config = SettingsConfigDict(env_prefix="LOAD_MANAGER_", env_nested_delimiter="__")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "rule",
            "loads",
            "ttc_target_wh",
            "ttc_margin_wh",
            "ttc_surplus_tau_s",
            "min_on_time_rule_s",
            "job_cost_weight",
        }
    )

    api_port: ApiPort = 8107

    # --- net balancing -------------------------------------------------------------------------
    net_balancing_enabled: bool = Field(default=True, description="run the net-balancing loop")
    cycle_s: float = Field(default=10.0, gt=0, le=300, description="controller cycle, s")
    settlement_period_s: int = Field(
        default=3600, description="net-metering settlement period, s (3600 or 900, divides a day)"
    )
    rule: Rule = Field(default="time_to_consume", description="net-balancing rule")
    loads: list[LoadConfig] = Field(
        default_factory=_field_loads, description="switchable loads (JSON list)"
    )
    meter_device_id: Annotated[str, topic_level("device_id")] = Field(
        default="pcc", description="device id of the PCC meter"
    )
    pv_device_id: Annotated[str, topic_level("device_id")] = Field(
        default="pv", description="device id of the PV inverter"
    )
    min_on_time_rule_s: float = Field(
        default=600.0, ge=0, description="min_on_time rule: minimum on-time after switching on, s"
    )
    ttc_target_wh: float = Field(
        default=0.0, description="time_to_consume: balance to end each period at, Wh"
    )
    ttc_margin_wh: float = Field(
        default=10.0, ge=0, description="time_to_consume: dead band below the target, Wh"
    )
    ttc_surplus_tau_s: float = Field(
        default=60.0, ge=0, description="time_to_consume: smoothing of the free surplus, s"
    )
    meter_stale_s: float = Field(
        default=60.0, gt=0, description="no PCC reading for this long: loads off, degraded"
    )
    max_gap_s: float = Field(
        default=60.0, gt=0, description="longest gap between readings integrated at the last power"
    )
    setpoint_ttl_s: float = Field(
        default=60.0, gt=0, le=86_400, description="TTL of load setpoints (the relay watchdog), s"
    )
    refresh_margin_s: float = Field(
        default=20.0, ge=0, description="re-send a setpoint this long before it expires, s"
    )
    kpi_interval_s: float = Field(default=60.0, gt=0, description="live KPI publication, s")

    # --- deferrable jobs -----------------------------------------------------------------------
    jobs_enabled: bool = Field(default=True, description="run the deferrable-job scheduler")
    plan_step_s: int = Field(default=900, gt=0, le=3600, description="scheduling step, s")
    plan_horizon_steps: int = Field(default=96, ge=1, le=2000, description="horizon, steps")
    dispatch_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="how often job starts are checked, s"
    )
    replan_interval_s: float = Field(
        default=900.0, gt=0, description="re-plan at least this often (rolling horizon), s"
    )
    solver_time_limit_s: float = Field(default=20.0, gt=0, description="MILP time limit, s")
    solver_gap: float = Field(
        default=0.01, gt=0, lt=1, description="MILP relative optimality gap to stop at"
    )
    shared_pv: bool = Field(
        default=True, description="houses share their PV surplus (neighbourhood) or not"
    )
    house_limit_kw: float = Field(
        default=9.2, gt=0, description="connection limit of the default house, kW"
    )
    neighbourhood_limit_kw: float | None = Field(
        default=None, gt=0, description="limit of the neighbourhood (transformer) import, kW"
    )
    job_cost_weight: float = Field(
        default=1.0, ge=0, description="weight of energy cost against grid kWh in the objective"
    )
    peak_weight_per_kw: float = Field(
        default=0.05, ge=0, description="weight of the neighbourhood's peak import, per kW"
    )
    load_forecast_quantile: str | None = Field(
        default=None,
        description="load forecast quantile the job plan uses (e.g. p90 to keep connection"
        " limits on a high day); the forecast's values when absent or None",
    )
    pv_forecast_quantile: str | None = Field(
        default=None,
        description="PV forecast quantile the job plan uses (e.g. p10 to promise only likely"
        " PV); the forecast's values when absent or None",
    )
    tariff: Tariff = Field(default_factory=Tariff, description="import prices for the cost term")
    neighbourhood_file: Path | None = Field(
        default=None, description="CoSSMic-style neighbourhood XML (houses and devices)"
    )
    jobs_file: Path | None = Field(
        default=None, description="jobs CSV or XML imported at start-up (profiles beside it)"
    )

    @field_validator("settlement_period_s")
    @classmethod
    def _period(cls, value: int) -> int:
        if value < 60 or 86_400 % value:
            raise ValueError("settlement_period_s must be >= 60 and divide a day (3600, 900, …)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        ids = [load.device_id for load in self.loads]
        if len(set(ids)) != len(ids):
            raise ValueError(f"loads: duplicate device_id in {ids}")
        if self.refresh_margin_s + self.cycle_s >= self.setpoint_ttl_s:
            raise ValueError(
                "setpoint_ttl_s must exceed refresh_margin_s + cycle_s so setpoints are "
                "refreshed before they expire"
            )
        if self.plan_horizon_steps * self.plan_step_s > 7 * 86_400:
            raise ValueError("plan_horizon_steps * plan_step_s must be at most 7 days")
        return self
