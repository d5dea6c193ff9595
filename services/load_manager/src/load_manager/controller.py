"""Net-balancing controller: one `step()` per cycle switching loads on the period balance (no I/O).

Rules (balance B = produced − consumed so far in the period, Wh; surplus s = −pcc_p_kw, kW;
rem = time left in the period, h; P = the load's rated power, kW):

* `hysteresis`: on when B >= on_wh, off when B <= off_wh (per load thresholds).
* `min_on_time`: on when B >= on_wh; once on it stays on for `min_on_time_rule_s`, then goes off
  as soon as B < on_wh.
* `time_to_consume`: project the end-of-period balance from the current power. An off load
  goes on when the surplus can run it for the rest of the period: B + (s − P)·rem >= target.
  An on load goes off when the period would still end at or below the target without it:
  B + (s + P)·rem <= target − margin. Between the two lies a band of P·rem, so a marginal load
  switches about twice per period: it runs on the banked (or borrowed) energy and stops when the
  remaining surplus exactly brings the period back to the target. The surplus not caused by our
  loads (−pcc + rated power of the loads on) is smoothed with `surplus_tau_s`.

Every rule also honours per-load priority (surplus goes to priority 1 first; loads are shed in
reverse order), allowed local hours, and minimum on / off times. A stale meter switches all off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from derbus.messages import Priority, SetpointCommand
from load_manager.settings import LoadConfig, Rule


@dataclass(frozen=True)
class CycleInputs:
    """What the controller sees in one cycle.

    Attributes:
        balance_wh: period balance so far, Wh (+ surplus / − debt).
        pcc_p_kw: latest PCC power, kW (+ import / − export), includes the loads now on.
        period_end: end of the current settlement period.
        local_hour: hour of the day in site local time (for allowed hours).
        meter_ok: False when the PCC reading is stale; then every load goes off.
    """

    balance_wh: float
    pcc_p_kw: float
    period_end: datetime
    local_hour: int
    meter_ok: bool = True


@dataclass
class LoadState:
    """What the controller remembers about one load."""

    on: bool = False
    since: datetime | None = None

    def held_s(self, now: datetime) -> float:
        """Seconds since the last switch (infinite when never switched)."""
        return float("inf") if self.since is None else (now - self.since).total_seconds()


@dataclass(frozen=True)
class Decision:
    """The controller's word on one load this cycle."""

    device_id: str
    on: bool
    switched: bool
    reason: str


