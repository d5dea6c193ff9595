"""THE topic catalogue: every topic of the platform once, bound to its model, QoS and retain flag.

Scheme: `{root}/{site_id}/{category}/{device_id}/{name}` with root `der/v1` by default (tests use
a unique root each). Nothing else in the tree spells a topic string: build, filter and parse
topics through the `TopicSpec` entries below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pydantic import AfterValidator

from derbus.messages import (
    AreaExchange,
    BatteryTelemetry,
    DeadLetter,
    DeviceStatus,
    EvChargerTelemetry,
    EvSession,
    FeederState,
    JobPlan,
    JobRequest,
    KpiReport,
    LoadTelemetry,
    Message,
    MeterReading,
    PriceSeries,
    PriceTelemetry,
    PvCurtailmentSet,
    PvTelemetry,
    ReplayRequest,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
)

DEFAULT_ROOT = "der/v1"
PLATFORM_SITE = "platform"
"""The site id used for platform-wide topics (service status, dead letters)."""


def service_label(service: str, site_id: str = PLATFORM_SITE) -> str:
    """How a service is named where statuses are listed.

    The service name for a platform service, `service@site` for one that reports at a site's
    level (an edge gateway on its site's credentials), so that two sites' gateways stay apart.
    """
    return service if site_id == PLATFORM_SITE else f"{service}@{site_id}"


Category = Literal["telemetry", "forecast", "schedule", "control", "grid", "status"]
CATEGORIES: tuple[str, ...] = ("telemetry", "forecast", "schedule", "control", "grid", "status")

M = TypeVar("M", bound=Message)

_FORBIDDEN_IN_ID = ("/", "+", "#", "\x00")
ID_PATTERN = "^[^/+#\x00]+$"
"""`validate_id` as a JSON Schema pattern (for REST bodies and path parameters)."""


def validate_id(kind: str, value: str) -> str:
    """Check that an id can stand as one topic level (no `/`, `+`, `#`, not empty)."""
    if not value or any(ch in value for ch in _FORBIDDEN_IN_ID):
        raise ValueError(f"{kind} {value!r} cannot be a topic level (empty, or has / + # or NUL)")
    return value


def topic_level(kind: str) -> AfterValidator:
    """A pydantic check that a str field can stand as one topic level (see `validate_id`).

    Use as `site_id: Annotated[str, topic_level("site id")] = Field(...)`; `kind` names the
    value in the error.
    """
    return AfterValidator(functools.partial(validate_id, kind))


@dataclass(frozen=True)
class TopicIds:
    """The ids parsed out of a concrete topic."""

    site_id: str
    device_id: str


@dataclass(frozen=True)
class TopicSpec(Generic[M]):
    """One entry of the catalogue.

    Attributes:
        key: unique catalogue key, e.g. `telemetry.meter`.
        category: one of CATEGORIES.
        name: the last topic level.
        model: the pydantic message model of the payload.
        qos: MQTT QoS (0, 1 or 2).
        retain: whether the broker keeps the latest message.
        description: one line for the catalogue table.
        publishers: services that publish it (for docs and the broker ACL).
        subscribers: services that read it.
    """

    key: str
    category: Category
    name: str
    model: type[M]
    qos: int
    retain: bool
    description: str
    publishers: tuple[str, ...] = ()
    subscribers: tuple[str, ...] = ()
    own_device: bool = False
    """The device level is the publishing service's own name (KPIs): the broker ACL lets each
    publisher write only `…/<its name>/<name>`."""

    def topic(self, site_id: str, device_id: str, root: str = DEFAULT_ROOT) -> str:
        """The concrete topic for a site and a device."""
        validate_id("site_id", site_id)
        validate_id("device_id", device_id)
        return f"{root}/{site_id}/{self.category}/{device_id}/{self.name}"

    def filter(
        self, site_id: str | None = None, device_id: str | None = None, root: str = DEFAULT_ROOT
    ) -> str:
        """A subscription filter; a missing id becomes the single-level wildcard `+`."""
        site = "+" if site_id is None else validate_id("site_id", site_id)
        device = "+" if device_id is None else validate_id("device_id", device_id)
        return f"{root}/{site}/{self.category}/{device}/{self.name}"

    def parse(self, topic: str, root: str = DEFAULT_ROOT) -> TopicIds | None:
        """Ids of a concrete topic of this spec, or None when the topic is not one of it."""
        prefix = root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 4 or parts[1] != self.category or parts[3] != self.name:
            return None
        if not parts[0] or not parts[2]:
            return None
        return TopicIds(site_id=parts[0], device_id=parts[2])

    def matches(self, topic: str, root: str = DEFAULT_ROOT) -> bool:
        """Whether a concrete topic belongs to this spec."""
        return self.parse(topic, root) is not None


def all_topics_filter(root: str = DEFAULT_ROOT) -> str:
    """Filter for every topic under the root (for watchers and SCADA)."""
    return f"{root}/#"


def category_filter(category: Category, root: str = DEFAULT_ROOT) -> str:
    """Filter for every topic of a category on every site and device."""
    return f"{root}/+/{category}/#"


# --- telemetry: QoS 1, latest value retained for SCADA -------------------------------------------
METER = TopicSpec(
    "telemetry.meter",
    "telemetry",
    "meter",
    MeterReading,
    1,
    True,
    "PCC or sub-meter reading: active/reactive power (+import), phase voltages, energy counters",
    publishers=("edge_simulator", "meter_gateway"),
    subscribers=(
        "cloud_sync",
        "peak_shaving",
        "load_manager",
        "console",
        "scada_bridge",
        "ev_charging",
    ),
)
PV = TopicSpec(
    "telemetry.pv",
    "telemetry",
    "pv",
    PvTelemetry,
    1,
    True,
    "PV inverter: generation (positive), available power, active limit, irradiance",
    publishers=("edge_simulator", "meter_gateway"),
    subscribers=("cloud_sync", "load_manager", "console", "scada_bridge"),
)
BATTERY = TopicSpec(
    "telemetry.battery",
    "telemetry",
    "battery",
    BatteryTelemetry,
    1,
    True,
    "Battery: power (+charge), SoC, health, limits, voltage, temperature",
    publishers=("edge_simulator", "meter_gateway"),
    subscribers=("cloud_sync", "peak_shaving", "console", "scada_bridge"),
)
LOAD = TopicSpec(
    "telemetry.load",
    "telemetry",
    "load",
    LoadTelemetry,
    1,
    True,
    "Load: site total or one device (HVAC, EV, switchable), power consumed, relay state",
    publishers=("edge_simulator", "meter_gateway"),
    subscribers=("cloud_sync", "console", "scada_bridge"),
)
PRICE = TopicSpec(
    "telemetry.price",
    "telemetry",
    "price",
    PriceTelemetry,
    1,
    True,
    "Grid price: import price, feed-in, time-of-use period, demand charge, carbon intensity",
    publishers=("edge_simulator",),
    subscribers=("cloud_sync", "console", "scada_bridge"),
)
EV_CHARGER = TopicSpec(
    "telemetry.ev_charger",
    "telemetry",
    "ev_charger",
    EvChargerTelemetry,
    1,
    True,
    "EV charger connector over OCPP (device level = station-connector): power (+charging), "
    "status, accepted limit, session and register energy, SoC",
    publishers=("ev_charging",),
    subscribers=("cloud_sync", "scada_bridge", "scada", "peak_shaving", "load_manager"),
)

# --- forecasts and schedules: retained QoS 1 -----------------------------------------------------
FORECAST = TopicSpec(
    "forecast.day_ahead",
    "forecast",
    "day_ahead",
    TimeSeries,
    1,
    True,
    "Day-ahead forecast of a target (device level = target: load, pv), 96 x 15 min, quantiles",
    publishers=("forecaster",),
    subscribers=("peak_shaving", "load_manager", "cloud_sync", "console", "ev_charging"),
)
BATTERY_SCHEDULE = TopicSpec(
    "schedule.battery",
    "schedule",
    "battery",
    TimeSeries,
    1,
    True,
    "Battery power schedule from the EMA (+charge), with solve status and objective terms",
    publishers=("peak_shaving",),
    subscribers=("peak_shaving", "cloud_sync", "console"),
)
PRICE_SERIES = TopicSpec(
    "forecast.price",
    "forecast",
    "price",
    PriceSeries,
    1,
    True,
    "Price series of a site or zone (device level `grid`): import/export per interval, "
    "demand-charge windows, valid_until and stale flag (CSV, ToU model or HTTP source)",
    publishers=("ev_charging",),
    subscribers=("ev_charging", "peak_shaving", "load_manager", "scada"),
)
EV_SESSION = TopicSpec(
    "schedule.ev_session",
    "schedule",
    "ev_session",
    EvSession,
    1,
    True,
    "EV charging session of a connector (device level = station-connector): departure, energy "
    "need, mode, planned limit per interval, KPIs (energy, PV share, cost)",
    publishers=("ev_charging",),
    subscribers=("scada",),
)
JOB_PLAN = TopicSpec(
    "schedule.jobs",
    "schedule",
    "jobs",
    JobPlan,
    1,
    True,
    "Plan of deferrable jobs (start per job, PV and grid energy) for a house or neighbourhood",
    publishers=("load_manager",),
    subscribers=("console",),
)

# --- control: commands QoS 1 never retained, acknowledgements --------------------------------------
SETPOINT = TopicSpec(
    "control.set",
    "control",
    "set",
    SetpointCommand,
    1,
    False,
    "Setpoint command (value, unit, ttl_s, priority, id) for a battery, PV, load or EV charger",
    publishers=(
        "peak_shaving",
        "load_manager",
        "scada",
        "console",
        "scada_bridge",
    ),
    subscribers=("edge_simulator", "meter_gateway", "console", "ev_charging"),
)
SETPOINT_ACK = TopicSpec(
    "control.ack",
    "control",
    "ack",
    SetpointAck,
    1,
    False,
    "Acknowledgement of a setpoint: accepted / queued (naming the winner) / rejected with reason / superseded / expired",
    publishers=("edge_simulator", "meter_gateway", "feeder_sim", "ev_charging"),
    subscribers=(
        "peak_shaving",
        "scada",
        "console",
        "scada_bridge",
    ),
)
JOB_REQUEST = TopicSpec(
    "control.job",
    "control",
    "job",
    JobRequest,
    1,
    False,
    "Deferrable job submitted on the bus (earliest/latest start, load profile)",
    publishers=("scada",),
    subscribers=("load_manager",),
)
REPLAY_REQUEST = TopicSpec(
    "control.replay",
    "control",
    "replay",
    ReplayRequest,
    1,
    False,
    "Asks the edge to publish a telemetry stream's readings from_seq..to_seq again (gap repair)",
    publishers=("cloud_sync",),
    subscribers=("edge_simulator",),
)

# --- grid: distribution feeder ------------------------------------------------------------------
FEEDER_STATE = TopicSpec(
    "grid.feeder_state",
    "grid",
    "state",
    FeederState,
    1,
    True,
    "Feeder power-flow snapshot (site level = feeder id, device `feeder`): bus voltages, PV "
    "available/output",
    publishers=("feeder_sim",),
    subscribers=("voltage_coordinator", "voltage_area", "cloud_sync", "console"),
)
PV_CURTAILMENT = TopicSpec(
    "grid.pv_curtailment",
    "grid",
    "pv_limits",
    PvCurtailmentSet,
    1,
    False,
    "Batch of PV power limits for a feeder (site level = feeder id, device `coordinator`) with "
    "TTL and priority",
    publishers=("voltage_coordinator",),
    subscribers=("feeder_sim", "console"),
)
AREA_EXCHANGE = TopicSpec(
    "grid.area_exchange",
    "grid",
    "area_exchange",
    AreaExchange,
    1,
    False,
    "Distributed solve: boundary values of an area agent (device level = area id)",
    publishers=("voltage_coordinator", "voltage_area"),
    subscribers=("voltage_coordinator", "voltage_area"),
)

# --- status ------------------------------------------------------------------------------------
SERVICE_STATUS = TopicSpec(
    "status.service",
    "status",
    "state",
    ServiceStatus,
    1,
    True,
    "Service status online/degraded/offline (site level = platform, or the site of an edge "
    "gateway on site credentials; device level = service)",
    publishers=("*",),
    subscribers=("scada", "cloud_sync", "console", "scada_bridge"),
)
DEAD_LETTER = TopicSpec(
    "status.dead_letter",
    "status",
    "dead_letter",
    DeadLetter,
    1,
    False,
    "A payload a service could not decode or validate (device level = service, site level as "
    "its status), with the reason",
    publishers=("*",),
    subscribers=("scada", "cloud_sync", "console"),
)
DEVICE_STATUS = TopicSpec(
    "status.device",
    "status",
    "device",
    DeviceStatus,
    1,
    True,
    "Field device status from its gateway: ok or stale after repeated failed polls",
    publishers=("meter_gateway",),
    subscribers=("scada",),
)
KPI = TopicSpec(
    "status.kpi",
    "status",
    "kpi",
    KpiReport,
    1,
    True,
    "KPIs of a controller (device level = controller): efficiency, time on limit, backlog…",
    publishers=("peak_shaving", "load_manager", "voltage_coordinator", "cloud_sync"),
    subscribers=("scada", "cloud_sync", "console", "scada_bridge"),
    own_device=True,
)

CATALOGUE: tuple[TopicSpec[Message], ...] = (  # type: ignore[assignment]
    METER,
    PV,
    BATTERY,
    LOAD,
    PRICE,
    EV_CHARGER,
    FORECAST,
    BATTERY_SCHEDULE,
    PRICE_SERIES,
    EV_SESSION,
    JOB_PLAN,
    SETPOINT,
    SETPOINT_ACK,
    JOB_REQUEST,
    REPLAY_REQUEST,
    FEEDER_STATE,
    PV_CURTAILMENT,
    AREA_EXCHANGE,
    SERVICE_STATUS,
    DEAD_LETTER,
    DEVICE_STATUS,
    KPI,
)

TELEMETRY: tuple[TopicSpec[Message], ...] = tuple(s for s in CATALOGUE if s.category == "telemetry")


def _check_unique() -> None:
    keys = [s.key for s in CATALOGUE]
    paths = [(s.category, s.name) for s in CATALOGUE]
    if len(set(keys)) != len(keys) or len(set(paths)) != len(paths):
        raise RuntimeError("topic catalogue has duplicate keys or category/name pairs")


_check_unique()


def spec_for_topic(topic: str, root: str = DEFAULT_ROOT) -> TopicSpec[Message] | None:
    """The catalogue entry a concrete topic belongs to, if any."""
    for spec in CATALOGUE:
        if spec.matches(topic, root):
            return spec
    return None


def by_key(key: str) -> TopicSpec[Message]:
    """Look a spec up by its key (raises KeyError)."""
    for spec in CATALOGUE:
        if spec.key == key:
            return spec
    raise KeyError(key)


def catalogue_markdown(root: str = DEFAULT_ROOT) -> str:
    """The catalogue as a Markdown document (written to docs/topics.md by `make topics`)."""
    lines = [
        "# Topic catalogue",
        "",
        "Generated from `derbus.topics` by `make topics` (`derbus topics --markdown`); do not edit.",
        "",
        f"Scheme: `{root}/{{site_id}}/{{category}}/{{device_id}}/{{name}}`. Platform-wide topics use"
        f" the site id `{PLATFORM_SITE}`.",
        "",
        "| key | topic | model | QoS | retain | publishers | subscribers | description |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in CATALOGUE:
        topic = f"`{root}/{{site_id}}/{s.category}/{{device_id}}/{s.name}`"
        lines.append(
            f"| `{s.key}` | {topic} | `{s.model.__name__}` | {s.qos} | {'yes' if s.retain else 'no'}"
            f" | {', '.join(s.publishers) or '—'} | {', '.join(s.subscribers) or '—'}"
            f" | {s.description} |"
        )
    lines.append("")
    return "\n".join(lines)
