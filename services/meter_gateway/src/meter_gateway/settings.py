"""Settings of the meter gateway (`METER_GATEWAY_*`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from derbus.settings import ApiPort, ServiceSettings


class Settings(ServiceSettings):
    """Meter gateway settings; per-device polling, timeouts and stale thresholds are in the YAML."""

    model_config = SettingsConfigDict(env_prefix="METER_GATEWAY_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {"retry_backoff_max_s", "control_tick_s", "log_level"}
    )

    api_port: ApiPort = 8102
    devices_file: Path | None = Field(
        default=None,
        description="devices YAML (connections, register maps, SunSpec, controls); none: no devices",
    )
    retry_backoff_max_s: float = Field(
        default=30.0, gt=0, le=3600, description="longest wait between polls of a failing device, s"
    )
    control_tick_s: float = Field(
        default=0.2, gt=0, le=10, description="how often setpoint expiry and refresh are checked, s"
    )
    setpoint_ack_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="REST: how long POST setpoints waits for the ack, s"
    )
