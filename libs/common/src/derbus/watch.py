"""`derbus watch`: a live table of every site's chain (telemetry → forecasts → plan → setpoints).

In a terminal the tables refresh in place (Rich `Live`); under a pipe or a process manager a
plain-text summary is printed every few seconds instead, since `Live` prints nothing there.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.table import Table

from derbus import topics
from derbus.bus.base import Bus, RawMessage
from derbus.messages import (
    BatteryTelemetry,
    DeadLetter,
    FeederState,
    JobPlan,
    KpiReport,
    MeterReading,
    PriceTelemetry,
    PvTelemetry,
    ServiceStatus,
    SetpointAck,
    SetpointCommand,
    TimeSeries,
)

SITE_TELEMETRY = (MeterReading, PvTelemetry, BatteryTelemetry, PriceTelemetry)


@dataclass
class SiteView:
    """Latest values of one site, along the chain."""

    pcc_kw: float | None = None
    pcc_source: str | None = None
    pv_kw: float | None = None
    battery_kw: float | None = None
    soc_pct: float | None = None
    price: float | None = None
    forecasts: dict[str, TimeSeries] = field(default_factory=dict)
    schedule: TimeSeries | None = None
    setpoint: SetpointCommand | None = None
    sent: dict[str, SetpointCommand] = field(default_factory=dict)
    """Recent battery setpoints by id, to pair them with their acks."""
    acked: tuple[SetpointCommand, SetpointAck] | None = None
    """The latest battery setpoint answered `accepted` or `rejected`, and that answer."""
    jobs: JobPlan | None = None
    telemetry: bool = False
    last_seen: float = 0.0

    def forecast_text(self) -> str:
        """`load cold_start, pv linear@v0001` (model per target; p10–p90 when banded)."""
        parts = []
        for target in sorted(self.forecasts):
            f = self.forecasts[target]
            bands = "±" if f.quantiles and {"p10", "p90"} <= set(f.quantiles) else ""
            parts.append(f"{target} {f.model or '?'}{bands}")
        return ", ".join(parts) or "—"

    def schedule_text(self) -> str:
        """The battery schedule's value now and its status."""
        s = self.schedule
        if s is None:
            return "—"
        now_kw = s.value_at(datetime.now(UTC))
        status = s.meta.get("plan_status", "?")
        return f"{_f(now_kw)} kW {status}"

    def setpoint_text(self) -> str:
        """The latest acknowledged battery setpoint (who sent it, the ack), else the latest."""
        if self.acked is not None:
            cmd, ack = self.acked
            return f"{_f(cmd.value)} kW from {cmd.source}: {ack.status}"
        if self.setpoint is None:
            return "—"
        return f"{_f(self.setpoint.value)} kW from {self.setpoint.source}: no ack yet"

    def jobs_text(self) -> str:
        """How many deferrable jobs the load manager planned."""
        if self.jobs is None:
            return "—"
        return f"{len(self.jobs.jobs)} jobs {self.jobs.solve_status}"


@dataclass
class FeederView:
    """Latest state of one feeder and its coordinator's KPIs."""

    state: FeederState | None = None
    kpis: dict[str, float] = field(default_factory=dict)


