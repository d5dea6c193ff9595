"""Settings of the ev_charging service (`EV_CHARGING_*`): OCPP central system, smart charging, prices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from derbus.messages import ChargingMode, OcppVersion
from derbus.settings import ApiPort, ServiceSettings
from derbus.tariff import Tariff
from derbus.topics import topic_level, validate_id

IdTokenPolicy = Literal["allow_list", "accept_any"]
"""How a station's id tokens are judged: only the listed ones, or any (free vending)."""


class StationConfig(BaseModel):
    """One charging station the central system accepts (its OCPP identity is the key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: Annotated[str, topic_level("site_id")] = Field(
        description="the derbus site the station belongs to"
    )
    connectors: int = Field(default=1, ge=1, le=16, description="connectors (1.6) / EVSEs (2.0.1)")
    max_kw: float = Field(default=11.0, gt=0, le=1000, description="rating of each connector, kW")
    min_kw: float = Field(
        default=1.4, ge=0, description="smallest power a vehicle charges at (6 A x 230 V), kW"
    )
    protocols: tuple[OcppVersion, ...] = Field(
        default=("1.6", "2.0.1"), min_length=1, description="OCPP versions it may speak"
    )
    id_token_policy: IdTokenPolicy = Field(
        default="allow_list", description="allow_list: only `id_tokens`; accept_any: free vending"
    )
    id_tokens: tuple[str, ...] = Field(default=(), description="accepted id tokens (RFID, app)")
    mode: ChargingMode | None = Field(default=None, description="default mode (None: service's)")

    @model_validator(mode="after")
    def _policy(self) -> Self:
        if self.min_kw > self.max_kw:
            raise ValueError("min_kw must not exceed max_kw")
        if self.id_token_policy == "allow_list" and not self.id_tokens:  # noqa: S105
            raise ValueError("id_token_policy allow_list needs at least one id token")
        return self


class PriceSourceConfig(BaseModel):
    """Where a zone's prices come from and which sites they apply to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    zone: str = Field(description="price zone name (e.g. ES, NL, or a site id)")
    sites: tuple[str, ...] = Field(min_length=1, description="sites that pay these prices")
    kind: Literal["csv", "tou", "http"]
    path: Path | None = Field(default=None, description="csv: the file")
    url: HttpUrl | None = Field(default=None, description="http: the JSON endpoint")
    json_path: str = Field(
        default="", description="http: dotted path to the list of intervals ('' = the root)"
    )
    start_field: str = Field(default="start", description="http: interval start (ISO 8601)")
    import_field: str = Field(default="import_per_kwh", description="http: import price field")
    export_field: str | None = Field(
        default="export_per_kwh", description="http: export price field (None: no export price)"
    )
    price_scale: float = Field(
        default=1.0, gt=0, description="multiply source prices by this (e.g. 0.001 for per MWh)"
    )
    currency: str = Field(default="EUR", min_length=3, max_length=3)
    refresh_s: float = Field(default=900.0, gt=0, description="how often the source is read, s")
    valid_for_s: float = Field(
        default=3600.0, gt=0, description="a series read now is trusted this long, s"
    )
    horizon_h: float = Field(default=48.0, gt=0, le=24 * 14, description="tou: series length, h")
    step_s: int = Field(default=900, gt=0, description="tou: interval length, s")
    tariff: Tariff = Field(default_factory=Tariff, description="tou: the time-of-use tariff")

    @model_validator(mode="after")
    def _source(self) -> Self:
        if self.kind == "csv" and self.path is None:
            raise ValueError("a csv price source needs path")
        if self.kind == "http" and self.url is None:
            raise ValueError("an http price source needs url")
        for site in self.sites:
            validate_id("site_id", site)
        validate_id("zone", self.zone)
        return self


class Settings(ServiceSettings):
    """Everything ev_charging reads at start-up; limits and defaults change live."""

    model_config = SettingsConfigDict(env_prefix="EV_CHARGING_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "default_mode",
            "default_energy_need_kwh",
            "default_dwell_h",
            "site_import_limit_kw",
            "accept_unknown",
            "replan_s",
        }
    )

    api_port: ApiPort = 8110

    # --- OCPP central system -------------------------------------------------------------------
    ocpp_host: str = Field(default="127.0.0.1", description="OCPP WebSocket listen address")
    ocpp_port: int = Field(
        default=9000, ge=0, le=65535, description="OCPP WebSocket port (0 = any free)"
    )
    stations: dict[str, StationConfig] = Field(
        default_factory=dict, description="accepted stations by OCPP identity (JSON)"
    )
    accept_unknown: bool = Field(
        default=False, description="accept stations not in `stations` (on `unknown_site_id`)"
    )
    unknown_site_id: Annotated[str, topic_level("site_id")] = Field(
        default="site-0", description="site of accepted unknown stations"
    )
    unknown_id_token_policy: IdTokenPolicy = Field(
        default="allow_list", description="id-token policy of accepted unknown stations"
    )
    unknown_id_tokens: tuple[str, ...] = Field(
        default=(), description="id tokens accepted at unknown stations (allow_list)"
    )
    heartbeat_s: int = Field(default=60, ge=1, le=86_400, description="heartbeat interval, s")
    call_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="how long a call to a station waits, s"
    )
    expire_check_s: float = Field(
        default=0.25, gt=0, le=60, description="how often setpoint TTLs are checked, s"
    )
    max_frame_bytes: int = Field(
        default=65_536, ge=1024, description="largest WebSocket frame accepted, bytes"
    )

    # --- smart charging ------------------------------------------------------------------------
    default_mode: ChargingMode = Field(default="now", description="mode of a new session")
    default_energy_need_kwh: float = Field(
        default=20.0, ge=0, description="energy need of a session nobody described, kWh"
    )
    default_dwell_h: float = Field(
        default=10.0, gt=0, le=72, description="departure of such a session: plug-in + this, h"
    )
    site_import_limit_kw: dict[str, float] = Field(
        default_factory=dict, description="per site the PCC import limit the EVs must keep, kW"
    )
    plan_step_s: int = Field(default=900, ge=60, le=3600, description="plan interval, s")
    replan_s: float = Field(default=60.0, gt=0, description="how often sessions are re-planned, s")
    limit_deadband_kw: float = Field(
        default=0.2, ge=0, description="a plan change smaller than this sends no new profile, kW"
    )
    tariff: Tariff = Field(
        default_factory=Tariff, description="tariff used when no fresh price series is known"
    )

    # --- prices --------------------------------------------------------------------------------
    price_sources: list[PriceSourceConfig] = Field(
        default_factory=list, description="price series to publish (JSON list)"
    )

    @field_validator("stations")
    @classmethod
    def _station_ids(cls, value: dict[str, StationConfig]) -> dict[str, StationConfig]:
        for station_id in value:
            validate_id("station id", station_id)
        return value
