"""Net-balancing KPIs per local day: efficiency, net export / import, switchings, hours on (pure).

Per settlement period with balance B (Wh, + surplus): the net export is max(B, 0) (paid poorly),
the net import (debt) max(−B, 0). Produced energy is the PV generation integrated from PV
telemetry, or, without it, the gross export at the PCC. Self-consumed = produced − net export,
and the efficiency is self-consumed / produced over the day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from load_manager.balance import PeriodTotals
from load_manager.controller import Decision


def period_figures(totals: PeriodTotals) -> dict[str, float]:
    """KPIs of one closed period: balance, produced, net export / import, efficiency (Wh, ratio)."""
    produced = totals.pv_wh if totals.has_pv else totals.export_wh
    exported = max(totals.balance_wh, 0.0)
    imported = max(-totals.balance_wh, 0.0)
    figures = {
        "balance_wh": totals.balance_wh,
        "produced_wh": produced,
        "exported_wh": exported,
        "imported_wh": imported,
        "gross_import_wh": totals.import_wh,
        "gross_export_wh": totals.export_wh,
    }
    if produced > 0:
        figures["efficiency"] = max(0.0, produced - exported) / produced
    return figures


@dataclass
class DayKpis:
    """KPIs accumulated over one local day."""

    day: date
    produced_wh: float = 0.0
    exported_wh: float = 0.0
    imported_wh: float = 0.0
    periods: int = 0
    switchings: dict[str, int] = field(default_factory=dict)
    on_s: dict[str, float] = field(default_factory=dict)

    def add_period(self, totals: PeriodTotals) -> dict[str, float]:
        """Count a closed settlement period; returns its own figures."""
        figures = period_figures(totals)
        self.produced_wh += figures["produced_wh"]
        self.exported_wh += figures["exported_wh"]
        self.imported_wh += figures["imported_wh"]
        self.periods += 1
        return figures

    def add_cycle(self, decisions: list[Decision], dt_s: float) -> None:
        """Count switchings and on-time of one controller cycle of `dt_s` seconds."""
        for d in decisions:
            self.switchings.setdefault(d.device_id, 0)
            self.on_s.setdefault(d.device_id, 0.0)
            if d.switched:
                self.switchings[d.device_id] += 1
            if d.on:
                self.on_s[d.device_id] += dt_s

    @property
    def efficiency(self) -> float | None:
        """Self-consumed / produced over the day (None without production)."""
        if self.produced_wh <= 0:
            return None
        return max(0.0, self.produced_wh - self.exported_wh) / self.produced_wh

    def values(self) -> dict[str, float]:
        """Flat KPI values (for topics.KPI and /metrics)."""
        out = {
            "produced_wh": self.produced_wh,
            "exported_wh": self.exported_wh,
            "imported_wh": self.imported_wh,
            "periods": float(self.periods),
            "switchings": float(sum(self.switchings.values())),
        }
        if self.efficiency is not None:
            out["efficiency"] = self.efficiency
        for device, count in self.switchings.items():
            out[f"switchings_{device}"] = float(count)
        for device, seconds in self.on_s.items():
            out[f"hours_on_{device}"] = seconds / 3600.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return {
            "day": self.day.isoformat(),
            "produced_wh": self.produced_wh,
            "exported_wh": self.exported_wh,
            "imported_wh": self.imported_wh,
            "periods": self.periods,
            "switchings": self.switchings,
            "on_s": self.on_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DayKpis:
        """Inverse of `to_dict`."""
        return cls(
            day=date.fromisoformat(data["day"]),
            produced_wh=data["produced_wh"],
            exported_wh=data["exported_wh"],
            imported_wh=data["imported_wh"],
            periods=data["periods"],
            switchings=dict(data["switchings"]),
            on_s=dict(data["on_s"]),
        )


@dataclass
class KpiTracker:
    """Today's KPIs and the finished days' summaries."""

    today: DayKpis | None = None
    history: list[DayKpis] = field(default_factory=list)
    keep_days: int = 31

    def roll(self, local_day: date) -> DayKpis | None:
        """Start a new day when the local date changed; returns the finished day."""
        if self.today is None:
            self.today = DayKpis(local_day)
            return None
        if local_day == self.today.day:
            return None
        finished = self.today
        self.history = [*self.history, finished][-self.keep_days :]
        self.today = DayKpis(local_day)
        return finished

    def add_period(self, totals: PeriodTotals, local_day: date) -> dict[str, float]:
        """Count a closed period in the day it belongs to (by its start)."""
        if self.today is None:
            self.today = DayKpis(local_day)
        return self.today.add_period(totals)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return {
            "today": self.today.to_dict() if self.today else None,
            "history": [d.to_dict() for d in self.history],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Inverse of `to_dict`."""
        self.today = DayKpis.from_dict(data["today"]) if data.get("today") else None
        self.history = [DayKpis.from_dict(d) for d in data.get("history", [])]


def local_date(when: datetime, tz: Any) -> date:
    """The local calendar date of an aware instant in zone `tz` (a ZoneInfo)."""
    return when.astimezone(tz).date()
