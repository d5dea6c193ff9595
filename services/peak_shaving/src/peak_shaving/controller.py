"""The Power Management Application: a per-reading controller keeping PCC power inside its limits.

Signs are load-referenced: PCC import > 0, battery charging > 0. Site power without the battery
is `pcc_p_kw - battery_p_kw`. One `PeakShavingController` serves many sites; its state is keyed by
site. It never reads the clock: every input carries its timestamp.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator

from peak_shaving.site_config import SiteConfig

Mode = Literal["import_limit", "export_limit", "demand", "schedule", "idle"]
_EPS_KW = 1e-9
_TTL_READINGS = 3.0  # a command outlives this many reading intervals (two readings may be lost)
_MIN_TTL_S = 2.0  # but never less than this, s (transport delay, clock skew)


class PmaConfig(SiteConfig):
    """Declared configuration of the PMA (limits and battery from `SiteConfig`)."""

    margin_kw: float = Field(
        default=0.5, ge=0, description="how far inside a limit the PMA aims when it acts, kW"
    )
    deadband_kw: float = Field(
        default=0.2, ge=0, description="setpoint changes smaller than this are not made, kW"
    )
    ramp_kw_per_s: float = Field(
        default=100.0,
        gt=0,
        description="fastest schedule-following change, kW/s (limit enforcement is not ramped)",
    )
    setpoint_ttl_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="longest TTL of a battery setpoint, s; each command lives 3 reading"
        " intervals (at least 2 s, at most this), so once the PMA stops commanding the"
        " battery's own default behaviour resumes within that time",
    )
    battery_match_s: float = Field(
        default=0.0,
        ge=0,
        description="a battery reading older than the meter reading by more than this, with a"
        " setpoint sent since, is stale: the setpoint stands in for its power, s",
    )
    max_gap_s: float = Field(
        default=10.0, gt=0, description="longest gap between readings credited to KPIs, s"
    )
    demand_interval_s: int = Field(
        default=900, gt=0, description="billing demand interval, s (clock-aligned)"
    )
    billing_timezone: str = Field(
        default="UTC", description="IANA time zone in which billing months start"
    )

    @field_validator("billing_timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        ZoneInfo(value)
        return value


@dataclass(frozen=True, slots=True)
class PmaInputs:
    """One cycle's inputs for one site.

    Attributes:
        site_id: the site.
        ts: time of the PCC reading (aware UTC).
        pcc_p_kw: PCC power, kW, + import / - export.
        battery_p_kw: latest measured battery power, kW, + charge (None: not known yet).
        battery_ts: time of that battery reading.
        soc_pct: latest battery SoC, % (None: unknown, no SoC limiting).
        max_charge_kw: charge limit the battery reports now, kW (None: the configured rating).
        max_discharge_kw: discharge limit the battery reports now, kW (None: the rating).
        schedule_p_kw: EMA battery power for the current interval, kW (None: limits only).
        plan_peak_kw: the EMA's planned highest 15-minute import over its outlook, kW; held as
            a demand threshold like `demand_target_kw` (None: not used).
    """

    site_id: str
    ts: datetime
    pcc_p_kw: float
    battery_p_kw: float | None = None
    battery_ts: datetime | None = None
    soc_pct: float | None = None
    max_charge_kw: float | None = None
    max_discharge_kw: float | None = None
    schedule_p_kw: float | None = None
    plan_peak_kw: float | None = None


@dataclass(frozen=True, slots=True)
class PmaDecision:
    """The controller's answer for one cycle.

    Attributes:
        battery_p_kw: battery setpoint, kW, + charge / - discharge.
        mode: what decided it (a limit, the demand window, the schedule, or idle).
        on_limit: a limit (import, export or demand cap) is binding this cycle.
        site_p_kw: site power without the battery, kW.
        pcc_expected_kw: PCC power once the setpoint applies, kW.
        import_cap_kw: the import ceiling aimed at (limit or demand cap, minus margin), kW.
        violation_kw: how far the expected PCC power stays beyond a hard limit, kW, >= 0.
        command: a setpoint is to be sent; False when idle (in limits, no demand action, no
            schedule): nothing is sent, the last command lapses and the device's own default
            (e.g. self-consumption) resumes. `battery_p_kw` is then 0 (nominal).
        ttl_s: TTL of the command, s: 3 reading intervals, at least 2 s, at most
            `setpoint_ttl_s` (commands are refreshed on every reading while the PMA acts).
        ramp_limited: the ramp limit cut the move towards the schedule.
        deadband_held: the previous setpoint was kept (change below the deadband).
        discharge_room_kw: how much more the battery could discharge than `battery_p_kw`, kW
            (0: at its discharge limit, reserve or SoC floor); the EV limiter's second resort.
    """

    battery_p_kw: float
    mode: Mode
    on_limit: bool
    site_p_kw: float
    pcc_expected_kw: float
    import_cap_kw: float
    violation_kw: float
    command: bool = True
    ttl_s: float = 10.0
    ramp_limited: bool = False
    deadband_held: bool = False
    discharge_room_kw: float = 0.0


@dataclass
class SiteKpis:
    """Accumulated figures of one site (time in s, energy in kWh)."""

    readings: int = 0
    commands: int = 0
    time_on_limit_s: float = 0.0
    limit_events: int = 0
    unfixed_violation_s: float = 0.0
    unfixed_violation_kwh: float = 0.0
    measured_violation_s: float = 0.0
    measured_violation_kwh: float = 0.0


@dataclass
class SiteState:
    """What the controller remembers about one site between cycles."""

    last_ts: datetime | None = None
    reading_interval_s: float | None = None
    last_setpoint_kw: float | None = None
    last_setpoint_ts: datetime | None = None
    last_decision: PmaDecision | None = None
    kpis: SiteKpis = field(default_factory=SiteKpis)
    interval_start: datetime | None = None
    interval_import_kws: float = 0.0
    month: tuple[int, int] | None = None
    month_peak_kw: float = 0.0
    last_interval_avg_kw: float | None = None
    rolling: deque[tuple[datetime, float, float]] = field(default_factory=deque)
    rolling_import_kws: float = 0.0
    rolling_s: float = 0.0


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class PeakShavingController:
    """Keeps each site's PCC power inside its import/export limits and its demand target.

    Per cycle: above the import ceiling the battery discharges, below the export floor it
    charges, just enough to bring the PCC back inside with `margin_kw`. Otherwise it follows the
    EMA schedule (ramp-limited, with a deadband), clipped so that following it cannot push the
    PCC out. With nothing to enforce (inside the limits, no demand action, no schedule) it sends
    nothing: its last command lapses by its TTL and the battery's own default resumes. The import ceiling is the import limit or, with a demand target, what the rest of the
    clock-aligned demand interval may still import so that its average stays at
    max(target, month's peak so far). SoC limits and the reserve bound what the battery may do.

    Args:
        config: the declared configuration (may be replaced at run time via `config`).
    """

    def __init__(self, config: PmaConfig) -> None:
        self.config = config
        self._sites: dict[str, SiteState] = {}

    # --- queries ---------------------------------------------------------------------------------
    def sites(self) -> list[str]:
        """Sites seen so far."""
        return sorted(self._sites)

    def state(self, site_id: str) -> SiteState:
        """The state of one site (created empty on first use)."""
        state = self._sites.get(site_id)
        if state is None:
            state = self._sites[site_id] = SiteState()
        return state

    def month_peak_kw(self, site_id: str) -> float:
        """Highest completed 15-minute average import of the current month, kW."""
        return self.state(site_id).month_peak_kw

    def kpis(self, site_id: str) -> dict[str, float]:
        """KPIs of one site: time on limit, events, violations (unfixed and measured), demand."""
        state = self.state(site_id)
        k = state.kpis
        rolling = state.rolling_import_kws / state.rolling_s if state.rolling_s > 0 else 0.0
        values = {
            "readings": float(k.readings),
            "setpoints_sent": float(k.commands),
            "time_on_limit_s": k.time_on_limit_s,
            "limit_events": float(k.limit_events),
            "unfixed_violation_s": k.unfixed_violation_s,
            "unfixed_violation_kwh": k.unfixed_violation_kwh,
            "measured_violation_s": k.measured_violation_s,
            "measured_violation_kwh": k.measured_violation_kwh,
            "month_peak_kw": state.month_peak_kw,
            "rolling_15min_import_kw": rolling,
        }
        if state.last_decision is not None and state.last_decision.command:
            values["battery_setpoint_kw"] = state.last_decision.battery_p_kw
        return values

    # --- the cycle -------------------------------------------------------------------------------
    def step(self, inputs: PmaInputs) -> PmaDecision:
        """Decide the battery setpoint for one PCC reading of one site.

        Args:
            inputs: the reading and what is known about the battery and the schedule.

        Returns:
            The decision; the site's state (KPIs, demand window, last setpoint) is updated.
        """
        cfg = self.config
        state = self.state(inputs.site_id)
        dt_s = 0.0
        if state.last_ts is not None:
            gap_s = (inputs.ts - state.last_ts).total_seconds()
            if gap_s > 0:
                state.reading_interval_s = gap_s
            dt_s = _clip(gap_s, 0.0, cfg.max_gap_s)
        self._account(state, inputs, dt_s)

        # Battery capability now (SoC and reported limits).
        charge_max = cfg.battery_max_charge_kw
        if inputs.max_charge_kw is not None:
            charge_max = min(charge_max, inputs.max_charge_kw)
        discharge_max = cfg.battery_max_discharge_kw
        if inputs.max_discharge_kw is not None:
            discharge_max = min(discharge_max, inputs.max_discharge_kw)
        soc = inputs.soc_pct
        if soc is not None and soc >= cfg.soc_max_pct:
            charge_max = 0.0
        if soc is not None and soc <= cfg.soc_min_pct:
            discharge_max = 0.0

        battery_kw = self._battery_power(state, inputs, charge_max, discharge_max)
        site_kw = inputs.pcc_p_kw - battery_kw

        # The band of PCC power to keep: export floor .. import ceiling (limit or demand cap).
        floor_kw = cfg.export_limit_kw + cfg.margin_kw
        ceiling_kw = cfg.import_limit_kw - cfg.margin_kw
        demand_cap = self._demand_cap(state, inputs.ts, inputs.plan_peak_kw)
        demand_binds = demand_cap is not None and demand_cap - cfg.margin_kw < ceiling_kw
        if demand_cap is not None and demand_binds:
            ceiling_kw = max(demand_cap - cfg.margin_kw, 0.0)
        if ceiling_kw < floor_kw:  # margins wider than the band: aim at its middle
            ceiling_kw = floor_kw = (max(ceiling_kw, cfg.export_limit_kw) + floor_kw) / 2
        low_kw, high_kw = floor_kw - site_kw, ceiling_kw - site_kw

        # What the schedule asks, within the reserve and the battery's capability. Without a
        # schedule the PMA asks nothing: 0 kW stands for "the battery adds nothing" when
        # checking the limits, and is not sent unless a limit needs the battery.
        scheduled = inputs.schedule_p_kw is not None
        wanted = inputs.schedule_p_kw if inputs.schedule_p_kw is not None else 0.0
        if wanted < 0 and soc is not None and soc <= cfg.reserve_pct:
            wanted = 0.0
        wanted = _clip(wanted, -discharge_max, charge_max)

        previous = state.last_setpoint_kw if state.last_setpoint_kw is not None else battery_kw
        ramp_limited = deadband_held = False
        if scheduled and state.last_ts is not None:
            step_kw = cfg.ramp_kw_per_s * max(dt_s, 1e-3)
            ramped = _clip(wanted, previous - step_kw, previous + step_kw)
            ramp_limited = abs(ramped - wanted) > _EPS_KW
            wanted = ramped
        if scheduled and abs(wanted - previous) < cfg.deadband_kw and wanted != previous:
            wanted, deadband_held = previous, True

        # Limits override the schedule, the ramp and the deadband.
        mode: Mode = "schedule" if scheduled else "idle"
        target = wanted
        if target > high_kw + _EPS_KW:
            target, mode = high_kw, "demand" if demand_binds else "import_limit"
            deadband_held = False
        elif target < low_kw - _EPS_KW:
            target, mode = low_kw, "export_limit"
            deadband_held = False
        elif not scheduled and not low_kw - _EPS_KW <= battery_kw <= high_kw + _EPS_KW:
            # idle would be fine, but what the battery does now (its own default, or a command
            # of ours still lapsing) pushes the PCC out: command the nearest power that does not
            target = _clip(battery_kw, low_kw, high_kw)
            if battery_kw > high_kw:
                mode = "demand" if demand_binds else "import_limit"
            else:
                mode = "export_limit"
        target = _clip(target, -discharge_max, charge_max)
        on_limit = mode in ("import_limit", "export_limit", "demand")
        command = mode != "idle"
        ttl_s = cfg.setpoint_ttl_s
        if state.reading_interval_s is not None:
            ttl_s = min(ttl_s, max(_TTL_READINGS * state.reading_interval_s, _MIN_TTL_S))

        pcc_kw = site_kw + target
        violation = max(pcc_kw - cfg.import_limit_kw, cfg.export_limit_kw - pcc_kw, 0.0)
        if violation < 1e-6:
            violation = 0.0
        decision = PmaDecision(
            battery_p_kw=target,
            mode=mode,
            on_limit=on_limit,
            site_p_kw=site_kw,
            pcc_expected_kw=pcc_kw,
            import_cap_kw=ceiling_kw,
            violation_kw=violation,
            command=command,
            ttl_s=ttl_s,
            ramp_limited=ramp_limited,
            deadband_held=deadband_held,
            discharge_room_kw=max(target + discharge_max, 0.0),
        )
        if on_limit and not (state.last_decision and state.last_decision.on_limit):
            state.kpis.limit_events += 1
        state.last_decision = decision
        if command:
            state.kpis.commands += 1
            state.last_setpoint_kw, state.last_setpoint_ts = target, inputs.ts
        else:  # the last command lapses; the measured battery power tells what the device does
            state.last_setpoint_kw = None
        state.last_ts = inputs.ts
        return decision

    # --- pieces ----------------------------------------------------------------------------------
    def _battery_power(
        self, state: SiteState, inputs: PmaInputs, charge_max: float, discharge_max: float
    ) -> float:
        """Battery power now, kW: the reading, or the last setpoint when the reading predates it.

        When the meter reading of a cycle arrives before the battery reading of the same cycle,
        the battery reading in hand is one cycle old and misses the setpoint sent since; the
        setpoint, within what the battery can do now, is then the better estimate.
        """
        measured, last = inputs.battery_p_kw, state.last_setpoint_kw
        estimate = _clip(last, -discharge_max, charge_max) if last is not None else None
        if measured is None:
            return estimate if estimate is not None else 0.0
        battery_ts, last_ts = inputs.battery_ts, state.last_setpoint_ts
        if estimate is None or last_ts is None or battery_ts is None:
            return measured
        stale = battery_ts < inputs.ts - timedelta(seconds=self.config.battery_match_s)
        return estimate if stale and last_ts >= battery_ts else measured

    def _account(self, state: SiteState, inputs: PmaInputs, dt_s: float) -> None:
        """Credit the last `dt_s` seconds to KPIs, the demand interval and the rolling window."""
        cfg = self.config
        k = state.kpis
        k.readings += 1
        last = state.last_decision
        if last is not None and dt_s > 0:
            if last.on_limit:
                k.time_on_limit_s += dt_s
            if last.violation_kw > 0:
                k.unfixed_violation_s += dt_s
                k.unfixed_violation_kwh += last.violation_kw * dt_s / 3600
        measured = max(
            inputs.pcc_p_kw - cfg.import_limit_kw, cfg.export_limit_kw - inputs.pcc_p_kw, 0.0
        )
        if measured > 0 and dt_s > 0:
            k.measured_violation_s += dt_s
            k.measured_violation_kwh += measured * dt_s / 3600

        # Demand: clock-aligned intervals of import energy; the month's highest average.
        start = self._interval_start(inputs.ts)
        month = self._month(inputs.ts)
        import_kw = max(inputs.pcc_p_kw, 0.0)
        since_start_s = (inputs.ts - start).total_seconds()
        if state.interval_start is not None and start != state.interval_start:
            # the part of the gap before `start` belongs to the interval being closed
            state.interval_import_kws += import_kw * max(dt_s - since_start_s, 0.0)
            average = state.interval_import_kws / cfg.demand_interval_s
            state.last_interval_avg_kw = average
            if self._month(state.interval_start) == state.month:
                state.month_peak_kw = max(state.month_peak_kw, average)
            state.interval_import_kws = 0.0
        if month != state.month:
            state.month, state.month_peak_kw = month, 0.0
        state.interval_start = start
        state.interval_import_kws += import_kw * min(dt_s, since_start_s)

        # Rolling 15-minute average import (reported, not billed).
        state.rolling.append((inputs.ts, import_kw * dt_s, dt_s))
        state.rolling_import_kws += import_kw * dt_s
        state.rolling_s += dt_s
        horizon = inputs.ts - timedelta(seconds=cfg.demand_interval_s)
        while state.rolling and state.rolling[0][0] <= horizon:
            _, e_kws, span_s = state.rolling.popleft()
            state.rolling_import_kws -= e_kws
            state.rolling_s -= span_s

    def _demand_cap(
        self, state: SiteState, ts: datetime, plan_peak_kw: float | None
    ) -> float | None:
        """Highest PCC import for the rest of the interval that keeps its average at threshold.

        The threshold is the highest of the demand target, the EMA's planned peak and the
        month's peak so far (shaving below an already-billed peak would waste energy).
        """
        cfg = self.config
        asked = [x for x in (cfg.demand_target_kw, plan_peak_kw) if x is not None]
        if not asked or state.interval_start is None:
            return None
        threshold = max(*asked, state.month_peak_kw)
        remaining_s = cfg.demand_interval_s - (ts - state.interval_start).total_seconds()
        budget_kws = threshold * cfg.demand_interval_s - state.interval_import_kws
        return max(budget_kws / max(remaining_s, 1.0), 0.0)

    def _interval_start(self, ts: datetime) -> datetime:
        seconds = self.config.demand_interval_s
        epoch = int(ts.timestamp())
        return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)

    def _month(self, ts: datetime) -> tuple[int, int]:
        local = ts.astimezone(ZoneInfo(self.config.billing_timezone))
        return local.year, local.month
