"""Settings of the peak_shaving service (`PEAK_SHAVING_*`): the PMA and EMA configuration plus wiring."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, ServiceSettings
from derbus.topics import topic_level
from peak_shaving.controller import PmaConfig
from peak_shaving.optimizer import SCENARIO_LEVELS, EmaConfig


class Settings(ServiceSettings, PmaConfig, EmaConfig):
    """Everything the service reads at start-up; limits, demand target and reserve change live.

    The controller (`PmaConfig`) and optimiser (`EmaConfig`) fields are declared once, in their
    pure modules; the cross-field checks there name the offending field.
    """

    model_config = SettingsConfigDict(env_prefix="PEAK_SHAVING_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "import_limit_kw",
            "export_limit_kw",
            "demand_target_kw",
            "reserve_pct",
            "end_soc_pct",
            "soc_min_pct",
            "soc_max_pct",
            "margin_kw",
            "deadband_kw",
            "ramp_kw_per_s",
            "setpoint_ttl_s",
            "solver",
            "energy_cost",
            "demand_charge",
        }
    )

    api_port: ApiPort = 8106
    meter_device_id: Annotated[str, topic_level("device id")] = Field(
        default="pcc", description="device id of the PCC meter"
    )
    battery_device_id: Annotated[str, topic_level("device id")] = Field(
        default="battery", description="device id of the battery"
    )
    plan_interval_s: float = Field(
        default=900.0, gt=0, description="EMA re-solve period, s (also on every new forecast)"
    )
    kpi_interval_s: float = Field(default=60.0, gt=0, description="KPI publish period, s")
    ev_limit: bool = Field(
        default=True,
        description="limit the site's EV chargers (`ev_limit_kw`) when the battery at its limit"
        " cannot keep the import under the ceiling",
    )
    ev_limit_ttl_s: float = Field(
        default=60.0, gt=0, le=3600, description="life of an EV limit, s (refreshed at half)"
    )
    ev_deadband_kw: float = Field(
        default=0.5, ge=0, description="EV limit changes smaller than this are not made, kW"
    )
    ev_settle_s: float = Field(
        default=10.0, ge=0, description="an EV limit is not changed again sooner than this, s"
    )
    ev_min_kw: float = Field(
        default=1.4, ge=0, description="below this an EV is paused (limit 0), kW (6 A, 1 phase)"
    )
    site_shard: str | None = Field(
        default=None,
        pattern=r"^\d+/[1-9]\d*$",
        description="k/N: this replica handles the sites of shard k of N (0 <= k < N; by site "
        "id), the other replicas the rest; none = every site",
    )
    load_forecast_quantile: str | None = Field(
        default="p90",
        description="load forecast quantile the EMA plans on (peak shaving plans on the high"
        " side); the forecast's values when absent or None",
    )
    pv_forecast_quantile: str | None = Field(
        default="p10", description="PV forecast quantile the EMA plans on (the low side)"
    )
    reserve_load_quantile: str | None = Field(
        default=None,
        description="load forecast quantile (with pv_forecast_quantile for PV) whose excess over"
        " the month's peak so far the EMA keeps in store as a reserve (no arbitrage with it);"
        " None: only reserve_pct",
    )

    scenario_levels: list[tuple[float, float]] = Field(
        default_factory=lambda: list(SCENARIO_LEVELS),
        description="(quantile level, weight) of each net-load scenario the demand target is"
        " decided on (load at the level, PV at 1 - level); []: plan on one trace"
        " (load_forecast_quantile - pv_forecast_quantile)",
    )
    ema_workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description="processes the EMA solves in (the control loop never waits for a solve);"
        " 0: a thread of the service process",
    )

    @field_validator("scenario_levels")
    @classmethod
    def _levels(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for level, weight in value:
            if not (0.0 <= level <= 1.0 and weight > 0):
                raise ValueError("each scenario needs a level in 0..1 and a weight > 0")
        return value

    @field_validator("site_shard")
    @classmethod
    def _shard(cls, value: str | None) -> str | None:
        if value is not None:
            index, count = (int(part) for part in value.split("/"))
            if index >= count:
                raise ValueError(f"shard {index} of {count}: k must be below N")
        return value