@dataclass
class WatchState:
    """What `derbus watch` has seen so far."""

    root: str
    sites: dict[str, SiteView] = field(default_factory=dict)
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    feeder_views: dict[str, FeederView] = field(default_factory=dict)
    messages: int = 0
    invalid: int = 0

    @property
    def feeders(self) -> dict[str, FeederState]:
        """The latest state of every feeder that sent one."""
        return {k: v.state for k, v in self.feeder_views.items() if v.state is not None}

    def shown_sites(self) -> dict[str, SiteView]:
        """Sites that sent site telemetry and are not feeders."""
        return {k: v for k, v in self.sites.items() if v.telemetry and k not in self.feeder_views}

    def update(self, raw: RawMessage) -> None:
        """Fold one bus message into the view."""
        self.messages += 1
        spec = topics.spec_for_topic(raw.topic, self.root)
        if spec is None or not raw.payload:
            return
        ids = spec.parse(raw.topic, self.root)
        assert ids is not None
        try:
            message = spec.model.model_validate_json(raw.payload)
        except ValidationError:
            self.invalid += 1
            return
        if isinstance(message, ServiceStatus):
            name = topics.service_label(message.service, ids.site_id)
            known = self.services.get(name)
            if known is None or message.order_key() >= known.order_key():
                self.services[name] = message  # newest by (incarnation, seq), not ts
            return
        if ids.site_id == topics.PLATFORM_SITE or isinstance(message, DeadLetter):
            return  # platform KPIs and dead letters (also an edge gateway's) are not a site
        if spec.category == "grid" or isinstance(message, FeederState):
            # a feeder (its state, the coordinator's limits, the area exchange): never a site
            view = self.feeder_views.setdefault(ids.site_id, FeederView())
            if isinstance(message, FeederState):
                view.state = message
            return
        if ids.site_id in self.feeder_views:
            if isinstance(message, KpiReport):
                self.feeder_views[ids.site_id].kpis = dict(message.values)
            return
        site = self.sites.setdefault(ids.site_id, SiteView())
        site.last_seen = time.monotonic()
        if isinstance(message, SITE_TELEMETRY):
            site.telemetry = True
        if isinstance(message, MeterReading):
            site.pcc_kw, site.pcc_source = message.p_kw, message.source
        elif isinstance(message, PvTelemetry):
            site.pv_kw = message.generation_kw
        elif isinstance(message, BatteryTelemetry):
            site.battery_kw, site.soc_pct = message.p_kw, message.soc_pct
        elif isinstance(message, PriceTelemetry):
            site.price = message.price_per_kwh
        elif isinstance(message, TimeSeries) and spec is topics.FORECAST:
            site.forecasts[ids.device_id] = message
        elif isinstance(message, TimeSeries) and spec is topics.BATTERY_SCHEDULE:
            site.schedule = message
        elif isinstance(message, SetpointCommand) and message.target == "battery_p_kw":
            site.setpoint = site.sent[message.setpoint_id] = message
            if len(site.sent) > 64:  # the recent ones only
                site.sent.pop(next(iter(site.sent)))
        elif (
            isinstance(message, SetpointAck)
            and message.setpoint_id in site.sent
            and message.status in ("accepted", "rejected")  # the answer, not the life's end
        ):
            site.acked = (site.sent[message.setpoint_id], message)
        elif isinstance(message, JobPlan):
            site.jobs = message

    def chain(self) -> dict[str, bool]:
        """Which parts of the value chain have been seen on some site (what `make run` shows).

        telemetry, load and PV forecasts with P10/P90 bands, a battery schedule, a battery
        setpoint of the peak shaver acknowledged `accepted`, a reading through the meter
        gateway, a load manager plan, a feeder state.
        """
        sites = list(self.shown_sites().values())

        def banded(v: SiteView, target: str) -> bool:
            f = v.forecasts.get(target)
            return (
                f is not None
                and f.quantiles is not None
                and {"p10", "p50", "p90"} <= set(f.quantiles)
            )

        return {
            "telemetry": any(v.pcc_source == "edge_simulator" for v in sites),
            "load_forecast": any(banded(v, "load") for v in sites),
            "pv_forecast": any(banded(v, "pv") for v in sites),
            "battery_schedule": any(v.schedule is not None for v in sites),
            "setpoint_acked": any(
                v.acked is not None
                and v.acked[0].source == "peak_shaving"
                and v.acked[1].status == "accepted"
                for v in sites
            ),
            "gateway_reading": any(v.pcc_source == "meter_gateway" for v in sites),
            "load_manager_plan": any(v.jobs is not None for v in sites),
            "feeder_state": bool(self.feeders),
        }

    def render(self, max_sites: int = 30) -> Group:
        """The tables to show."""
        shown = self.shown_sites()
        sites = Table(title=f"sites ({len(shown)}) — PCC + import / − export", expand=False)
        columns = (
            "site",
            "PCC kW",
            "via",
            "PV kW",
            "battery kW",
            "SoC %",
            "price/kWh",
            "forecasts",
            "battery plan",
            "battery setpoint",
            "load manager",
        )
        for col in columns:
            right = col.endswith(("kW", "%", "kWh"))
            sites.add_column(col, justify="right" if right else "left")
        for site_id in sorted(shown)[:max_sites]:
            v = shown[site_id]
            sites.add_row(
                site_id,
                _f(v.pcc_kw),
                v.pcc_source or "—",
                _f(v.pv_kw),
                _f(v.battery_kw),
                _f(v.soc_pct, 1),
                _f(v.price, 3),
                v.forecast_text(),
                v.schedule_text(),
                v.setpoint_text(),
                v.jobs_text(),
            )
        services = Table(title="services", expand=False)
        for col in ("service", "state", "reason"):
            services.add_column(col)
        for name in sorted(self.services):
            s = self.services[name]
            colour = {"online": "green", "degraded": "yellow", "offline": "red"}[s.state]
            services.add_row(name, f"[{colour}]{s.state}[/{colour}]", s.reason or "")
        feeders = Table(title="feeders", expand=False)
        for col in ("feeder", "step", "max V pu", "PV available kW", "PV output kW"):
            feeders.add_column(col, justify="right" if col != "feeder" else "left")
        for feeder_id, f in sorted(self.feeders.items()):
            feeders.add_row(
                feeder_id,
                str(f.step),
                _f(_v_max(f), 4),
                _f(sum(f.pv_available_kw.values()), 0),
                _f(sum(f.pv_output_kw.values()), 0),
            )
        footer = Table.grid()
        footer.add_row(
            f"messages: {self.messages}  invalid: {self.invalid}  root: {self.root}"
            f"  chain: {self._chain_text()}"
        )
        parts = [sites, feeders, services, footer] if self.feeders else [sites, services, footer]
        return Group(*parts)

    def summary(self, now: datetime | None = None) -> str:
        """The same as plain text, one line per site, feeder and service state (for pipes)."""
        stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [
            f"[{stamp}] messages {self.messages}, invalid {self.invalid}, root {self.root};"
            f" chain: {self._chain_text()}"
        ]
        for site_id, v in sorted(self.shown_sites().items()):
            lines.append(
                f"  site {site_id}: PCC {_f(v.pcc_kw)} kW (via {v.pcc_source or '—'}),"
                f" PV {_f(v.pv_kw)} kW, battery {_f(v.battery_kw)} kW, SoC {_f(v.soc_pct, 1)} %,"
                f" price {_f(v.price, 3)}; forecasts: {v.forecast_text()}; battery plan:"
                f" {v.schedule_text()}; setpoint: {v.setpoint_text()}; load manager:"
                f" {v.jobs_text()}"
            )
        for feeder_id, f in sorted(self.feeders.items()):
            lines.append(
                f"  feeder {feeder_id}: step {f.step}, max V {_f(_v_max(f), 4)} pu, PV"
                f" {_f(sum(f.pv_output_kw.values()), 0)} of"
                f" {_f(sum(f.pv_available_kw.values()), 0)} kW"
            )
        states = ", ".join(
            f"{n} {s.state}" + (f" ({s.reason})" if s.reason else "")
            for n, s in sorted(self.services.items())
        )
        lines.append(f"  services: {states or '—'}")
        return "\n".join(lines)

    def _chain_text(self) -> str:
        chain = self.chain()
        missing = [k for k, ok in chain.items() if not ok]
        seen = f"{len(chain) - len(missing)}/{len(chain)} parts seen"
        return seen + (f" (waiting for {', '.join(missing)})" if missing else "")


