"""The bridge's state: sites and their metrics, the Sparkplug session and link, HA discovery.

`Bridge` is the one object the service's handlers talk to. It folds every telemetry reading, KPI
report, service status and setpoint acknowledgement into per-site metrics, and decides what goes
out: DBIRTH / DDATA (report by exception) / DDEATH on the Sparkplug link, retained discovery
configs for Home Assistant, and setpoints of the derbus contract for DCMD writes and HA numbers.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from derbus import topics
from derbus.bus.base import Bus, RawMessage, Will
from derbus.errors import BusError
from derbus.messages import (
    KpiReport,
    Message,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
    describe_problems,
    new_setpoint_id,
)
from derbus.messages.control import SETPOINT_UNITS, SetpointTarget
from derbus.service import Service
from derbus.topics import PLATFORM_SITE, TopicSpec
from scada_bridge import ha_discovery as ha
from scada_bridge import sparkplug as spb
from scada_bridge import sparkplug_b_pb2 as pb
from scada_bridge.metrics import (
    SETPOINT_TARGETS_BY_TELEMETRY,
    MetricDef,
    MetricValue,
    ack_values,
    kpi_metrics,
    setpoint_metrics,
    telemetry_metrics,
    values_of,
)
from scada_bridge.settings import Settings

log = logging.getLogger(__name__)

NAME = "scada_bridge"
LAST_COMMAND_ERROR = MetricDef("bridge/last_command_error", "string", None, False, "error")
"""Site metric: why the last DCMD to the site was refused (unknown metric, bad value)."""
MAX_PENDING = 10_000
"""Bridge setpoints remembered for their acks (oldest forgotten first)."""


@dataclass
class SiteModel:
    """One site (one Sparkplug device, one HA device): its metrics and what was published."""

    site_id: str
    defs: dict[str, MetricDef] = field(default_factory=dict)
    values: dict[str, MetricValue] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    """device id → telemetry spec key."""
    sources: dict[str, str] = field(default_factory=dict)
    """device id (or `kpi/<controller>`) → the service that publishes it."""
    last_seen: datetime | None = None
    born_names: frozenset[str] | None = None
    """The metric names of the DBIRTH in force (None: no DBIRTH, or DDEATH since)."""
    limits_kw: dict[str, tuple[float, float]] = field(default_factory=dict)
    """battery device id → (- discharge, + charge) envelope reported so far, kW."""
    ha_dirty: bool = True
    """Something HA discovery shows changed (a first value, a device, a source, limits)."""

    def add(self, defs: list[MetricDef]) -> None:
        """Declare metrics (kept in first-seen order)."""
        for d in defs:
            self.defs.setdefault(d.name, d)
            self.values.setdefault(d.name, None)

    def changed(self, values: dict[str, MetricValue]) -> dict[str, MetricValue]:
        """Store values; the ones that differ from what the site had (report by exception)."""
        out = {}
        for name, value in values.items():
            old = self.values.get(name)
            if name not in self.values or old != value:
                out[name] = value
                if old is None:
                    self.ha_dirty = True
            self.values[name] = value
        return out

    def widen_limits(self, device_id: str, limits: tuple[float, float]) -> None:
        """Grow a battery's setpoint range to include what it reports now."""
        old = self.limits_kw.get(device_id)
        new = limits if old is None else (min(old[0], limits[0]), max(old[1], limits[1]))
        if new != old:
            self.limits_kw[device_id] = new
            self.ha_dirty = True

    def source(self, key: str, service: str) -> None:
        """Note which service publishes a device's readings (or a controller's KPIs)."""
        if self.sources.get(key) != service:
            self.sources[key] = service
            self.ha_dirty = True


@dataclass(frozen=True)
class PendingSetpoint:
    """A setpoint the bridge sent, waiting for its acknowledgements."""

    site_id: str
    device_id: str
    target: SetpointTarget
    value: float
    origin: str
    """`sparkplug` or `homeassistant`."""


