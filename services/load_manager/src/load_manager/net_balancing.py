"""Net balancing of one site: PCC/PV readings → settlement-period balance → load setpoints, KPIs.

`NetBalancing` owns the balance integrator, the rule controller, the setpoint refresher, the
KPI tracker and their state file; the service's handlers call `on_meter`, `on_pv`, `cycle`,
`publish_day` and `reconfigure`, and the REST routes read `balance()` and `kpis_view()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from prometheus_client import Gauge

from derbus import topics
from derbus.jsonfile import read_json, write_json
from derbus.messages import KpiReport
from load_manager.balance import BalanceIntegrator, PeriodTotals, period_bounds
from load_manager.controller import (
    CycleInputs,
    NetBalanceController,
    SetpointRefresher,
    load_on_command,
)
from load_manager.kpi import KpiTracker, local_date
from load_manager.settings import Settings

if TYPE_CHECKING:
    from derbus.service import Service

log = logging.getLogger(__name__)

NAME = "load_manager"
NET_STATE_FILE = "net_balance.json"


class NetBalancing:
    """The net-balancing loop of the service's site (state kept across restarts).

    Args:
        service: the service it publishes through (settings are read at each call).
        clock: the current time.
    """

    def __init__(self, service: Service[Settings, Any], clock: Callable[[], datetime]) -> None:
        s = service.settings
        self.service = service
        self.clock = clock
        self.site = s.site.id
        self.tz = ZoneInfo(s.site.timezone)
        self.file: Path = s.data_dir / NET_STATE_FILE
        self.integrator = BalanceIntegrator(s.settlement_period_s, s.site.timezone, s.max_gap_s)
        self.controller = NetBalanceController(
            loads=list(s.loads),
            rule=s.rule,
            min_on_time_rule_s=s.min_on_time_rule_s,
            ttc_target_wh=s.ttc_target_wh,
            ttc_margin_wh=s.ttc_margin_wh,
            surplus_tau_s=s.ttc_surplus_tau_s,
        )
        self.refresher = SetpointRefresher(s.setpoint_ttl_s, s.refresh_margin_s)
        self.kpis = KpiTracker()
        self.last_cycle_at: datetime | None = None
        self.last_period: dict[str, Any] | None = None
        reg = service.metrics.registry
        self.balance_gauge = Gauge(
            "derbus_load_manager_period_balance_wh",
            "Settlement-period balance so far, Wh (+ surplus exported / - debt imported)",
            registry=reg,
        )
        self.load_gauge = Gauge(
            "derbus_load_manager_load_on",
            "1 when the load is commanded on",
            ["device"],
            registry=reg,
        )
        self.day_gauge = Gauge(
            "derbus_load_manager_day_kpi",
            "Today's net-balancing KPIs (efficiency ratio, Wh, counts, h)",
            ["kpi"],
            registry=reg,
        )

    # --- persistence ---------------------------------------------------------------------------
    def save(self) -> None:
        """Write balance, load states and KPIs to the state file (atomically)."""
        write_json(
            self.file,
            {
                "balance": self.integrator.to_dict(),
                "loads": self.controller.to_dict(),
                "kpis": self.kpis.to_dict(),
            },
        )

    def restore(self, now: datetime) -> None:
        """Continue from the state file: the open period's balance and loads, closed periods
        counted into the KPIs."""
        saved = read_json(self.file)
        closed: list[PeriodTotals] = []
        if isinstance(saved, dict):
            if saved.get("kpis"):
                self.kpis.restore(saved["kpis"])
            closed = self.integrator.restore(saved.get("balance") or {}, now)
            if self.integrator.current is not None and not closed:
                self.controller.restore(saved.get("loads") or {})
        self.integrator.roll(now)
        for totals in closed:
            self.kpis.add_period(totals, local_date(totals.start, self.tz))
        self.kpis.roll(local_date(now, self.tz))

    # --- handlers ------------------------------------------------------------------------------
    async def on_meter(self, ts: datetime, p_kw: float) -> None:
        """A PCC reading (import +)."""
        await self.close_periods(self.integrator.add_meter(ts, p_kw))

    async def on_pv(self, ts: datetime, generation_kw: float) -> None:
        """A PV reading (generation +)."""
        await self.close_periods(self.integrator.add_pv(ts, generation_kw))

    async def close_periods(self, closed: list[PeriodTotals]) -> None:
        """Count finished settlement periods and publish each one's KPIs."""
        for totals in closed:
            figures = self.kpis.add_period(totals, local_date(totals.start, self.tz))
            self.last_period = {
                "start": totals.start.isoformat(),
                "end": totals.end.isoformat(),
                **figures,
            }
            await self.publish_kpi(
                KpiReport(
                    ts=self.clock(),
                    source=NAME,
                    name="net_balance_period",
                    values=figures,
                    period_start=totals.start,
                    period_end=totals.end,
                )
            )

    async def publish_kpi(self, report: KpiReport) -> None:
        """Publish a KPI report of the site."""
        await self.service.publish(topics.KPI, report, site_id=self.site, device_id=NAME)

    async def cycle(self) -> None:
        """One controller cycle: roll periods and days, decide, (re)send setpoints, save."""
        s = self.service.settings
        now = self.clock()
        await self.close_periods(self.integrator.roll(now))
        finished = self.kpis.roll(local_date(now, self.tz))
        if finished is not None:
            await self.publish_kpi(
                KpiReport(ts=now, source=NAME, name="net_balance_daily", values=finished.values())
            )
        reading_ts, p_kw = self.integrator.last_meter
        meter_ok = reading_ts is not None and (now - reading_ts).total_seconds() <= s.meter_stale_s
        assert self.integrator.current is not None
        inputs = CycleInputs(
            balance_wh=self.integrator.balance_wh,
            pcc_p_kw=p_kw if meter_ok else 0.0,
            period_end=self.integrator.current.end,
            local_hour=now.astimezone(self.tz).hour,
            meter_ok=meter_ok,
        )
        decisions = self.controller.step(inputs, now)
        dt_s = 0.0
        if self.last_cycle_at is not None:
            dt_s = min(max(0.0, (now - self.last_cycle_at).total_seconds()), 3 * s.cycle_s)
        self.last_cycle_at = now
        assert self.kpis.today is not None
        self.kpis.today.add_cycle(decisions, dt_s)
        for d in decisions:
            if d.switched:
                log.info("%s %s: %s", d.device_id, "on" if d.on else "off", d.reason)
            self.load_gauge.labels(device=d.device_id).set(1 if d.on else 0)
        for device_id, on in self.refresher.due(decisions, now):
            await self.service.publish(
                topics.SETPOINT,
                load_on_command(now, on, s.setpoint_ttl_s, NAME),
                site_id=self.site,
                device_id=device_id,
            )
        if meter_ok:
            await self.service.clear_degraded("meter")
        else:
            await self.service.set_degraded(
                "meter", f"no {s.meter_device_id} reading for {s.meter_stale_s:g} s: loads off"
            )
        self.balance_gauge.set(self.integrator.balance_wh)
        for key, value in self.kpis.today.values().items():
            self.day_gauge.labels(kpi=key).set(value)
        self.save()

    async def publish_day(self) -> None:
        """Publish today's KPIs so far with the open period's balance."""
        if self.kpis.today is None:
            return
        now = self.clock()
        start, end = period_bounds(
            now, self.service.settings.settlement_period_s, self.service.settings.site.timezone
        )
        values = {**self.kpis.today.values(), "period_balance_wh": self.integrator.balance_wh}
        await self.publish_kpi(
            KpiReport(
                ts=now,
                source=NAME,
                name="net_balance_day",
                values=values,
                period_start=start,
                period_end=end,
            )
        )

    def reconfigure(self, new: Settings) -> None:
        """Apply changed rule and load settings."""
        self.controller.reconfigure(
            list(new.loads), new.rule, new.min_on_time_rule_s, new.ttc_target_wh, new.ttc_margin_wh
        )
        self.controller.surplus_tau_s = new.ttc_surplus_tau_s

    # --- views ---------------------------------------------------------------------------------
    def balance(self) -> dict[str, Any]:
        """The open period's balance, the loads' states and today's KPIs."""
        current = self.integrator.current
        return {
            "rule": self.service.settings.rule,
            "period_start": current.start.isoformat() if current else None,
            "period_end": current.end.isoformat() if current else None,
            "balance_wh": self.integrator.balance_wh,
            "loads": self.controller.to_dict(),
            "last_period": self.last_period,
            "today": self.kpis.today.values() if self.kpis.today else None,
        }

    def kpis_view(self) -> dict[str, Any]:
        """Today's KPIs and the daily summaries of past days."""
        today = self.kpis.today
        return {
            "today": today.to_dict() | {"values": today.values()} if today else None,
            "days": [d.to_dict() | {"values": d.values()} for d in self.kpis.history],
        }
