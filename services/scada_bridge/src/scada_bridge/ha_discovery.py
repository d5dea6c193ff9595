"""Home Assistant MQTT discovery: entity configs for every site, and the bridge's HA topics.

One HA device per site (`identifiers: ["derbus_<site>"]`); its sensors read the retained derbus
telemetry and KPI topics directly (`value_template` picks the field), so readings reach HA without
passing through the bridge. The battery setpoint is a `number` whose command topic belongs to the
bridge, which turns the number into a setpoint of the derbus contract (TTL and priority from its
settings). Availability comes from the derbus service status topics (retained, last will
`offline`). The `homeassistant/…` and command topic strings are built here and only here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from scada_bridge.metrics import MetricDef

Component = Literal["sensor", "binary_sensor", "number"]

AVAILABILITY_TEMPLATE = "{{ 'offline' if value_json.state == 'offline' else 'online' }}"
"""A derbus service status (online / degraded / offline) as HA availability: degraded is up."""

_SLUG = re.compile(r"[^a-zA-Z0-9_-]")


def slug(text: str) -> str:
    """`text` as an HA discovery id level (`[a-zA-Z0-9_-]+`, the rest replaced by `_`)."""
    return _SLUG.sub("_", text) or "_"


def node_id(site_id: str) -> str:
    """The discovery node id (and HA device identifier) of a site."""
    return f"derbus_{slug(site_id)}"


def discovery_topic(prefix: str, component: Component, site_id: str, object_id: str) -> str:
    """`<prefix>/<component>/<node_id>/<object_id>/config`."""
    return f"{prefix}/{component}/{node_id(site_id)}/{slug(object_id)}/config"


def birth_topic(prefix: str) -> str:
    """Where Home Assistant announces itself (`online` after a restart)."""
    return f"{prefix}/status"


def setpoint_command_topic(command_prefix: str, site_id: str, device_id: str) -> str:
    """The number entity's command topic (a plain number, kW)."""
    return f"{command_prefix}/{site_id}/{device_id}/setpoint/set"


def setpoint_state_topic(command_prefix: str, site_id: str, device_id: str) -> str:
    """The retained JSON state of the setpoint the number last sent, with its acknowledgement."""
    return f"{command_prefix}/{site_id}/{device_id}/setpoint/state"


def setpoint_command_filter(command_prefix: str) -> str:
    """Subscription filter for every number entity's command topic."""
    return f"{command_prefix}/+/+/setpoint/set"


def parse_setpoint_command(command_prefix: str, topic: str) -> tuple[str, str] | None:
    """(site, device) of a number command topic, None for any other topic."""
    head = command_prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 4 or parts[2:] != ["setpoint", "set"] or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


@dataclass(frozen=True)
class SensorClass:
    """How a metric shows in HA: device class, state class, unit and a factor on the value."""

    device_class: str | None
    state_class: str | None
    unit: str | None
    scale: float = 1.0


def sensor_class(field: str, unit: str | None) -> SensorClass:
    """HA's device class, state class and unit for a derbus quantity (by name and unit).

    Energy counters (`e_*_kwh`) are `energy` / `total_increasing`; a stored quantity in kWh is
    `energy_storage`; kvar is sent to HA in var (the unit every HA release accepts); prices and
    other units have no device class and are `measurement`s.
    """
    if unit == "kW":
        return SensorClass("power", "measurement", "kW")
    if unit == "kWh":
        if field.startswith("e_"):
            return SensorClass("energy", "total_increasing", "kWh")
        if field.endswith("_violation_kwh"):
            return SensorClass("energy", "total", "kWh")
        return SensorClass("energy_storage", "measurement", "kWh")
    if unit == "kvar":
        return SensorClass("reactive_power", "measurement", "var", 1000.0)
    if unit == "%" and field == "soc_pct":
        return SensorClass("battery", "measurement", "%")
    simple = {"V": "voltage", "Hz": "frequency", "°C": "temperature", "W/m²": "irradiance"}
    if unit in simple:
        return SensorClass(simple[unit], "measurement", unit)
    if unit in ("s", "ms"):
        return SensorClass("duration", "measurement", unit)
    return SensorClass(None, "measurement", unit)


@dataclass(frozen=True)
class HaEntity:
    """One discovery config: where it is published and what it says."""

    component: Component
    object_id: str
    site_id: str
    config: dict[str, Any]

    def topic(self, prefix: str) -> str:
        """Its discovery topic under `prefix`."""
        return discovery_topic(prefix, self.component, self.site_id, self.object_id)