class _Metrics:
    """The bridge's own Prometheus series."""

    def __init__(self, service: Service[Settings, Bridge]) -> None:
        registry = service.metrics.registry
        self.sparkplug_out = Counter(
            "derbus_scada_bridge_sparkplug_messages_total",
            "Sparkplug messages published",
            ["type"],
            registry=registry,
        )
        self.commands = Counter(
            "derbus_scada_bridge_commands_total",
            "Commands received by origin and outcome",
            ["origin", "outcome"],
            registry=registry,
        )
        self.bd_seq = Gauge(
            "derbus_scada_bridge_sparkplug_bdseq",
            "bdSeq of the current Sparkplug session",
            registry=registry,
        )
        self.ha_configs = Gauge(
            "derbus_scada_bridge_ha_configs",
            "Home Assistant discovery configs published",
            registry=registry,
        )


class Bridge:
    """The bridge's state and decisions.

    Args:
        service: the service it belongs to (publishes on its bus).
        make_link: builds a fresh bus for each Sparkplug connection (its own MQTT session,
            whose will is the NDEATH); None disables Sparkplug.
        clock: the current time, UTC (injected in tests; stamps setpoints and Sparkplug).
    """

    def __init__(
        self,
        service: Service[Settings, Bridge],
        make_link: Callable[[], Bus] | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.service = service
        self.make_link = make_link
        self.clock = clock
        self.sites: dict[str, SiteModel] = {}
        self.services: dict[str, str] = {}
        """service name → its last state (online / degraded / offline)."""
        self.pending: OrderedDict[str, PendingSetpoint] = OrderedDict()
        self.link: Bus | None = None
        self.session: spb.EdgeNodeSession | None = None
        self.node_born_names: frozenset[str] | None = None
        self.host_online = False
        self.bd_seq = spb.BdSeqCounter(service.settings.data_dir / "sparkplug_bdseq")
        self.ha_published: dict[str, str] = {}
        """discovery topic → the JSON last published on it."""
        self.metrics = _Metrics(service)

    @property
    def settings(self) -> Settings:
        """The current settings."""
        return self.service.settings

    def site(self, site_id: str) -> SiteModel:
        """The model of a site (created on first use)."""
        model = self.sites.get(site_id)
        if model is None:
            model = self.sites[site_id] = SiteModel(site_id)
            model.add([LAST_COMMAND_ERROR])
        return model

    # --- what arrives on the bus ---------------------------------------------------------------
    async def on_telemetry(
        self, spec: TopicSpec[Any], site_id: str, device_id: str, msg: Message
    ) -> None:
        """A reading: its fields become the device's metrics; changes go out as DDATA."""
        site = self.site(site_id)
        site.last_seen = msg.ts
        defs = telemetry_metrics(device_id, spec.model, self.settings.currency)
        target = SETPOINT_TARGETS_BY_TELEMETRY.get(spec.key)
        extra = setpoint_metrics(device_id, target) if target else []
        site.add(defs + extra)
        site.devices[device_id] = spec.key
        site.source(device_id, msg.source)
        limits = _battery_limits(msg)
        if limits is not None:
            site.widen_limits(device_id, limits)
        changes = site.changed(values_of(msg, defs))
        await self.publish_site(site, changes)
        await self.discover_site(site)

    async def on_kpi(self, site_id: str, controller: str, report: KpiReport) -> None:
        """A controller's KPIs on a site: `kpi/<controller>/<key>` metrics and HA sensors."""
        if site_id == PLATFORM_SITE:
            return
        site = self.site(site_id)
        defs = kpi_metrics(controller, report, self.settings.currency)
        site.add(defs)
        site.source(f"kpi/{controller}", report.source)
        changes = site.changed({d.name: report.values[d.field] for d in defs})
        await self.publish_site(site, changes)
        await self.discover_site(site)

    async def on_status(self, status: ServiceStatus) -> None:
        """A service status: a node metric `services/<name>/state` (NDATA on change)."""
        previous = self.services.get(status.service)
        self.services[status.service] = status.state
        if previous == status.state:
            return
        await self.publish_node({status.service: status.state})

    async def on_ack(self, ack: SetpointAck) -> None:
        """An ack of a bridge setpoint: the device's setpoint metrics and the HA state change."""
        pending = self.pending.get(ack.setpoint_id)
        if pending is None:
            return
        site = self.site(pending.site_id)
        changes = site.changed(ack_values(pending.device_id, ack))
        await self.publish_site(site, changes)
        await self.publish_ha_state(pending, ack.status, ack.reason, ack.applied_value)
        if ack.status in ("rejected", "superseded", "expired"):
            self.pending.pop(ack.setpoint_id, None)

    # --- setpoints -------------------------------------------------------------------------
    async def write_setpoint(
        self, site_id: str, device_id: str, target: SetpointTarget, value: float, origin: str
    ) -> SetpointCommand | None:
        """Send a setpoint of the derbus contract for a host's write; None when refused here.

        TTL and priority are the settings of the origin (`sparkplug` or `homeassistant`).
        A value the contract refuses (NaN, infinite) is answered on the device's setpoint
        metrics with `rejected` and never sent.
        """
        cfg = self.settings
        if origin == "sparkplug":
            ttl_s, priority = cfg.sparkplug_setpoint_ttl_s, cfg.sparkplug_setpoint_priority
        else:
            ttl_s, priority = cfg.ha_setpoint_ttl_s, cfg.ha_setpoint_priority
        site = self.site(site_id)
        try:
            cmd = SetpointCommand(
                ts=self.clock(),
                source=NAME,
                setpoint_id=new_setpoint_id(),
                target=target,
                value=value,
                unit=SETPOINT_UNITS[target],
                ttl_s=ttl_s,
                priority=priority,
            )
        except ValidationError as err:
            self.metrics.commands.labels(origin=origin, outcome="rejected").inc()
            reason = describe_problems(err)
            base = f"{device_id}/setpoint"
            changes = site.changed({f"{base}/status": "rejected", f"{base}/reason": reason})
            await self.publish_site(site, changes)
            return None
        self.metrics.commands.labels(origin=origin, outcome="sent").inc()
        self.pending[cmd.setpoint_id] = PendingSetpoint(site_id, device_id, target, value, origin)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        await self.service.publish(topics.SETPOINT, cmd, site_id=site_id, device_id=device_id)
        base = f"{device_id}/setpoint"
        changes = site.changed(
            {
                f"{base}/{target}": value,
                f"{base}/status": "sent",
                f"{base}/reason": None,
                f"{base}/setpoint_id": cmd.setpoint_id,
            }
        )
        await self.publish_site(site, changes)
        return cmd

    # --- Sparkplug: the link -------------------------------------------------------------------
    def will_for(self, bd_seq: int) -> Will:
        """The NDEATH registered as the will of a connection: QoS 1, not retained."""
        cfg = self.settings
        return Will(
            spb.topic(cfg.group_id, "NDEATH", cfg.edge_node_id),
            spb.death_payload(bd_seq, self.clock()),
            qos=1,
            retain=False,
        )

    def link_up(self) -> bool:
        """The Sparkplug connection is up and still the one the session's will was given to."""
        link = self.link
        return link is not None and link.connected and getattr(link, "reconnects", 0) == 0

    async def ensure_link(self) -> None:
        """Open a new Sparkplug session when there is none (or its connection was lost).

        Each session is a new MQTT connection with the next bdSeq in its NDEATH will; after
        subscribing to NCMD and DCMD (and the primary host's STATE) it publishes the births.
        """
        if self.make_link is None or self.link_up():
            return
        await self.drop_link(graceful=False)
        cfg = self.settings
        bd_seq = self.bd_seq.next()
        link = self.make_link()
        link.set_will(self.will_for(bd_seq))
        try:
            await link.connect()
            await link.subscribe(
                spb.topic(cfg.group_id, "NCMD", cfg.edge_node_id), 0, self.on_node_command
            )
            await link.subscribe(
                spb.device_command_filter(cfg.group_id, cfg.edge_node_id),
                0,
                self.on_device_command,
            )
        except BusError as err:
            await link.close()
            await self.service.set_degraded("sparkplug", f"cannot connect: {err}")
            return
        self.link, self.session = link, spb.EdgeNodeSession(bd_seq)
        self.metrics.bd_seq.set(bd_seq)
        await self.service.clear_degraded("sparkplug")
        if cfg.primary_host_id:
            self.host_online = False
            await link.subscribe(spb.state_topic(cfg.primary_host_id), 1, self.on_host_state)
        else:
            await self.birth()

    async def drop_link(self, *, graceful: bool) -> None:
        """End the Sparkplug session; `graceful` publishes the NDEATH before disconnecting."""
        link, session = self.link, self.session
        self.link, self.session, self.node_born_names = None, None, None
        for site in self.sites.values():
            site.born_names = None
        if link is None:
            return
        if graceful and session is not None and link.connected:
            cfg = self.settings
            await link.publish(
                spb.topic(cfg.group_id, "NDEATH", cfg.edge_node_id),
                spb.death_payload(session.bd_seq, self.clock()),
                qos=1,
                retain=False,
            )
            self.metrics.sparkplug_out.labels(type="NDEATH").inc()
        await link.close()

    async def on_host_state(self, raw: RawMessage) -> None:
        """The primary host's STATE: births once it is online; offline ends the session."""
        try:
            online = bool(json.loads(raw.payload).get("online"))
        except (ValueError, AttributeError):
            online = raw.payload.strip().upper() == b"ONLINE"
        was, self.host_online = self.host_online, online
        if online and not was:
            await self.birth()
        elif not online and was:
            await self.drop_link(graceful=True)

    # --- Sparkplug: births and data ------------------------------------------------------------
    def node_metrics(self) -> list[tuple[MetricDef, MetricValue]]:
        """The node's own metrics besides bdSeq and Rebirth: software and service states."""
        out: list[tuple[MetricDef, MetricValue]] = [
            (MetricDef("Properties/Software", "string", None), f"derbus {NAME}"),
            (MetricDef("Properties/Sites", "int", None), len(self.sites)),
        ]
        for name in sorted(self.services):
            out.append((_service_metric(name), self.services[name]))
        return out

    async def birth(self) -> None:
        """NBIRTH then a DBIRTH per live site (a new session, a rebirth request, new metrics)."""
        link, session = self.link, self.session
        if link is None or session is None:
            return
        if self.settings.primary_host_id and not self.host_online:
            return
        cfg, now = self.settings, self.clock()
        metrics = self.node_metrics()
        await self._send(
            spb.topic(cfg.group_id, "NBIRTH", cfg.edge_node_id),
            session.node_birth(now, metrics),
            "NBIRTH",
        )
        self.node_born_names = frozenset(d.name for d, _ in metrics)
        for site in self.sites.values():
            site.born_names = None
            if self._alive(site, now):
                await self.device_birth(site)

    async def device_birth(self, site: SiteModel) -> None:
        """DBIRTH of a site with every metric it has, current values."""
        session = self.session
        if session is None or self.node_born_names is None:
            return
        cfg = self.settings
        metrics = [(d, site.values.get(n)) for n, d in site.defs.items()]
        await self._send(
            spb.topic(cfg.group_id, "DBIRTH", cfg.edge_node_id, site.site_id),
            session.message(self.clock(), metrics, birth=True),
            "DBIRTH",
        )
        site.born_names = frozenset(site.defs)

    async def publish_site(self, site: SiteModel, changes: dict[str, MetricValue]) -> None:
        """Report a site's changed metrics: DDATA, or a DBIRTH when it has new metrics or none."""
        session = self.session
        if session is None or self.node_born_names is None or not changes:
            return
        if site.born_names is None or not set(site.defs) <= site.born_names:
            await self.device_birth(site)
            return
        cfg = self.settings
        metrics = [(site.defs[n], v) for n, v in changes.items()]
        await self._send(
            spb.topic(cfg.group_id, "DDATA", cfg.edge_node_id, site.site_id),
            session.message(self.clock(), metrics, birth=False),
            "DDATA",
        )

    async def publish_node(self, states: dict[str, str]) -> None:
        """Service states as NDATA; a service not in the NBIRTH yet means a rebirth."""
        session = self.session
        if session is None or self.node_born_names is None:
            return
        names = {_service_metric(s).name for s in states}
        if not names <= self.node_born_names:
            await self.birth()
            return
        cfg = self.settings
        metrics = [(_service_metric(s), v) for s, v in states.items()]
        await self._send(
            spb.topic(cfg.group_id, "NDATA", cfg.edge_node_id),
            session.message(self.clock(), metrics, birth=False),
            "NDATA",
        )

    async def check_stale(self) -> None:
        """DDEATH for every born site whose telemetry stopped (data STALE for hosts)."""
        session = self.session
        if session is None or self.node_born_names is None:
            return
        cfg, now = self.settings, self.clock()
        for site in self.sites.values():
            if site.born_names is not None and not self._alive(site, now):
                await self._send(
                    spb.topic(cfg.group_id, "DDEATH", cfg.edge_node_id, site.site_id),
                    session.message(now, [], birth=False),
                    "DDEATH",
                )
                site.born_names = None

    def _alive(self, site: SiteModel, now: datetime) -> bool:
        return site.last_seen is not None and now - site.last_seen <= timedelta(
            seconds=self.settings.stale_after_s
        )

    async def _send(self, topic: str, payload: bytes, kind: str) -> None:
        link = self.link
        if link is None:
            return
        await link.publish(topic, payload, qos=0, retain=False)
        self.metrics.sparkplug_out.labels(type=kind).inc()

    # --- Sparkplug: commands -------------------------------------------------------------------
    async def on_node_command(self, raw: RawMessage) -> None:
        """NCMD: `Node Control/Rebirth` = true → the full birth sequence again."""
        payload = await self._decode(raw, "sparkplug")
        if payload is None:
            return
        for metric in payload.metrics:
            if metric.name == spb.REBIRTH:
                try:
                    rebirth = spb.metric_bool(metric)
                except spb.SparkplugError as err:
                    await self.service.dead_letter(raw, None, str(err))
                    continue
                if rebirth:
                    self.metrics.commands.labels(origin="sparkplug", outcome="rebirth").inc()
                    await self.birth()
            else:
                log.warning("NCMD for unknown node metric %r ignored", metric.name)
                self.metrics.commands.labels(origin="sparkplug", outcome="unknown").inc()

    async def on_device_command(self, raw: RawMessage) -> None:
        """DCMD: each writable `<device>/setpoint/<target>` becomes a setpoint of the contract."""
        parsed = spb.parse_topic(raw.topic)
        payload = await self._decode(raw, "sparkplug")
        if payload is None or parsed is None or parsed.device_id is None:
            return
        site = self.sites.get(parsed.device_id)
        if site is None:
            await self.service.dead_letter(raw, None, f"unknown device {parsed.device_id!r}")
            return
        for metric in payload.metrics:
            d = site.defs.get(metric.name)
            error = None
            if d is None or not d.writable:
                error = f"{metric.name!r} is not a writable metric of {site.site_id}"
            else:
                try:
                    value = spb.metric_number(metric)
                except spb.SparkplugError as err:
                    error = str(err)
                else:
                    if value is None:
                        error = f"{metric.name!r}: no value"
            if error is not None or d is None:
                self.metrics.commands.labels(origin="sparkplug", outcome="refused").inc()
                await self.publish_site(site, site.changed({LAST_COMMAND_ERROR.name: error}))
                continue
            device_id = metric.name.split("/", 1)[0]
            target: SetpointTarget = d.field  # type: ignore[assignment]
            await self.write_setpoint(
                site.site_id, device_id, target, float(value or 0), "sparkplug"
            )

    async def _decode(self, raw: RawMessage, origin: str) -> pb.Payload | None:
        try:
            return spb.decode(raw.payload)
        except spb.SparkplugError as err:
            self.metrics.commands.labels(origin=origin, outcome="invalid").inc()
            await self.service.dead_letter(raw, None, str(err))
            return None

    # --- Home Assistant ------------------------------------------------------------------------
    def ha_entities(self, site: SiteModel) -> list[ha.HaEntity]:
        """Every discovery config of a site: telemetry sensors, KPIs, battery setpoints."""
        root, cfg = self.service.root, self.settings
        device = ha.SiteDevice(site.site_id, self.service.version)
        own = topics.SERVICE_STATUS.topic(PLATFORM_SITE, NAME, root)
        out: list[ha.HaEntity] = []
        for device_id, key in site.devices.items():
            spec = topics.by_key(key)
            state = spec.topic(site.site_id, device_id, root)
            publisher = _status_topic(site.sources.get(device_id), root)
            avail = [publisher] if publisher else []
            for d in telemetry_metrics(device_id, spec.model, cfg.currency):
                if site.values.get(d.name) is None:
                    continue  # never reported (e.g. a phase the meter lacks)
                entity = ha.telemetry_entity(device, device_id, d, state, avail)
                if entity is not None:
                    out.append(entity)
            if key == topics.BATTERY.key:
                out += ha.setpoint_entities(
                    device,
                    device_id,
                    ha.setpoint_command_topic(cfg.ha_command_prefix, site.site_id, device_id),
                    ha.setpoint_state_topic(cfg.ha_command_prefix, site.site_id, device_id),
                    site.limits_kw.get(
                        device_id, (-cfg.ha_battery_limit_kw, cfg.ha_battery_limit_kw)
                    ),
                    [own, *avail],
                )
        for name, d in site.defs.items():
            if not name.startswith("kpi/"):
                continue
            controller = name.split("/")[1]
            state = topics.KPI.topic(site.site_id, controller, root)
            publisher = _status_topic(site.sources.get(f"kpi/{controller}"), root)
            out.append(
                ha.kpi_entity(device, controller, d, state, [publisher] if publisher else [])
            )
        return out

    async def discover_site(self, site: SiteModel, *, again: bool = False) -> None:
        """Publish (retained) the discovery configs of a site that are new or changed."""
        cfg = self.settings
        if not cfg.ha_enabled or not (site.ha_dirty or again):
            return
        site.ha_dirty = False
        for entity in self.ha_entities(site):
            topic = entity.topic(cfg.ha_discovery_prefix)
            body = json.dumps(entity.config, sort_keys=True)
            if not again and self.ha_published.get(topic) == body:
                continue
            await self.service.bus.publish(topic, body.encode(), qos=1, retain=True)
            self.ha_published[topic] = body
        self.metrics.ha_configs.set(len(self.ha_published))

    async def on_ha_birth(self, raw: RawMessage) -> None:
        """Home Assistant came (back) online: publish every config again."""
        if raw.payload.strip() != b"online":
            return
        for site in self.sites.values():
            await self.discover_site(site, again=True)

    async def on_ha_command(self, raw: RawMessage) -> None:
        """A number entity's value (a plain number, kW) → a battery setpoint of the contract."""
        where = ha.parse_setpoint_command(self.settings.ha_command_prefix, raw.topic)
        if where is None:
            return
        site_id, device_id = where
        site = self.sites.get(site_id)
        if site is None or site.devices.get(device_id) != topics.BATTERY.key:
            await self.service.dead_letter(raw, None, f"no battery {device_id!r} on {site_id!r}")
            return
        try:
            value = float(raw.payload.decode().strip())
        except (UnicodeDecodeError, ValueError):
            self.metrics.commands.labels(origin="homeassistant", outcome="invalid").inc()
            await self.service.dead_letter(raw, None, "not a number")
            return
        cmd = await self.write_setpoint(site_id, device_id, "battery_p_kw", value, "homeassistant")
        if cmd is None:
            pending = PendingSetpoint(site_id, device_id, "battery_p_kw", value, "homeassistant")
            await self.publish_ha_state(pending, "rejected", "not a finite number", None)

    async def publish_ha_state(
        self, p: PendingSetpoint, status: str, reason: str | None, applied: float | None
    ) -> None:
        """The retained state of a battery's HA number: the value in force and the last answer."""
        cfg = self.settings
        if not cfg.ha_enabled or p.target != "battery_p_kw":
            return
        body = {
            "value": applied if applied is not None else p.value,
            "requested": p.value,
            "status": status,
            "reason": reason,
            "origin": p.origin,
        }
        topic = ha.setpoint_state_topic(cfg.ha_command_prefix, p.site_id, p.device_id)
        await self.service.bus.publish(topic, json.dumps(body).encode(), qos=1, retain=True)


def _service_metric(service: str) -> MetricDef:
    return MetricDef(f"services/{service}/state", "string", None, False, "state")


def _status_topic(service: str | None, root: str) -> str | None:
    """The retained status topic of the service that publishes something, if it is one."""
    if not service:
        return None
    try:
        return topics.SERVICE_STATUS.topic(PLATFORM_SITE, service, root)
    except ValueError:
        return None


def _battery_limits(msg: Message) -> tuple[float, float] | None:
    """(- discharge limit, + charge limit) a battery reports, kW; None when it does not."""
    charge = getattr(msg, "max_charge_kw", None)
    discharge = getattr(msg, "max_discharge_kw", None)
    if charge is None or discharge is None or (charge == 0 and discharge == 0):
        return None
    return (-float(discharge), float(charge))