@dataclass
class NetBalanceController:
    """Switches loads so the settlement period ends near balance.

    Args:
        loads: the loads, each with rated power, priority, thresholds, allowed hours, min times.
        rule: which rule decides.
        min_on_time_rule_s: the `min_on_time` rule's hold time, s.
        ttc_target_wh: `time_to_consume` target end-of-period balance, Wh.
        ttc_margin_wh: `time_to_consume` dead band below the target before switching off, Wh.
        surplus_tau_s: `time_to_consume` smooths the surplus the loads do not cause
            (−pcc + rated power of the loads on) with this time constant, s (0 = raw), so that
            appliance noise does not make loads chatter; the load's own step is not smoothed.
    """

    loads: list[LoadConfig]
    rule: Rule = "time_to_consume"
    min_on_time_rule_s: float = 600.0
    ttc_target_wh: float = 0.0
    ttc_margin_wh: float = 10.0
    surplus_tau_s: float = 60.0
    states: dict[str, LoadState] = field(default_factory=dict)
    _free_kw: float | None = None
    _free_at: datetime | None = None

    def __post_init__(self) -> None:
        for load in self.loads:
            self.states.setdefault(load.device_id, LoadState())

    def reconfigure(
        self,
        loads: list[LoadConfig],
        rule: Rule,
        min_on_time_rule_s: float,
        ttc_target_wh: float,
        ttc_margin_wh: float,
    ) -> None:
        """Apply new settings, keeping the state of loads that remain."""
        self.loads = loads
        self.rule = rule
        self.min_on_time_rule_s = min_on_time_rule_s
        self.ttc_target_wh = ttc_target_wh
        self.ttc_margin_wh = ttc_margin_wh
        self.states = {ld.device_id: self.states.get(ld.device_id, LoadState()) for ld in loads}

    def _min_on_s(self, load: LoadConfig) -> float:
        if self.rule == "min_on_time":
            return max(load.min_on_s, self.min_on_time_rule_s)
        return load.min_on_s

    def _wants_off(
        self, load: LoadConfig, inp: CycleInputs, surplus_kw: float, rem_h: float
    ) -> str:
        b = inp.balance_wh
        if self.rule == "hysteresis":
            return f"balance {b:.0f} Wh <= off {load.off_wh:g} Wh" if b <= load.off_wh else ""
        if self.rule == "min_on_time":
            return f"balance {b:.0f} Wh < on {load.on_wh:g} Wh" if b < load.on_wh else ""
        without = b + (surplus_kw + load.rated_kw) * rem_h * 1000.0
        if without <= self.ttc_target_wh - self.ttc_margin_wh:
            return f"period ends at {without:.0f} Wh even without it"
        return ""

    def _wants_on(self, load: LoadConfig, inp: CycleInputs, surplus_kw: float, rem_h: float) -> str:
        b = inp.balance_wh
        if self.rule in ("hysteresis", "min_on_time"):
            return f"balance {b:.0f} Wh >= on {load.on_wh:g} Wh" if b >= load.on_wh else ""
        projected = b + (surplus_kw - load.rated_kw) * rem_h * 1000.0
        if projected >= self.ttc_target_wh:
            return f"projected end balance with it on {projected:.0f} Wh >= target"
        return ""

    def step(self, inputs: CycleInputs, now: datetime) -> list[Decision]:
        """Decide every load for this cycle (and update the remembered states).

        Args:
            inputs: balance, PCC power (kW, + import), period end, local hour, meter health.
            now: the cycle's time (aware).

        Returns:
            One decision per load, in configuration order.
        """
        surplus_kw = self._smoothed_surplus(inputs, now)
        rem_h = max(0.0, (inputs.period_end - now).total_seconds()) / 3600.0
        decided: dict[str, Decision] = {}
        switched_off: set[str] = set()
        # shed: lowest priority first, each shed load frees its power for the next test
        for load in sorted(self.loads, key=lambda ld: -ld.priority):
            state = self.states[load.device_id]
            if not state.on:
                continue
            reason = ""
            if not inputs.meter_ok:
                reason = "meter stale"
            elif inputs.local_hour not in load.allowed_hours:
                reason = f"hour {inputs.local_hour} not allowed"
            elif state.held_s(now) >= self._min_on_s(load):
                reason = self._wants_off(load, inputs, surplus_kw, rem_h)
            if reason:
                state.on, state.since = False, now
                switched_off.add(load.device_id)
                surplus_kw += load.rated_kw
                decided[load.device_id] = Decision(load.device_id, False, True, reason)
            else:
                decided[load.device_id] = Decision(load.device_id, True, False, "keep on")
        # serve: highest priority first, each started load uses up its share of the surplus
        for load in sorted(self.loads, key=lambda ld: ld.priority):
            state = self.states[load.device_id]
            if state.on or load.device_id in switched_off:
                continue
            reason = ""
            if (
                inputs.meter_ok
                and inputs.local_hour in load.allowed_hours
                and state.held_s(now) >= load.min_off_s
            ):
                reason = self._wants_on(load, inputs, surplus_kw, rem_h)
            if reason:
                state.on, state.since = True, now
                surplus_kw -= load.rated_kw
                decided[load.device_id] = Decision(load.device_id, True, True, reason)
            else:
                decided[load.device_id] = Decision(load.device_id, False, False, "keep off")
        return [decided[load.device_id] for load in self.loads]

    def _smoothed_surplus(self, inputs: CycleInputs, now: datetime) -> float:
        """Surplus now, kW, with the part not caused by our loads smoothed (first-order lag)."""
        on_kw = sum(ld.rated_kw for ld in self.loads if self.states[ld.device_id].on)
        free = -inputs.pcc_p_kw + on_kw
        if self.rule == "time_to_consume" and self._free_kw is not None and self._free_at:
            dt = max(0.0, (now - self._free_at).total_seconds())
            if self.surplus_tau_s > 0:
                alpha = dt / (self.surplus_tau_s + dt)
                free = self._free_kw + alpha * (free - self._free_kw)
        self._free_kw, self._free_at = free, now
        if not inputs.meter_ok:
            self._free_kw = self._free_at = None
        return free - on_kw

    # --- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Load states to save under data_dir."""
        return {
            k: {"on": s.on, "since": s.since.isoformat() if s.since else None}
            for k, s in self.states.items()
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Restore load states saved by `to_dict` (unknown loads are ignored)."""
        for key, value in data.items():
            if key in self.states:
                since = value.get("since")
                self.states[key] = LoadState(
                    on=bool(value.get("on")),
                    since=datetime.fromisoformat(since) if since else None,
                )


@dataclass
class SetpointRefresher:
    """The relay watchdog from our side: send on change, and re-send before the TTL runs out.

    Args:
        ttl_s: TTL written in each setpoint, s.
        margin_s: re-send when the last command is within this of expiring, s.
    """

    ttl_s: float
    margin_s: float
    sent: dict[str, tuple[bool, datetime]] = field(default_factory=dict)

    def due(self, decisions: list[Decision], now: datetime) -> list[tuple[str, bool]]:
        """The (device, on) commands to publish now; records them as sent."""
        out: list[tuple[str, bool]] = []
        for d in decisions:
            last = self.sent.get(d.device_id)
            stale = last is None or now >= last[1] + timedelta(seconds=self.ttl_s - self.margin_s)
            if last is None or last[0] != d.on or stale:
                out.append((d.device_id, d.on))
                self.sent[d.device_id] = (d.on, now)
        return out


def load_on_command(now: datetime, on: bool, ttl_s: float, source: str) -> SetpointCommand:
    """The `load_on` setpoint switching a load on (1) or off (0) for `ttl_s` (at most a day)."""
    return SetpointCommand(
        ts=now,
        source=source,
        target="load_on",
        value=1.0 if on else 0.0,
        unit="bool",
        ttl_s=min(ttl_s, 86_400),
        priority=Priority.SITE_OPTIMISER,
    )