def _v_max(f: FeederState) -> float | None:
    return max((v for phases in f.v_pu.values() for v in phases if v is not None), default=None)


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


async def watch(
    bus: Bus,
    root: str,
    duration_s: float | None = None,
    refresh_s: float = 1.0,
    plain: bool | None = None,
    summary_every_s: float = 5.0,
) -> WatchState:
    """Show the chain until interrupted or `duration_s` has passed; returns what it saw.

    Args:
        bus: a bus to subscribe with (connected and closed here).
        root: topic root.
        duration_s: stop after this long (None: until cancelled).
        refresh_s: table refresh period in a terminal, s.
        plain: print text summaries instead of the live table; None: when stdout is no TTY.
        summary_every_s: period of the plain summaries, s.
    """
    state = WatchState(root=root)
    plain = not sys.stdout.isatty() if plain is None else plain

    async def on_message(raw: RawMessage) -> None:
        state.update(raw)

    await bus.connect()
    await bus.subscribe(topics.all_topics_filter(root), 0, on_message)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        if plain:
            while deadline is None or time.monotonic() < deadline:
                wait_s = summary_every_s
                if deadline is not None:
                    wait_s = max(0.0, min(wait_s, deadline - time.monotonic()))
                await asyncio.sleep(wait_s)
                print(state.summary(), flush=True)
        else:
            with Live(state.render(), refresh_per_second=4, transient=False) as live:
                while deadline is None or time.monotonic() < deadline:
                    await asyncio.sleep(refresh_s)
                    live.update(state.render())
    finally:
        await bus.close()
    return state
