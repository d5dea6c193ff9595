"""Settings of the console (`CONSOLE_*`): where the services' APIs are, history, push cadence."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, ServiceSettings
from derbus.tariff import Tariff

DEFAULT_SERVICE_URLS: dict[str, str] = {
    "edge_simulator": "http://127.0.0.1:8101",
    "meter_gateway": "http://127.0.0.1:8102",
    "cloud_sync": "http://127.0.0.1:8103",
    "feature_engineering": "http://127.0.0.1:8104",
    "forecaster": "http://127.0.0.1:8105",
    "peak_shaving": "http://127.0.0.1:8106",
    "load_manager": "http://127.0.0.1:8107",
    "voltage_coordinator": "http://127.0.0.1:8108",
}
"""The APIs as `make run` starts them on their default ports."""


class Settings(ServiceSettings):
    """The console's settings; `mutable_fields` change at run time through `PUT /config`."""

    model_config = SettingsConfigDict(env_prefix="CONSOLE_", env_nested_delimiter="__")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {"push_interval_s", "rest_interval_s", "history_step_s"}
    )

    api_port: ApiPort = Field(default=8100, description="API and pages port")
    service_urls: dict[str, str] = Field(  # type: ignore[pydantic-alias]
        default_factory=lambda: dict(DEFAULT_SERVICE_URLS),
        validation_alias=AliasChoices("CONSOLE_SERVICE_URLS", "DERBUS_SERVICE_URLS"),
        description="service name -> base URL of its API (JSON); `derbus up` passes its ports",
    )
    push_interval_s: float = Field(
        default=0.1, gt=0, le=5, description="how often changed values are pushed to pages, s"
    )
    rest_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="how often the services' REST APIs are read, s"
    )
    rest_timeout_s: float = Field(default=3.0, gt=0, le=60, description="REST call timeout, s")
    planner_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="timeout of a neighbourhood simulation call, s"
    )
    history_s: float = Field(
        default=6 * 3600, gt=0, le=7 * 86_400, description="live chart window, s of reading time"
    )
    history_step_s: float = Field(
        default=10.0, gt=0, le=3600, description="one chart point per this much reading time, s"
    )
    log_size: int = Field(default=200, ge=10, le=10_000, description="setpoint log length per site")
    feeder_id: str = Field(default="ieee123", description="feeder drawn on the Feeder page")
    meter_device_id: str = Field(default="pcc", description="device id of each site's PCC meter")
    battery_device_id: str = Field(default="battery", description="device id of the battery")
    tariff: Tariff = Field(
        default_factory=Tariff, description="prices of the Decisions page (JSON derbus Tariff)"
    )

    @field_validator("service_urls")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"service_urls[{name}] must be an http(s) URL, got {url!r}")
        return {name: url.rstrip("/") for name, url in value.items()}