@dataclass(frozen=True)
class SiteDevice:
    """What every entity of a site shares: the HA device, origin and availability."""

    site_id: str
    version: str

    def device(self) -> dict[str, Any]:
        """HA device info: one device per site."""
        return {
            "identifiers": [node_id(self.site_id)],
            "name": f"derbus {self.site_id}",
            "manufacturer": "derbus",
            "model": "DER site",
            "sw_version": self.version,
        }

    def origin(self) -> dict[str, str]:
        """Who made the config (HA shows it in the device page)."""
        return {"name": "derbus scada_bridge", "sw_version": self.version}

    def base(self, object_id: str, name: str, availability: list[str]) -> dict[str, Any]:
        """Keys every entity config has."""
        return {
            "name": name,
            "unique_id": f"{node_id(self.site_id)}_{slug(object_id)}",
            "device": self.device(),
            "origin": self.origin(),
            "availability": [
                {"topic": t, "value_template": AVAILABILITY_TEMPLATE} for t in availability
            ],
            "availability_mode": "all",
            "qos": 1,
        }


def telemetry_entity(
    site: SiteDevice, device_id: str, d: MetricDef, state_topic: str, availability: list[str]
) -> HaEntity | None:
    """The sensor (or binary sensor) of a telemetry field, None for text fields."""
    object_id = f"{device_id}_{d.field}"
    name = f"{device_id} {d.field}"
    if d.kind == "boolean":
        config = site.base(object_id, name, availability) | {
            "state_topic": state_topic,
            "value_template": (
                f"{{{{ 'None' if value_json.{d.field} is none"
                f" else ('ON' if value_json.{d.field} else 'OFF') }}}}"
            ),
        }
        return HaEntity("binary_sensor", object_id, site.site_id, config)
    if d.kind not in ("double", "int"):
        return None
    cls = sensor_class(d.field, d.unit)
    value = f"value_json.{d.field}"
    template = (
        f"{{{{ {value} * {cls.scale:g} if {value} is not none else 'None' }}}}"
        if cls.scale != 1.0
        else f"{{{{ {value} }}}}"
    )
    config = site.base(object_id, name, availability) | {
        "state_topic": state_topic,
        "value_template": template,
    }
    return HaEntity("sensor", object_id, site.site_id, config | _classes(cls))


def kpi_entity(
    site: SiteDevice, controller: str, d: MetricDef, state_topic: str, availability: list[str]
) -> HaEntity:
    """The sensor of one KPI of a controller on a site."""
    object_id = f"kpi_{controller}_{d.field}"
    config = site.base(object_id, f"{controller} {d.field}", availability) | {
        "state_topic": state_topic,
        "value_template": f"{{{{ value_json['values']['{d.field}'] }}}}",
        "entity_category": "diagnostic",
    }
    return HaEntity(
        "sensor", object_id, site.site_id, config | _classes(sensor_class(d.field, d.unit))
    )


def setpoint_entities(
    site: SiteDevice,
    device_id: str,
    command_topic: str,
    state_topic: str,
    limit_kw: tuple[float, float],
    availability: list[str],
) -> list[HaEntity]:
    """The battery setpoint as a `number` (kW, + charge) and its last answer as a sensor."""
    number_id = f"{device_id}_setpoint"
    number = site.base(number_id, f"{device_id} setpoint", availability) | {
        "command_topic": command_topic,
        "state_topic": state_topic,
        "value_template": "{{ value_json.value }}",
        "min": limit_kw[0],
        "max": limit_kw[1],
        "step": 0.1,
        "mode": "box",
        "unit_of_measurement": "kW",
        "device_class": "power",
        "retain": False,
    }
    status_id = f"{device_id}_setpoint_status"
    status = site.base(status_id, f"{device_id} setpoint status", availability) | {
        "state_topic": state_topic,
        "value_template": "{{ value_json.status }}",
        "json_attributes_topic": state_topic,
    }
    return [
        HaEntity("number", number_id, site.site_id, number),
        HaEntity("sensor", status_id, site.site_id, status),
    ]


def _classes(cls: SensorClass) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cls.device_class is not None:
        out["device_class"] = cls.device_class
    if cls.state_class is not None:
        out["state_class"] = cls.state_class
    if cls.unit is not None:
        out["unit_of_measurement"] = cls.unit
    return out
