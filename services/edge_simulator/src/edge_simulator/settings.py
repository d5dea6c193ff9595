"""Settings of the edge simulator (`EDGE_SIMULATOR_*`), plus the InfluxDB connection (`INFLUXDB_*`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from derbus.messages import Priority
from derbus.settings import ApiPort, InfluxSettings, ServiceSettings
from edge_simulator.ocpp_cp import OcppSimSettings

ALL_DEVICES: tuple[str, ...] = ("pcc", "pv", "battery", "load", "ev", "load1", "load2", "grid")
"""The device ids a simulated site publishes (the cross-service contract), in publishing order."""


class Settings(ServiceSettings):
    """Edge simulator settings. Physical models come from `config_file` (see sim_config.py)."""

    model_config = SettingsConfigDict(env_prefix="EDGE_SIMULATOR_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {"interval_s", "publish_on_setpoint", "enable_influxdb"}
    )

    api_port: ApiPort = 8101
    interval_s: float = Field(
        default=1.0, gt=0, le=86_400, description="wall-clock seconds between published steps"
    )
    speed: float = Field(
        default=1.0, gt=0, le=1_000_000, description="simulated seconds per wall-clock second"
    )
    align_to_clock: bool = Field(
        default=False, description="step on wall-clock multiples of interval_s (--scheduled)"
    )
    start_time: datetime | None = Field(
        default=None, description="simulated start instant (UTC, aware); none = now"
    )
    sites: int = Field(default=1, ge=1, le=100_000, description="number of simulated sites")
    seed: int = Field(default=42, ge=0, description="run seed; site i depends on (seed, i) only")
    first_site: int | None = Field(
        default=None,
        ge=0,
        description="this process simulates a shard of a larger fleet: the index of its first "
        "site (ids site-<first+1>…, the same sites as in the whole fleet); none = not a shard",
    )
    config_file: Path | None = Field(
        default=None, description="YAML/JSON model configuration (unknown fields refused)"
    )
    replay_file: Path | None = Field(default=None, description="CSV of per-unit profiles")
    replay_load_column: str | None = Field(default=None, description="column replayed as load")
    replay_pv_column: str | None = Field(default=None, description="column replayed as PV")
    modbus_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve SunSpec Modbus TCP here (0 = free port)"
    )
    modbus_host: str = Field(default="127.0.0.1", description="Modbus TCP listen address")
    modbus_priority: Priority = Field(
        default=Priority.MANUAL, description="priority of setpoints written over Modbus"
    )
    modbus_default_ttl_s: float = Field(
        default=60.0, gt=0, le=86_400, description="TTL of a Modbus write when RvrtTms is 0"
    )
    publish_on_setpoint: bool = Field(
        default=True,
        description="after an accepted setpoint, step and publish that site's readings at once",
    )
    publish_min_gap_s: float = Field(
        default=0.05, gt=0, le=60, description="least wall time between two immediate steps"
    )
    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(ALL_DEVICES),
        min_length=1,
        description="devices published per site and step (comma-separated; default all 8)",
    )
    replay_buffer_mb: float = Field(
        default=64.0,
        gt=0,
        le=65_536,
        description="payloads of the last steps kept for replay requests (gap repair), MiB",
    )
    enable_influxdb: bool = Field(default=False, description="also write readings to InfluxDB")
    ocpp: OcppSimSettings = Field(
        default_factory=OcppSimSettings,
        description="OCPP charge points, one per site (EDGE_SIMULATOR_OCPP_*; off unless a URL is set)",
    )
    influxdb: InfluxSettings = Field(
        default_factory=InfluxSettings, description="INFLUXDB_URL/_TOKEN/_ORG/_BUCKET"
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        items = [str(v).strip() for v in items if str(v).strip()]
        unknown = sorted(set(items) - set(ALL_DEVICES))
        if unknown:
            raise ValueError(f"unknown devices {unknown}; choose from {', '.join(ALL_DEVICES)}")
        return [d for d in ALL_DEVICES if d in items]  # publishing order, no duplicates

    @model_validator(mode="after")
    def _replay(self) -> Self:
        if (self.replay_load_column or self.replay_pv_column) and self.replay_file is None:
            raise ValueError("replay_file is required with replay_load_column/replay_pv_column")
        if self.start_time is not None and self.start_time.tzinfo is None:
            raise ValueError("start_time must be timezone-aware (e.g. 2026-01-01T00:00:00Z)")
        if self.enable_influxdb and (self.influxdb.url is None or self.influxdb.token is None):
            raise ValueError("enable_influxdb needs INFLUXDB_URL and INFLUXDB_TOKEN")
        return self
