"""Settings of the scada_bridge service (`SCADA_BRIDGE_*`): Sparkplug B edge node and HA discovery."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from derbus.messages import Priority
from derbus.settings import ApiPort, ServiceSettings
from derbus.topics import topic_level

SparkplugId = Annotated[str, topic_level("Sparkplug id")]
"""An id that stands as a Sparkplug topic level."""


class Settings(ServiceSettings):
    """Everything the bridge reads at start-up; TTLs and priorities change live.

    Ids used as topic levels (`group_id`, `edge_node_id`, `primary_host_id`) may not hold
    `/`, `+`, `#` (Sparkplug 3.0, tck-id-topic-structure-namespace-valid-*).
    """

    model_config = SettingsConfigDict(env_prefix="SCADA_BRIDGE_")
    mutable_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "sparkplug_setpoint_ttl_s",
            "sparkplug_setpoint_priority",
            "ha_setpoint_ttl_s",
            "ha_setpoint_priority",
            "stale_after_s",
        }
    )

    api_port: ApiPort = 8109

    # --- Sparkplug B -----------------------------------------------------------------------
    sparkplug_enabled: bool = Field(default=True, description="run the Sparkplug B edge node")
    group_id: SparkplugId = Field(
        default="derbus", description="Sparkplug group id (a topic level)"
    )
    edge_node_id: SparkplugId = Field(
        default="derbus-bridge", description="Sparkplug edge node id; each site is a device of it"
    )
    primary_host_id: SparkplugId | None = Field(
        default=None,
        description="Sparkplug primary host id: births wait for its STATE online when set",
    )
    sparkplug_setpoint_ttl_s: float = Field(
        default=900.0, gt=0, le=86_400, description="TTL of a setpoint written by a DCMD, s"
    )
    sparkplug_setpoint_priority: Priority = Field(
        default=Priority.GRID_OPERATOR, description="priority of a setpoint written by a DCMD"
    )
    link_check_s: float = Field(
        default=0.5, gt=0, le=60, description="how often the Sparkplug connection is checked, s"
    )
    stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="a site without telemetry for this long gets a DDEATH (data STALE), s",
    )

    # --- Home Assistant MQTT discovery ------------------------------------------------------
    ha_enabled: bool = Field(default=True, description="publish Home Assistant discovery")
    ha_discovery_prefix: str = Field(
        default="homeassistant", description="Home Assistant's MQTT discovery prefix"
    )
    ha_command_prefix: str = Field(
        default="derbus_ha",
        description="topic prefix of the bridge's own HA command and state topics",
    )
    ha_setpoint_ttl_s: float = Field(
        default=3600.0, gt=0, le=86_400, description="TTL of a setpoint set from HA, s"
    )
    ha_setpoint_priority: Priority = Field(
        default=Priority.MANUAL, description="priority of a setpoint set from Home Assistant"
    )
    ha_battery_limit_kw: float = Field(
        default=10.0,
        gt=0,
        description="range of the HA battery setpoint when the battery does"
        " not report its limits, kW (+/-)",
    )
    currency: str = Field(
        default="EUR", min_length=3, max_length=3, description="ISO 4217 code of the prices"
    )

    @field_validator("ha_discovery_prefix", "ha_command_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.endswith("/") or any(c in value for c in "+#"):
            raise ValueError("must be non-empty, without trailing / or wildcards")
        return value
