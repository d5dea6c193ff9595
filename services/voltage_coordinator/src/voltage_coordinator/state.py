"""`CoordinatorState`, the service's state: the latest feeder state, the round, the decisions."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from derbus import topics
from derbus.errors import SolverError
from derbus.messages import AreaExchange, FeederState, KpiReport, PvCurtailmentSet, utcnow
from derbus.messages.control import Priority
from derbus.service import Service
from voltage_coordinator.coordinator import Coordinator, Decision
from voltage_coordinator.feeder import COORDINATOR_DEVICE, Feeder
from voltage_coordinator.outputs import area_setpoints, write_area_files
from voltage_coordinator.rounds import Outcome, Round
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import RULE_CODES

NAME = "voltage_coordinator"


def setpoint_dir(settings: Settings, feeder_id: str) -> Path:
    """Where the per-area setpoint files go."""
    return settings.data_dir / NAME / feeder_id / "setpoints"


def max_v(state: FeederState) -> float:
    """The highest measured voltage of a state, pu (0 when it carries none), to 1e-6."""
    values = [v for vs in state.v_pu.values() for v in vs if v is not None]
    return round(max(values), 6) if values else 0.0


class CoordinatorState:
    """`service.state` of the voltage coordinator (one feeder): what it knows between cycles
    and the decisions it takes.

    Feeder states arrive (`on_feeder_state`); each cycle (`cycle`) decides on the latest one
    not decided yet, or in `agents` mode starts a `Round` that the areas' answers complete
    (`on_area_exchange`) or that times out to a centralised decision on the latest state;
    `decide` runs a solve off the event loop with its fallbacks, `publish_decision` sends the
    limits, the KPI and the setpoint files. The messages (`limits_message`, `kpi_report`,
    `round_start`) and the REST bodies (`setpoints_view`, `voltages_view`, `plot_png`) are
    built without I/O.

    Args:
        service: the service it publishes through (its settings and health).
        feeder: the feeder.
        coordinator: the solvers (default: built for the feeder and the service's settings).
        clock: monotonic seconds, the rounds' clock (tests pass their own).
        now: the current time for the messages' `ts` (tests pass their own).

    Attributes:
        coordinator: the solvers (rebuilt on a settings change).
        latest: the latest feeder state received.
        solved_ts: timestamp of the last state a decision (or round) was started for.
        decision: the last decision published, `before` the state it was taken on.
        published: the last limits message.
        round: the agents-mode round in flight.
        solves: decisions published.
        fallbacks: rounds abandoned for the centralised solve on the latest state.
        abandoned: the last round abandoned.
    """

    def __init__(
        self,
        service: Service[Settings, Any],
        feeder: Feeder,
        coordinator: Coordinator | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.service = service
        self.feeder = feeder
        self.coordinator = coordinator or Coordinator(feeder, service.settings)
        self.clock = clock
        self.now = now
        self.latest: FeederState | None = None
        self.solved_ts: datetime | None = None
        self.decision: Decision | None = None
        self.before: FeederState | None = None
        self.published: PvCurtailmentSet | None = None
        self.round: Round | None = None
        self.solves = 0
        self.fallbacks = 0
        self.abandoned: Round | None = None

    @property
    def settings(self) -> Settings:
        """The current settings (`PUT /config` replaces them)."""
        return self.service.settings

    @property
    def feeder_id(self) -> str:
        """The feeder's id: the site of every topic the coordinator uses."""
        return self.feeder.feeder_id

    # --- what arrives --------------------------------------------------------------------------
    def on_feeder_state(self, msg: FeederState) -> None:
        """Keep the latest feeder state (the next cycle decides on it)."""
        self.latest = msg

    async def on_area_exchange(self, msg: AreaExchange) -> None:
        """Take an area's answer for the round in flight; decide on the rows once every area
        answered (clears `agents`), report malformed rows as degraded (`agents`)."""
        rnd = self.round
        if rnd is None:
            return
        try:
            outcome = rnd.offer(msg.area_id, msg.round_id, msg.values, msg.converged)
        except SolverError as err:
            await self.service.set_degraded("agents", f"area {msg.area_id}: {err}")
            return
        if outcome is Outcome.SOLVED:
            self.round = None
            await self.service.clear_degraded("agents")  # every area answered
            await self.decide(rnd.state, lambda: self.coordinator.from_rows(rnd.state, rnd.rows()))

    async def cycle(self) -> None:
        """One solve cycle: give up a round that timed out (degraded `agents`, centralised on
        the latest state), else take the latest state not decided yet: a round in `agents`
        mode, a decision in the others."""
        if self.round is not None:
            if not self.round.timed_out(self.clock(), self.settings.round_timeout_s):
                return
            missing, latest = self.abandon_round()
            await self.service.set_degraded("agents", f"round timed out; no answer from {missing}")
            if latest is not None:
                self.solved_ts = latest.ts
                await self.decide(latest, lambda: self.coordinator.decide(latest, centralised=True))
            return
        state = self.fresh_state()
        if state is None:
            return
        if self.settings.mode == "agents":
            rnd = self.start_round(state, self.clock())
            await self.service.publish(
                topics.AREA_EXCHANGE,
                self.round_start(rnd),
                site_id=self.feeder_id,
                device_id=COORDINATOR_DEVICE,
            )
            return
        await self.decide(state, lambda: self.coordinator.decide(state))

    # --- the state's own bookkeeping (no I/O) ---------------------------------------------------
    def fresh_state(self) -> FeederState | None:
        """The latest state if no decision has been started on it yet (and marks it)."""
        state = self.latest
        if state is None or state.ts == self.solved_ts:
            return None
        self.solved_ts = state.ts
        return state

    def start_round(self, state: FeederState, now_s: float) -> Round:
        """A new agents round on a state (replaces any in flight)."""
        self.round = Round.start(
            state, now_s, self.coordinator.row_group_ids, [a.id for a in self.feeder.areas]
        )
        return self.round

    def abandon_round(self) -> tuple[list[str], FeederState | None]:
        """Give the round in flight up: the areas that did not answer and the state to solve
        on instead (the latest one received, not the round's)."""
        missing = self.round.missing() if self.round is not None else []
        self.abandoned, self.round = self.round, None
        self.fallbacks += 1
        return missing, self.latest

    def published_decision(
        self, decision: Decision, state: FeederState, msg: PvCurtailmentSet
    ) -> None:
        """Remember what was sent."""
        self.decision, self.before, self.published = decision, state, msg
        self.solves += 1

    # --- messages (no I/O) ----------------------------------------------------------------------
    def round_start(self, rnd: Round) -> AreaExchange:
        """The round start the agents solve for: the state's timestamp and step, the rule."""
        rule = RULE_CODES[(self.settings.fairness, self.settings.group_by)]
        return AreaExchange(
            ts=self.now(),
            source=NAME,
            area_id=COORDINATOR_DEVICE,
            round_id=rnd.round_id,
            iteration=0,
            values=rnd.start_values(rule),
        )

    def limits_message(self, decision: Decision) -> PvCurtailmentSet:
        """The decision's PV limits as a grid-operator setpoint with the settings' TTL."""
        return PvCurtailmentSet(
            ts=self.now(),
            source=NAME,
            feeder_id=self.feeder_id,
            limits_kw=decision.limits_kw,
            ttl_s=self.settings.setpoint_ttl_s,
            priority=Priority.GRID_OPERATOR,
        )

    def kpi_report(
        self, decision: Decision, state: FeederState, msg: PvCurtailmentSet
    ) -> KpiReport:
        """The `pv_curtailment` KPI of a decision taken on `state` and sent as `msg`."""
        cut = decision.curtailment
        return KpiReport(
            ts=msg.ts,
            source=NAME,
            name="pv_curtailment",
            values={
                "curtailed_kw": round(cut.curtailed_kw, 4),
                "available_kw": round(sum(cut.available_kw.values()), 4),
                "v_measured_max_pu": max_v(state),
                "v_predicted_max_pu": round(float(decision.predicted_pu.max()), 6),
                "bias_rounds": float(cut.bias_rounds),
                "solve_s": round(cut.solve_s, 6),
                "iterations": float(cut.iterations),
                "passes": float(cut.passes),
            },
        )

    def setpoint_docs(self, decision: Decision, msg: PvCurtailmentSet) -> dict[str, dict[str, Any]]:
        """The per-area setpoint files' contents for a decision sent as `msg`."""
        rule = f"{self.settings.fairness}/{self.settings.group_by}"
        return area_setpoints(self.feeder, decision, msg.ts.isoformat(), rule)

    # --- decisions and what they publish --------------------------------------------------------
    async def decide(self, state: FeederState, solve: Callable[[], Decision]) -> None:
        """Run a decision off the loop; on a solver error fall back to the centralised LP
        (degraded `solver`); if that fails too keep the live limits (they lapse at their TTL)."""
        try:
            decision = await self.service.run_blocking(solve)
        except SolverError as err:
            if self.settings.mode == "centralised":
                await self.service.set_degraded("solver", str(err))
                return
            await self.service.set_degraded("solver", f"{err}; fell back to the centralised solver")
            try:
                decision = await self.service.run_blocking(self.coordinator.decide, state, True)
            except SolverError as again:
                await self.service.set_degraded("solver", f"{err}; centralised: {again}")
                return
        else:
            await self.service.clear_degraded("solver")
        await self.publish_decision(decision, state)

    async def publish_decision(self, decision: Decision, state: FeederState) -> None:
        """Send the limits, then the KPI, then (when configured) write the setpoint files."""
        fid = self.feeder_id
        msg = self.limits_message(decision)
        await self.service.publish(
            topics.PV_CURTAILMENT, msg, site_id=fid, device_id=COORDINATOR_DEVICE
        )
        self.published_decision(decision, state, msg)
        kpi = self.kpi_report(decision, state, msg)
        await self.service.publish(topics.KPI, kpi, site_id=fid, device_id=NAME)
        if self.settings.write_setpoint_files:
            docs = self.setpoint_docs(decision, msg)
            await self.service.run_blocking(
                write_area_files, setpoint_dir(self.settings, fid), docs
            )

    def reconfigure(self, old: Settings, new: Settings) -> None:
        """Rebuild the solvers for new settings."""
        self.coordinator.configure(new)

    async def close(self) -> None:
        """Release the AC model (waits for a solve in flight, off the loop)."""
        await asyncio.to_thread(self.coordinator.close)

    # --- REST bodies (no I/O) ------------------------------------------------------------------
    def setpoints_view(self) -> dict[str, Any]:
        """The PV limits last sent, with fractions, curtailed power and how they were solved."""
        d, msg = self.decision, self.published
        if d is None or msg is None:
            return {"feeder_id": self.feeder_id, "published": False}
        cut = d.curtailment
        return {
            "feeder_id": self.feeder_id,
            "published": True,
            "setpoint_id": msg.setpoint_id,
            "ts": msg.ts.isoformat(),
            "ttl_s": msg.ttl_s,
            "priority": msg.priority.value,
            "step": d.step,
            "method": d.method,
            "limits_kw": d.limits_kw,
            "fraction": cut.fraction,
            "group_fraction": cut.group_fraction,
            "curtailed_kw": cut.curtailed_kw,
            "iterations": cut.iterations,
            "passes": cut.passes,
            "solve_s": cut.solve_s,
        }

    def voltages_view(self) -> dict[str, Any]:
        """Measured voltages (latest state) and the predicted profile after the last decision."""
        latest, v_max_pu = self.latest, self.settings.v_max_pu
        out: dict[str, Any] = {"feeder_id": self.feeder_id, "v_max_pu": v_max_pu}
        if latest is not None:
            out.update(
                step=latest.step,
                ts=latest.ts.isoformat(),
                measured_pu=latest.v_pu,
                measured_max_pu=max_v(latest),
                nodes_above=sum(
                    1 for vs in latest.v_pu.values() for v in vs if v is not None and v > v_max_pu
                ),
            )
        if self.decision is not None:
            predicted = self.decision.predicted_pu
            by_bus: dict[str, list[float | None]] = {}
            for (bus, k), v in zip(self.coordinator.tree.nodes, predicted, strict=True):
                by_bus.setdefault(bus, [None, None, None])[k] = round(float(v), 6)
            out.update(predicted_after_pu=by_bus, predicted_max_pu=float(predicted.max()))
        return out

    def plot_png(self) -> bytes | None:
        """PNG: voltage profile before/after the last decision and the curtailment per PV (None
        before the first decision)."""
        if self.decision is None or self.before is None:
            return None
        from voltage_coordinator.plot import plot_decision  # matplotlib: loaded on first use

        buf = io.BytesIO()
        plot_decision(self.feeder, self.coordinator.tree, self.before, self.decision, buf)
        return buf.getvalue()
