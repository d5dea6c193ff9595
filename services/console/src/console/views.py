"""What the pages show, computed without I/O: the 24-hour decisions, chart series, feeder drawing.

Signs follow derbus (load-referenced): net load and grid power > 0 import, < 0 export; battery
> 0 charging. Times are aware UTC; the caller passes "now" (no clock here).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Literal

from derbus.messages import TimeSeries
from derbus.tariff import Tariff

EPS_KW = 0.05
"""Battery or grid power below this (kW) counts as idle / balanced."""

Action = Literal["buy", "sell", "store", "use stored", "hold"]

V_LOW_PU = 0.95
V_HIGH_PU = 1.05


# --- decisions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hour:
    """One hour of the plan: what is expected and what the plan does (kW are hourly means)."""

    start: datetime
    price_per_kwh: float
    feed_in_per_kwh: float
    net_load_kw: float
    """Forecast load − PV (p50): + the site would import without a battery."""
    battery_kw: float
    """The plan: + charging, − discharging."""
    grid_kw: float
    """net_load_kw + battery_kw: + buy from the grid, − sell to it."""
    action: Action
    words: str


@dataclass(frozen=True)
class Decisions:
    """The next 24 hours: each hour, the bill with and without the battery, a summary."""

    start: datetime
    hours: list[Hour]
    bill_with_battery: float
    bill_without_battery: float
    energy_with_battery: float
    energy_without_battery: float
    demand_with_battery: float
    demand_without_battery: float
    summary: list[str]

    @property
    def saving(self) -> float:
        """What the battery plan saves over the 24 hours (currency; < 0 costs more)."""
        return self.bill_without_battery - self.bill_with_battery


def series_mean(series: TimeSeries | None, start: datetime, end: datetime) -> float | None:
    """Time-weighted mean of a step series over [start, end) (None where it has no data)."""
    if series is None:
        return None
    covered = total = 0.0
    for t, value in zip(series.times(), series.values, strict=True):
        a, b = max(t, start), min(t + timedelta(seconds=series.step_s), end)
        if b > a:
            span = (b - a).total_seconds()
            covered += span
            total += value * span
    return total / covered if covered > 0 else None


def _action(battery_kw: float, grid_kw: float) -> Action:
    if battery_kw > EPS_KW:
        return "store"
    if grid_kw < -EPS_KW:
        return "sell"
    if battery_kw < -EPS_KW:
        return "use stored"
    if grid_kw > EPS_KW:
        return "buy"
    return "hold"


def _words(
    h_start: datetime,
    action: Action,
    battery_kw: float,
    grid_kw: float,
    price: float,
    net_kw: float,
) -> str:
    at = h_start.strftime("%H:%M")
    if action == "store":
        source = "PV surplus" if net_kw < 0 else f"the grid at {price:.2f}/kWh"
        return f"{at}: store {battery_kw:.1f} kWh in the battery from {source}."
    if action == "sell":
        extra = f", {-battery_kw:.1f} kWh of it from the battery" if battery_kw < -EPS_KW else ""
        return f"{at}: sell {-grid_kw:.1f} kWh to the grid{extra}."
    if action == "use stored":
        return (
            f"{at}: use {-battery_kw:.1f} kWh from the battery instead of buying at "
            f"{price:.2f}/kWh; buy {max(grid_kw, 0):.1f} kWh."
        )
    if action == "buy":
        return f"{at}: buy {grid_kw:.1f} kWh at {price:.2f}/kWh; the battery holds its charge."
    return f"{at}: hold — the site is balanced and the battery idle."


def _bill(
    grid_15: list[float],
    price_15: list[float],
    feed_in: float,
    month_peak_kw: float,
    demand_charge: float,
) -> tuple[float, float]:
    """Energy cost over the quarter hours and the added demand charge (a new month peak)."""
    energy = sum(
        (p * max(g, 0.0) - feed_in * max(-g, 0.0)) * 0.25
        for g, p in zip(grid_15, price_15, strict=True)
    )
    peak = max([month_peak_kw, *grid_15])
    return energy, demand_charge * max(0.0, peak - month_peak_kw)


def decide(
    *,
    start: datetime,
    load: TimeSeries | None,
    pv: TimeSeries | None,
    schedule: TimeSeries | None,
    tariff: Tariff,
    month_peak_kw: float | None,
) -> Decisions | None:
    """The next 24 hours from `start` (floored to the hour): per hour price, net load, plan.

    Args:
        start: now (aware); the table starts at the top of its hour.
        load: load forecast (kW, p50 values).
        pv: PV forecast (kW generation, positive), or None (no PV).
        schedule: battery schedule (kW, + charging), or None (no battery plan: all hold).
        tariff: prices, feed-in and demand charge.
        month_peak_kw: the month's billed peak so far (kW), or None (taken as 0).

    Returns:
        The decisions, or None without a load forecast covering the start.
    """
    t0 = start.replace(minute=0, second=0, microsecond=0)
    if series_mean(load, t0, t0 + timedelta(hours=1)) is None:
        return None
    quarters = [t0 + timedelta(minutes=15 * k) for k in range(96)]

    def value(series: TimeSeries | None, t: datetime) -> float:
        got = series_mean(series, t, t + timedelta(minutes=15))
        return got if got is not None else 0.0

    net_15 = [value(load, t) - value(pv, t) for t in quarters]
    bat_15 = [value(schedule, t) for t in quarters]
    price_15 = [tariff.price_at(t) for t in quarters]
    grid_15 = [n + b for n, b in zip(net_15, bat_15, strict=True)]
    peak = month_peak_kw or 0.0
    energy_with, demand_with = _bill(
        grid_15, price_15, tariff.feed_in_per_kwh, peak, tariff.demand_charge_per_kw
    )
    energy_without, demand_without = _bill(
        net_15, price_15, tariff.feed_in_per_kwh, peak, tariff.demand_charge_per_kw
    )
    hours = []
    for h in range(24):
        span = slice(4 * h, 4 * h + 4)
        net, bat = sum(net_15[span]) / 4, sum(bat_15[span]) / 4
        grid, price = net + bat, sum(price_15[span]) / 4
        action = _action(bat, grid)
        hours.append(
            Hour(
                start=quarters[4 * h],
                price_per_kwh=round(price, 4),
                feed_in_per_kwh=tariff.feed_in_per_kwh,
                net_load_kw=round(net, 3),
                battery_kw=round(bat, 3),
                grid_kw=round(grid, 3),
                action=action,
                words=_words(quarters[4 * h], action, bat, grid, price, net),
            )
        )
    with_battery, without = energy_with + demand_with, energy_without + demand_without
    return Decisions(
        start=t0,
        hours=hours,
        bill_with_battery=round(with_battery, 2),
        bill_without_battery=round(without, 2),
        energy_with_battery=round(energy_with, 2),
        energy_without_battery=round(energy_without, 2),
        demand_with_battery=round(demand_with, 2),
        demand_without_battery=round(demand_without, 2),
        summary=_summary(hours, with_battery, without, schedule is not None),
    )


def _summary(hours: list[Hour], with_battery: float, without: float, planned: bool) -> list[str]:
    stored = sum(h.battery_kw for h in hours if h.battery_kw > EPS_KW)
    used = -sum(h.battery_kw for h in hours if h.battery_kw < -EPS_KW)
    bought = sum(h.grid_kw for h in hours if h.grid_kw > 0)
    sold = -sum(h.grid_kw for h in hours if h.grid_kw < 0)
    lines = []
    if not planned:
        lines.append("There is no battery plan yet: every hour is shown without the battery.")
    elif stored > 0 or used > 0:
        charge = [h for h in hours if h.action == "store"]
        release = [h for h in hours if h.battery_kw < -EPS_KW]
        parts = []
        if charge:
            parts.append(f"stores {stored:.1f} kWh (from {charge[0].start:%H:%M})")
        if release:
            parts.append(f"gives back {used:.1f} kWh (from {release[0].start:%H:%M})")
        lines.append(f"The battery {' and '.join(parts)}.")
    else:
        lines.append("The plan keeps the battery idle for the next 24 hours.")
    expensive = max(hours, key=lambda h: h.price_per_kwh)
    lines.append(
        f"You buy {bought:.1f} kWh and sell {sold:.1f} kWh; the dearest hour is "
        f"{expensive.start:%H:%M} at {expensive.price_per_kwh:.2f}/kWh."
    )
    if planned:
        delta = without - with_battery
        verb = "saves" if delta >= 0 else "costs"
        lines.append(
            f"Expected bill: {with_battery:.2f} with the battery against {without:.2f} "
            f"without it — the plan {verb} {abs(delta):.2f}."
        )
    else:
        lines.append(f"Expected bill without a battery: {without:.2f}.")
    return lines


# --- charts ---------------------------------------------------------------------------------------
def series_columns(
    series: TimeSeries | None, low: str = "p10", high: str = "p90"
) -> dict[str, Any]:
    """A forecast or schedule as chart columns: unix seconds, values, and its P10/P90 band."""
    if series is None:
        return {"t": [], "p50": [], "low": [], "high": []}
    q = series.quantiles or {}
    return {
        "t": [t.timestamp() for t in series.times()],
        "p50": [round(v, 3) for v in q.get("p50", series.values)],
        "low": [round(v, 3) for v in q.get(low, [])],
        "high": [round(v, 3) for v in q.get(high, [])],
        "issued": series.issue_time.isoformat(),
        "model": series.model,
    }


# --- feeder ---------------------------------------------------------------------------------------
def voltage_colour(v_pu: float | None, low: float = V_LOW_PU, high: float = V_HIGH_PU) -> str:
    """A colour for a voltage: blue below `low`, green at 1 pu, yellow to orange towards `high`,
    red above it, grey without a value (hex)."""
    if v_pu is None or not math.isfinite(v_pu):
        return "#9e9e9e"
    if v_pu > high:
        return "#c62828"
    if v_pu < low:
        return "#1565c0"
    stops = [
        (low, (0x42, 0x85, 0xF4)),
        (1.0, (0x2E, 0x7D, 0x32)),
        (1.0 + 0.6 * (high - 1.0), (0xF9, 0xA8, 0x25)),
        (high, (0xEF, 0x6C, 0x00)),
    ]
    for (xa, ca), (xb, cb) in itertools.pairwise(stops):
        if v_pu <= xb:
            f = (v_pu - xa) / (xb - xa)
            r, g, b = (round(a + (c - a) * f) for a, c in zip(ca, cb, strict=True))
            return f"#{r:02x}{g:02x}{b:02x}"
    return "#ef6c00"


def feeder_colours(v_by_bus: dict[str, float]) -> dict[str, str]:
    """The colour of each bus for its highest phase voltage."""
    return {bus: voltage_colour(v) for bus, v in v_by_bus.items()}


@dataclass(frozen=True)
class FeederDrawing:
    """A feeder's buses on the plane, its branches and where its PV systems are."""

    feeder_id: str
    attribution: str
    xy: dict[str, tuple[float, float]]
    branches: list[tuple[str, str, bool]]
    """(from bus, to bus, normally open)."""
    pv_bus: dict[str, str]
    pv_kw: dict[str, float]

    @classmethod
    def load(cls, feeder_id: str) -> FeederDrawing | None:
        """The drawing shipped with the console for a feeder (None when there is none)."""
        ref = resources.files("console") / "feeders" / f"{feeder_id}.json"
        if not ref.is_file():
            return None
        data = json.loads(ref.read_text())
        return cls(
            feeder_id=data["feeder_id"],
            attribution=data["attribution"],
            xy={k: (float(v[0]), float(v[1])) for k, v in data["xy"].items()},
            branches=[(a, b, bool(o)) for a, b, o in data["branches"]],
            pv_bus=dict(data["pv_bus"]),
            pv_kw={k: float(v) for k, v in data["pv_kw"].items()},
        )

    def svg(self, width: float = 900.0, height: float = 620.0, pad: float = 20.0) -> dict[str, Any]:
        """Screen geometry: bus circles and branch lines scaled into a width x height box."""
        xs = [p[0] for p in self.xy.values()]
        ys = [p[1] for p in self.xy.values()]
        sx = (width - 2 * pad) / ((max(xs) - min(xs)) or 1.0)
        sy = (height - 2 * pad) / ((max(ys) - min(ys)) or 1.0)
        scale = min(sx, sy)

        def at(bus: str) -> tuple[float, float]:
            x, y = self.xy[bus]
            return (
                round(pad + (x - min(xs)) * scale, 1),
                round(height - pad - (y - min(ys)) * scale, 1),
            )

        return {
            "width": width,
            "height": height,
            "buses": {b: at(b) for b in self.xy},
            "lines": [
                (at(a), at(b), opened)
                for a, b, opened in self.branches
                if a in self.xy and b in self.xy
            ],
        }


def pv_by_bus(drawing: FeederDrawing, per_pv: dict[str, float]) -> dict[str, float]:
    """Sum a per-PV quantity (kW) over the PV systems of each bus."""
    out: dict[str, float] = {}
    for pv_id, value in per_pv.items():
        bus = drawing.pv_bus.get(pv_id)
        if bus is not None:
            out[bus] = out.get(bus, 0.0) + value
    return out
