"""`derbus watch`: a live terminal table of every site's PCC power, PV, battery and service states."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.table import Table

from derbus import topics
from derbus.bus.base import Bus, RawMessage
from derbus.messages import (
    BatteryTelemetry,
    FeederState,
    MeterReading,
    PriceTelemetry,
    PvTelemetry,
    ServiceStatus,
)


@dataclass
class SiteView:
    """Latest values of one site."""

    pcc_kw: float | None = None
    pv_kw: float | None = None
    battery_kw: float | None = None
    soc_pct: float | None = None
    price: float | None = None
    last_seen: float = 0.0


@dataclass
class WatchState:
    """What `derbus watch` has seen so far."""

    root: str
    sites: dict[str, SiteView] = field(default_factory=dict)
    services: dict[str, ServiceStatus] = field(default_factory=dict)
    feeders: dict[str, FeederState] = field(default_factory=dict)
    messages: int = 0
    invalid: int = 0

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
            known = self.services.get(message.service)
            if known is None or message.order_key() >= known.order_key():
                self.services[message.service] = message  # newest by (incarnation, seq), not ts
            return
        if isinstance(message, FeederState):
            self.feeders[message.feeder_id] = message
            return
        if ids.site_id == topics.PLATFORM_SITE or spec.category == "grid":
            return  # platform KPIs, dead letters and feeder exchanges are not a site
        site = self.sites.setdefault(ids.site_id, SiteView())
        site.last_seen = time.monotonic()
        if isinstance(message, MeterReading):
            site.pcc_kw = message.p_kw
        elif isinstance(message, PvTelemetry):
            site.pv_kw = message.generation_kw
        elif isinstance(message, BatteryTelemetry):
            site.battery_kw, site.soc_pct = message.p_kw, message.soc_pct
        elif isinstance(message, PriceTelemetry):
            site.price = message.price_per_kwh

    def render(self, max_sites: int = 30) -> Group:
        """The tables to show."""
        sites = Table(title=f"sites ({len(self.sites)}) — PCC + import / − export", expand=False)
        for col in ("site", "PCC kW", "PV kW", "battery kW", "SoC %", "price/kWh"):
            sites.add_column(col, justify="right" if col != "site" else "left")
        for site_id in sorted(self.sites)[:max_sites]:
            v = self.sites[site_id]
            sites.add_row(
                site_id,
                _f(v.pcc_kw),
                _f(v.pv_kw),
                _f(v.battery_kw),
                _f(v.soc_pct, 1),
                _f(v.price, 3),
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
        for feeder_id in sorted(self.feeders):
            f = self.feeders[feeder_id]
            v_max = max(
                (v for phases in f.v_pu.values() for v in phases if v is not None), default=None
            )
            feeders.add_row(
                feeder_id, str(f.step), _f(v_max, 4), _f(sum(f.pv_available_kw.values()), 0),
                _f(sum(f.pv_output_kw.values()), 0),
            )  # fmt: skip
        footer = Table.grid()
        footer.add_row(f"messages: {self.messages}  invalid: {self.invalid}  root: {self.root}")
        parts = [sites, feeders, services, footer] if self.feeders else [sites, services, footer]
        return Group(*parts)


def _f(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


async def watch(
    bus: Bus, root: str, duration_s: float | None = None, refresh_s: float = 1.0
) -> WatchState:
    """Show the live table until interrupted or `duration_s` has passed; returns what it saw."""
    state = WatchState(root=root)

    async def on_message(raw: RawMessage) -> None:
        state.update(raw)

    await bus.connect()
    await bus.subscribe(topics.all_topics_filter(root), 0, on_message)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        with Live(state.render(), refresh_per_second=4, transient=False) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(refresh_s)
                live.update(state.render())
    finally:
        await bus.close()
    return state
