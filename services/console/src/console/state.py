"""The console's one state object: what it has read from the bus and the APIs, and who listens.

Bus messages are folded into per-site views (latest values, a bounded history for the live
chart, forecasts, the battery schedule, KPIs, the setpoint and ack log), service statuses,
dead-letter counts and feeder snapshots. Pages listen on channels (`fleet`, `site:<id>`,
`feeder`); `flush()` sends each listener one JSON event with what changed since the last flush,
so a page gets at most one update per push interval however many readings arrive.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from console.settings import Settings
from console.views import feeder_colours
from derbus import topics
from derbus.messages import (
    BatteryTelemetry,
    FeederState,
    JobPlan,
    KpiReport,
    LoadTelemetry,
    MeterReading,
    PriceTelemetry,
    PvCurtailmentSet,
    PvTelemetry,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
    format_utc,
)

FLEET = "fleet"
FEEDER = "feeder"
QUEUE_SIZE = 64
"""Events kept for a slow page; older ones are dropped (the next event carries the latest)."""

Row = tuple[float, float | None, float | None, float | None, float | None, float | None]
"""A chart point: (unix time s, PCC kW, PV kW, load kW, battery kW, SoC %)."""


def site_channel(site_id: str) -> str:
    """The channel a site page listens on."""
    return f"site:{site_id}"


@dataclass
class SiteView:
    """What the console knows about one site."""

    site_id: str
    pcc_kw: float | None = None
    pv_kw: float | None = None
    load_kw: float | None = None
    battery_kw: float | None = None
    soc_pct: float | None = None
    price_per_kwh: float | None = None
    ts: datetime | None = None
    history: deque[Row] = field(default_factory=deque)
    forecasts: dict[str, TimeSeries] = field(default_factory=dict)
    schedule: TimeSeries | None = None
    kpis: dict[str, KpiReport] = field(default_factory=dict)
    job_plan: JobPlan | None = None
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    devices: set[str] = field(default_factory=set)

    def values(self) -> dict[str, Any]:
        """The latest values (kW, %, price per kWh) and their reading time."""
        return {
            "pcc_kw": _round(self.pcc_kw),
            "pv_kw": _round(self.pv_kw),
            "load_kw": _round(self.load_kw),
            "battery_kw": _round(self.battery_kw),
            "soc_pct": _round(self.soc_pct, 1),
            "price_per_kwh": _round(self.price_per_kwh, 4),
            "ts": format_utc(self.ts) if self.ts else None,
        }

    @property
    def month_peak_kw(self) -> float | None:
        """The month's highest 15-minute import so far, from peak_shaving's KPIs."""
        report = self.kpis.get("peak_shaving")
        return report.values.get("month_peak_kw") if report else None


@dataclass
class _Pending:
    """What changed since the last flush."""

    fleet_sites: set[str] = field(default_factory=set)
    services: bool = False
    site_values: set[str] = field(default_factory=set)
    site_rows: dict[str, list[Row]] = field(default_factory=dict)
    site_log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    site_plans: set[str] = field(default_factory=set)
    feeder: bool = False


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class ConsoleState:
    """Everything the console remembers, and the pages listening for changes."""

    settings: Settings
    sites: dict[str, SiteView] = field(default_factory=dict)
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    invalid_totals: dict[str, float] = field(default_factory=dict)
    """`derbus_messages_invalid_total` of each service's /metrics (every one dead-lettered)."""
    api_up: dict[str, bool] = field(default_factory=dict)
    rest: dict[str, Any] = field(default_factory=dict)
    """Latest REST answers: `peak_shaving.config`, `voltage.voltages`, `voltage.setpoints`."""
    feeders: dict[str, FeederState] = field(default_factory=dict)
    curtailments: dict[str, PvCurtailmentSet] = field(default_factory=dict)
    listeners: dict[str, set[asyncio.Queue[str]]] = field(default_factory=dict)
    pending: _Pending = field(default_factory=_Pending)
    messages: int = 0

    # --- sites -----------------------------------------------------------------------------
    def site(self, site_id: str) -> SiteView:
        """The view of a site (created on its first message)."""
        view = self.sites.get(site_id)
        if view is None:
            view = self.sites[site_id] = SiteView(site_id, log=deque(maxlen=self.settings.log_size))
        return view

    def _touch(self, site_id: str, device_id: str, ts: datetime) -> SiteView:
        self.messages += 1
        view = self.site(site_id)
        view.devices.add(device_id)
        if view.ts is None or ts > view.ts:
            view.ts = ts
        self.pending.fleet_sites.add(site_id)
        self.pending.site_values.add(site_id)
        return view

    def on_meter(self, site_id: str, device_id: str, msg: MeterReading) -> None:
        """A PCC reading: the site's import (+) / export (−) and a chart point."""
        view = self._touch(site_id, device_id, msg.ts)
        view.pcc_kw = msg.p_kw
        self._record_row(view, msg.ts)

    def on_pv(self, site_id: str, device_id: str, msg: PvTelemetry) -> None:
        """PV generation (positive)."""
        self._touch(site_id, device_id, msg.ts).pv_kw = msg.generation_kw

    def on_battery(self, site_id: str, device_id: str, msg: BatteryTelemetry) -> None:
        """Battery power (+ charging) and SoC."""
        view = self._touch(site_id, device_id, msg.ts)
        view.battery_kw, view.soc_pct = msg.p_kw, msg.soc_pct

    def on_load(self, site_id: str, device_id: str, msg: LoadTelemetry) -> None:
        """The site's total load (per-device loads are not charted)."""
        view = self._touch(site_id, device_id, msg.ts)
        if msg.kind == "total":
            view.load_kw = msg.p_kw

    def on_price(self, site_id: str, device_id: str, msg: PriceTelemetry) -> None:
        """The import price now."""
        self._touch(site_id, device_id, msg.ts).price_per_kwh = msg.price_per_kwh

    def _record_row(self, view: SiteView, ts: datetime) -> None:
        t = ts.timestamp()
        if view.history and t - view.history[-1][0] < self.settings.history_step_s:
            return
        row: Row = (t, view.pcc_kw, view.pv_kw, view.load_kw, view.battery_kw, view.soc_pct)
        view.history.append(row)
        while view.history and view.history[0][0] < t - self.settings.history_s:
            view.history.popleft()
        self.pending.site_rows.setdefault(view.site_id, []).append(row)

    def on_forecast(self, site_id: str, target: str, msg: TimeSeries) -> None:
        """A day-ahead forecast (target `load` or `pv`, quantiles p10/p50/p90)."""
        self.site(site_id).forecasts[target] = msg
        self.pending.site_plans.add(site_id)

    def on_schedule(self, site_id: str, msg: TimeSeries) -> None:
        """The battery schedule from peak_shaving's EMA."""
        self.site(site_id).schedule = msg
        self.pending.site_plans.add(site_id)

    def on_kpi(self, site_id: str, device_id: str, msg: KpiReport) -> None:
        """KPIs of a controller (peak_shaving carries the month's peak)."""
        self.site(site_id).kpis[device_id] = msg
        self.pending.site_plans.add(site_id)

    def on_job_plan(self, site_id: str, msg: JobPlan) -> None:
        """The load manager's plan of deferrable jobs."""
        self.site(site_id).job_plan = msg

    def on_setpoint(self, site_id: str, device_id: str, msg: SetpointCommand) -> None:
        """A setpoint seen on the bus (ours or any other sender's)."""
        fields = {
            "target": msg.target,
            "value": msg.value,
            "unit": msg.unit,
            "ttl_s": msg.ttl_s,
            "priority": msg.priority.value,
        }
        self._log(site_id, "set", device_id, msg, fields)

    def on_ack(self, site_id: str, device_id: str, msg: SetpointAck) -> None:
        """A device's answer to a setpoint."""
        fields = {"status": msg.status, "reason": msg.reason, "applied_value": msg.applied_value}
        self._log(site_id, "ack", device_id, msg, fields)

    def _log(
        self,
        site_id: str,
        kind: str,
        device_id: str,
        msg: SetpointCommand | SetpointAck,
        fields: dict[str, Any],
    ) -> None:
        """Add a setpoint or an ack to the site's log: when, which device and setpoint, from whom."""
        entry = {
            "kind": kind,
            "ts": format_utc(msg.ts),
            "device_id": device_id,
            "setpoint_id": msg.setpoint_id,
            **fields,
            "source": msg.source,
        }
        self.site(site_id).log.appendleft(entry)
        self.pending.site_log.setdefault(site_id, []).append(entry)

    # --- platform --------------------------------------------------------------------------
    def on_status(self, msg: ServiceStatus, site_id: str = topics.PLATFORM_SITE) -> None:
        """A service's retained status (online / degraded with the reason / offline).

        An edge gateway reporting at its site's level is listed as `service@site`.
        """
        self.services[topics.service_label(msg.service, site_id)] = msg
        self.pending.services = True

    def on_dead_letter(self, service: str, site_id: str = topics.PLATFORM_SITE) -> None:
        """A payload some service could not read."""
        name = topics.service_label(service, site_id)
        self.dead_letters[name] = self.dead_letters.get(name, 0) + 1
        self.pending.services = True

    def set_api(self, name: str, up: bool, invalid_total: float | None) -> None:
        """What a service's REST API said (reachable, invalid payloads in /metrics)."""
        changed = self.api_up.get(name) != up
        self.api_up[name] = up
        if invalid_total is not None and self.invalid_totals.get(name) != invalid_total:
            self.invalid_totals[name] = invalid_total
            changed = True
        self.pending.services = self.pending.services or changed

    def service_rows(self) -> list[dict[str, Any]]:
        """One row per service seen on the bus or configured: state, reason, dead letters."""
        names = sorted(set(self.services) | set(self.settings.service_urls))
        rows = []
        for name in names:
            status = self.services.get(name)
            rows.append(
                {
                    "service": name,
                    "state": status.state if status else "unknown",
                    "reason": (status.reason or "") if status else "no status on the bus yet",
                    "dead_letters": int(
                        self.invalid_totals.get(name, self.dead_letters.get(name, 0))
                    ),
                    "api": {True: "up", False: "down"}.get(self.api_up[name], "")
                    if name in self.api_up
                    else "",
                }
            )
        return rows

    def on_feeder(self, feeder_id: str, msg: FeederState) -> None:
        """A feeder power-flow snapshot."""
        self.feeders[feeder_id] = msg
        self.pending.feeder = self.pending.feeder or feeder_id == self.settings.feeder_id

    def on_curtailment(self, feeder_id: str, msg: PvCurtailmentSet) -> None:
        """The PV limits the voltage coordinator sent."""
        self.curtailments[feeder_id] = msg
        self.pending.feeder = self.pending.feeder or feeder_id == self.settings.feeder_id

    # --- listeners -------------------------------------------------------------------------
    def listen(self, channel: str) -> asyncio.Queue[str]:
        """A queue of JSON events for one page on one channel."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.listeners.setdefault(channel, set()).add(queue)
        return queue

    def forget(self, channel: str, queue: asyncio.Queue[str]) -> None:
        """The page went away."""
        self.listeners.get(channel, set()).discard(queue)

    def _send(self, channel: str, event: dict[str, Any]) -> int:
        queues = self.listeners.get(channel)
        if not queues:
            return 0
        data = json.dumps(event, allow_nan=False, default=_json_default)
        for queue in queues:
            if queue.full():
                queue.get_nowait()  # a slow page loses the oldest event, never the newest
            queue.put_nowait(data)
        return len(queues)

    def flush(self) -> int:
        """Send each listening page what changed since the last flush; returns events sent."""
        pending, self.pending = self.pending, _Pending()
        sent = 0
        if pending.fleet_sites or pending.services:
            event: dict[str, Any] = {
                "sites": {s: self.sites[s].values() for s in sorted(pending.fleet_sites)}
            }
            if pending.services:
                event["services"] = self.service_rows()
            sent += self._send(FLEET, event)
        for site_id in pending.site_values | set(pending.site_log) | pending.site_plans:
            view = self.sites[site_id]
            event = {"values": view.values(), "month_peak_kw": view.month_peak_kw}
            if site_id in pending.site_rows:
                event["rows"] = pending.site_rows[site_id]
            if site_id in pending.site_log:
                event["log"] = pending.site_log[site_id]
            if site_id in pending.site_plans:
                event["plans_changed"] = True
            sent += self._send(site_channel(site_id), event)
        if pending.feeder:
            sent += self._send(FEEDER, self.feeder_event())
        return sent

    def feeder_event(self) -> dict[str, Any]:
        """The feeder page's live part: step, bus colours, highest voltage."""
        state = self.feeders.get(self.settings.feeder_id)
        if state is None:
            return {"step": None, "colours": {}}
        v_by_bus = bus_max_v(state.v_pu)
        return {
            "step": state.step,
            "ts": format_utc(state.ts),
            "colours": feeder_colours(v_by_bus),
            "v_max_pu": max(v_by_bus.values(), default=None),
            "pv_output_kw": round(sum(state.pv_output_kw.values()), 1),
            "pv_available_kw": round(sum(state.pv_available_kw.values()), 1),
        }


def bus_max_v(v_pu: dict[str, list[float | None]]) -> dict[str, float]:
    """The highest phase voltage of each bus, pu (buses without a value are left out)."""
    out = {}
    for bus, phases in v_pu.items():
        values = [v for v in phases if v is not None and math.isfinite(v)]
        if values:
            out[bus] = max(values)
    return out


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return format_utc(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
