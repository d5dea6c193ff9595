"""Smart charging of one EV session against PV surplus, price and the site's import limit (pure).

The modes are evcc's (see `derbus.messages.ChargingMode`). Every interval `t` of length `step_s`
has the site's net power without the EV (`net_base_kw[t]`, load-referenced: + import, − export)
and an import price. The EV's power `p[t]` (kW, + charging) is planned as:

1. the mode's own profile: `now` → as much as allowed; `pv` → the PV surplus `−net_base_kw[t]`
   when it reaches `min_kw`, else 0; `minpv` → `max(min_kw, surplus)`; `off` → 0;
2. within `headroom[t] = min(max_kw, import_limit_kw − net_base_kw[t])` (never below 0), so the
   site keeps its import limit;
3. filled in time order until the energy need is met (nothing after the departure);
4. when that falls short of the need before the departure, topped up from the grid in the
   cheapest intervals first (ties: the earlier), each to its headroom — the optimal plan for a
   linear energy cost with box limits. A top-up below `min_kw` in an interval with no power yet
   is raised to `min_kw` (a vehicle does not charge below it) or skipped when that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from derbus.messages import ChargingMode

_EPS_KWH = 1e-9


@dataclass(frozen=True)
class PlanInput:
    """One session's planning problem.

    Attributes:
        step_s: interval length, s.
        net_base_kw: site net power without this EV per interval, kW (+ import, − export).
        price_per_kwh: import price per interval (same length).
        energy_need_kwh: what the user wants by the departure, kWh (>= 0).
        departure_steps: intervals before the departure (None: the whole horizon).
        max_kw: most the connector and vehicle take, kW.
        min_kw: least a vehicle charges at when it charges, kW.
        import_limit_kw: the site's PCC import limit, kW (None: no limit).
        mode: the evcc mode.
    """

    step_s: int
    net_base_kw: list[float]
    price_per_kwh: list[float]
    energy_need_kwh: float
    departure_steps: int | None
    max_kw: float
    min_kw: float
    import_limit_kw: float | None
    mode: ChargingMode


@dataclass(frozen=True)
class Plan:
    """The planned EV power per interval and what it delivers.

    Attributes:
        p_kw: planned power per interval, kW (+ charging).
        planned_kwh: energy before the departure, kWh.
        pv_kwh: of which covered by the PV surplus, kWh.
        cost: grid part x import price, currency.
        meets_need: planned_kwh reaches the need.
    """

    p_kw: list[float]
    planned_kwh: float
    pv_kwh: float
    cost: float
    meets_need: bool


def headroom_kw(inp: PlanInput) -> list[float]:
    """The most the EV may draw per interval (connector rating and site import limit), kW."""
    out = []
    for net in inp.net_base_kw:
        room = inp.max_kw
        if inp.import_limit_kw is not None:
            room = min(room, inp.import_limit_kw - net)
        out.append(max(0.0, room))
    return out


def _mode_profile(inp: PlanInput, room: list[float]) -> list[float]:
    out = []
    for net, cap in zip(inp.net_base_kw, room, strict=True):
        surplus = max(0.0, -net)
        if inp.mode == "now":
            p = cap
        elif inp.mode == "pv":
            p = min(surplus, cap) if surplus >= inp.min_kw else 0.0
        elif inp.mode == "minpv":
            p = min(max(inp.min_kw, surplus), cap)
        else:
            p = 0.0
        out.append(p if p >= inp.min_kw else 0.0)
    return out


def plan_session(inp: PlanInput) -> Plan:
    """Plan one session (see the module docstring for the rules).

    Returns:
        The plan over the whole horizon; intervals from the departure on are 0.
    """
    n = len(inp.net_base_kw)
    if len(inp.price_per_kwh) != n:
        raise ValueError("net_base_kw and price_per_kwh differ in length")
    hours = inp.step_s / 3600.0
    depart = n if inp.departure_steps is None else max(0, min(n, inp.departure_steps))
    room = headroom_kw(inp)
    p = _mode_profile(inp, room)
    # 3. in time order until the need is met, nothing after the departure
    left = inp.energy_need_kwh
    for t in range(n):
        if t >= depart or left <= _EPS_KWH:
            p[t] = 0.0
            continue
        p[t] = min(p[t], left / hours)
        left -= p[t] * hours
    # 4. grid top-up in the cheapest intervals before the departure
    if inp.mode != "off" and left > _EPS_KWH:
        for t in sorted(range(depart), key=lambda i: (inp.price_per_kwh[i], i)):
            if left <= _EPS_KWH:
                break
            extra = min(room[t] - p[t], left / hours)
            if extra <= 0:
                continue
            if p[t] + extra < inp.min_kw:
                if room[t] < inp.min_kw:
                    continue
                extra = inp.min_kw - p[t]
            p[t] += extra
            left -= extra * hours
    energy = sum(p[:depart]) * hours
    pv = cost = 0.0
    for t in range(depart):
        from_pv = min(p[t], max(0.0, -inp.net_base_kw[t]))
        pv += from_pv * hours
        cost += (p[t] - from_pv) * hours * inp.price_per_kwh[t]
    return Plan(
        p_kw=p,
        planned_kwh=energy,
        pv_kwh=pv,
        cost=cost,
        meets_need=energy >= inp.energy_need_kwh - 1e-6,
    )


@dataclass
class SessionMeter:
    """Measured KPIs of a session, accumulated sample by sample.

    The EV's share of the site's import is the grid part of its energy: with `pcc_kw` the site's
    net power (EV included, + import) and `site_ev_kw` all EVs of the site, a fraction
    `min(1, max(0, pcc_kw) / site_ev_kw)` of each EV's energy came from the grid, the rest from PV
    surplus. Without a PCC reading all of it counts as grid (the conservative side).
    """

    energy_kwh: float = 0.0
    pv_kwh: float = 0.0
    grid_kwh: float = 0.0
    cost: float = 0.0

    def add(
        self, e_kwh: float, pcc_kw: float | None, site_ev_kw: float, price_per_kwh: float
    ) -> None:
        """Book `e_kwh` delivered into the vehicle since the last sample.

        Args:
            e_kwh: energy delivered since the last sample, kWh (negative values are ignored).
            pcc_kw: the site's net power now, kW (+ import), None when unknown.
            site_ev_kw: the power of all EVs of the site now, kW (>= 0).
            price_per_kwh: the import price now.
        """
        if e_kwh <= 0:
            return
        if pcc_kw is None or site_ev_kw <= 0:
            grid_share = 1.0
        else:
            grid_share = min(1.0, max(0.0, pcc_kw) / site_ev_kw)
        self.energy_kwh += e_kwh
        self.grid_kwh += e_kwh * grid_share
        self.pv_kwh += e_kwh * (1.0 - grid_share)
        self.cost += e_kwh * grid_share * price_per_kwh

    @property
    def pv_share_pct(self) -> float:
        """PV share of the energy, %."""
        return 100.0 * self.pv_kwh / self.energy_kwh if self.energy_kwh > 0 else 0.0
