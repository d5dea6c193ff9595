"""The feeder simulation's logic: the day's load and PV levels, PV limits with TTL, the AC flow.

Each PV keeps a `SetpointArbiter` (target `pv_limit_kw`, 0..nameplate): a batch of limits from
the coordinator becomes one command per PV with the batch's TTL and priority; when it lapses the
PV reverts to producing all it can. No clock here: `now` comes in as an argument.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from derbus.messages import FeederState, PvCurtailmentSet, SetpointAck, SetpointCommand
from derbus.setpoints import SetpointArbiter, TargetLimits
from voltage_coordinator.acflow import AcFlow, AcResult
from voltage_coordinator.feeder import Feeder

SOURCE = "feeder_sim"


class FeederSimulation:
    """An unbalanced AC feeder stepping through its day profiles and obeying PV limits.

    Args:
        feeder: the feeder.
        start_step: first interval of the day.
        hold_step: stay on `start_step` instead of advancing.
    """

    def __init__(self, feeder: Feeder, start_step: int = 0, hold_step: bool = False) -> None:
        self.feeder = feeder
        self.ac = AcFlow(feeder)
        self.step_index = start_step % feeder.steps
        self.hold_step = hold_step
        self.arbiters = {
            pv.id: SetpointArbiter(
                f"{SOURCE}:{pv.id}", {"pv_limit_kw": TargetLimits(0.0, pv.rating_kw)}
            )
            for pv in feeder.pvs
        }
        self.last: AcResult | None = None
        self.closed = False

    def available_kw(self) -> dict[str, float]:
        """What each PV could produce at the current step, kW."""
        mult = self.feeder.profiles.pv[self.step_index]
        return {pv.id: pv.rating_kw * mult for pv in self.feeder.pvs}

    def limits_kw(self, now: datetime) -> dict[str, float]:
        """Live limits per PV (kW); PVs without a live limit are absent."""
        out: dict[str, float] = {}
        for pid, arbiter in self.arbiters.items():
            value = arbiter.value("pv_limit_kw", now)
            if value is not None:
                out[pid] = value
        return out

    def apply(self, batch: PvCurtailmentSet, now: datetime) -> SetpointAck:
        """Take a batch of PV limits; one ack for the batch (rejected if any PV refused it)."""
        refused: list[str] = []
        for pid, limit in batch.limits_kw.items():
            arbiter = self.arbiters.get(pid)
            if arbiter is None:
                refused.append(f"{pid}: unknown PV")
                continue
            cmd = SetpointCommand(
                ts=batch.ts,
                source=batch.source,
                setpoint_id=f"{batch.setpoint_id}:{pid}",
                target="pv_limit_kw",
                value=limit,
                unit="kW",
                ttl_s=batch.ttl_s,
                priority=batch.priority,
            )
            ack = arbiter.submit(cmd, now)[0]
            if ack.status == "rejected":
                refused.append(f"{pid}: {ack.reason}")
        return SetpointAck(
            ts=now,
            source=SOURCE,
            setpoint_id=batch.setpoint_id,
            status="rejected" if refused else "accepted",
            reason="; ".join(refused)[:2000] or None,
            target="pv_limit_kw",
        )

    def expire(self, now: datetime) -> int:
        """Drop lapsed limits (the PVs revert to uncurtailed); returns how many lapsed."""
        return sum(len(a.expire(now)) for a in self.arbiters.values())

    def outputs_kw(self, now: datetime) -> dict[str, float]:
        """What each PV produces now: its availability capped by its live limit, kW."""
        limits = self.limits_kw(now)
        return {
            pid: min(avail, limits.get(pid, avail)) for pid, avail in self.available_kw().items()
        }

    def solve(self, now: datetime) -> FeederState:
        """Expire limits, run the AC power flow at the current step, report the feeder state."""
        self.expire(now)
        outputs = self.outputs_kw(now)
        load_mult = self.feeder.profiles.load[self.step_index]
        self.last = self.ac.solve(load_mult, outputs)
        return FeederState(
            ts=now,
            source=SOURCE,
            feeder_id=self.feeder.feeder_id,
            step=self.step_index,
            v_pu=self.last.by_bus(),
            pv_available_kw=self.available_kw(),
            pv_output_kw={k: round(v, 6) for k, v in outputs.items()},
            load_p_kw=round(self.feeder.total_load_kw * load_mult, 6),
        )

    def close(self) -> None:
        """Release the AC power flow (waits for a solve in flight; see `AcFlow.close`)."""
        self.closed = True
        self.ac.close()

    def advance(self) -> None:
        """Move to the next interval (wrapping at the end of the day) unless holding."""
        if not self.hold_step:
            self.step_index = (self.step_index + 1) % self.feeder.steps

    def step_time(self, day_start: datetime) -> datetime:
        """Start of the current interval for a given start of day."""
        return day_start + timedelta(seconds=self.step_index * self.feeder.profiles.interval_s)
