"""Wiring of the coordinator: feeder state in, PV limits (TTL, grid_operator) and KPIs out."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from derbus import topics
from derbus.bus.base import Bus
from derbus.errors import SolverError
from derbus.http import content, errors
from derbus.messages import AreaExchange, FeederState, KpiReport, PvCurtailmentSet, utcnow
from derbus.messages.control import Priority
from derbus.service import Context, Service
from voltage_coordinator.api_models import SentLimits, Voltages
from voltage_coordinator.coordinator import Coordinator, Decision
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.outputs import area_setpoints, write_area_files
from voltage_coordinator.rounds import Outcome, Round
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import RULE_CODES

NAME = "voltage_coordinator"
COORDINATOR_DEVICE = "coordinator"
FEEDER_DEVICE = "feeder"


@dataclass
class CoordinatorState:
    """What the service knows between cycles and the decisions it takes (one feeder).

    Attributes:
        feeder: the feeder.
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

    feeder: Feeder
    coordinator: Coordinator
    latest: FeederState | None = None
    solved_ts: datetime | None = None
    decision: Decision | None = None
    before: FeederState | None = None
    published: PvCurtailmentSet | None = None
    round: Round | None = None
    solves: int = 0
    fallbacks: int = 0
    abandoned: Round | None = None

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


def build_service(
    settings: Settings, bus: Bus, feeder: Feeder | None = None
) -> Service[Settings, CoordinatorState]:
    """The voltage coordinator on a bus: subscribes to the feeder state, re-solves on a cadence.

    Args:
        settings: the coordinator's settings.
        bus: the bus.
        feeder: the feeder (default: from the settings).
    """
    feeder = feeder or settings.load_feeder()
    st = CoordinatorState(feeder, Coordinator(feeder, settings))
    coordinator = st.coordinator
    service: Service[Settings, CoordinatorState] = Service(NAME, settings, bus, state=st)
    service.declare_publishes(topics.PV_CURTAILMENT, topics.AREA_EXCHANGE, topics.KPI)
    fid = feeder.feeder_id

    @service.on(topics.FEEDER_STATE, site_id=fid, device_id=FEEDER_DEVICE)
    async def on_feeder_state(msg: FeederState, ctx: Context) -> None:
        st.latest = msg

    @service.on(topics.AREA_EXCHANGE, site_id=fid)
    async def on_area_exchange(msg: AreaExchange, ctx: Context) -> None:
        rnd = st.round
        if rnd is None:
            return
        try:
            outcome = rnd.offer(msg.area_id, msg.round_id, msg.values, msg.converged)
        except SolverError as err:
            await service.set_degraded("agents", f"area {msg.area_id}: {err}")
            return
        if outcome is Outcome.SOLVED:
            st.round = None
            await service.clear_degraded("agents")  # every area answered
            await _decide(rnd.state, lambda: coordinator.from_rows(rnd.state, rnd.rows()))

    @service.every(lambda: service.settings.solve_interval_s)
    async def solve(ctx: Context) -> None:
        if st.round is not None:
            if not st.round.timed_out(time.monotonic(), service.settings.round_timeout_s):
                return
            missing, latest = st.abandon_round()
            await service.set_degraded("agents", f"round timed out; no answer from {missing}")
            if latest is not None:
                st.solved_ts = latest.ts
                await _decide(latest, lambda: coordinator.decide(latest, centralised=True))
            return
        state = st.fresh_state()
        if state is None:
            return
        if service.settings.mode == "agents":
            await _start_round(state)
            return
        await _decide(state, lambda: coordinator.decide(state))

    async def _start_round(state: FeederState) -> None:
        rnd = st.start_round(state, time.monotonic())
        rule = RULE_CODES[(service.settings.fairness, service.settings.group_by)]
        start = AreaExchange(
            ts=utcnow(),
            source=NAME,
            area_id=COORDINATOR_DEVICE,
            round_id=rnd.round_id,
            iteration=0,
            values=rnd.start_values(rule),
        )
        await service.publish(
            topics.AREA_EXCHANGE, start, site_id=fid, device_id=COORDINATOR_DEVICE
        )

    async def _decide(state: FeederState, decide: Callable[[], Decision]) -> None:
        """Run a decision off the loop; on a solver error fall back to the centralised LP
        (degraded); if that fails too keep the live limits (they lapse at their TTL)."""
        try:
            decision = await service.run_blocking(decide)
        except SolverError as err:
            if service.settings.mode == "centralised":
                await service.set_degraded("solver", str(err))
                return
            await service.set_degraded("solver", f"{err}; fell back to the centralised solver")
            try:
                decision = await service.run_blocking(coordinator.decide, state, True)
            except SolverError as again:
                await service.set_degraded("solver", f"{err}; centralised: {again}")
                return
        else:
            await service.clear_degraded("solver")
        await _publish(decision, state)

    async def _publish(decision: Decision, state: FeederState) -> None:
        msg = PvCurtailmentSet(
            ts=utcnow(),
            source=NAME,
            feeder_id=fid,
            limits_kw=decision.limits_kw,
            ttl_s=service.settings.setpoint_ttl_s,
            priority=Priority.GRID_OPERATOR,
        )
        await service.publish(topics.PV_CURTAILMENT, msg, site_id=fid, device_id=COORDINATOR_DEVICE)
        st.published_decision(decision, state, msg)
        cut = decision.curtailment
        kpi = KpiReport(
            ts=msg.ts,
            source=NAME,
            name="pv_curtailment",
            values={
                "curtailed_kw": round(cut.curtailed_kw, 4),
                "available_kw": round(sum(cut.available_kw.values()), 4),
                "v_measured_max_pu": _max_v(state),
                "v_predicted_max_pu": round(float(decision.predicted_pu.max()), 6),
                "bias_rounds": float(cut.bias_rounds),
                "solve_s": round(cut.solve_s, 6),
                "iterations": float(cut.iterations),
                "passes": float(cut.passes),
            },
        )
        await service.publish(topics.KPI, kpi, site_id=fid, device_id=NAME)
        if service.settings.write_setpoint_files:
            rule = f"{service.settings.fairness}/{service.settings.group_by}"
            docs = area_setpoints(feeder, decision, msg.ts.isoformat(), rule)
            await service.run_blocking(write_area_files, setpoint_dir(service.settings, fid), docs)

    router = APIRouter(tags=["voltage"])

    @router.get("/setpoints", response_model=SentLimits, response_model_exclude_none=True)
    def get_setpoints() -> dict[str, Any]:
        """The PV limits last sent, with fractions, curtailed power and how they were solved."""
        d, msg = st.decision, st.published
        if d is None or msg is None:
            return {"feeder_id": fid, "published": False}
        cut = d.curtailment
        return {
            "feeder_id": fid,
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

    @router.get("/voltages", response_model=Voltages, response_model_exclude_none=True)
    def get_voltages() -> dict[str, Any]:
        """Measured voltages (latest state) and the predicted profile after the last decision."""
        latest = st.latest
        out: dict[str, Any] = {"feeder_id": fid, "v_max_pu": service.settings.v_max_pu}
        if latest is not None:
            out.update(
                step=latest.step,
                ts=latest.ts.isoformat(),
                measured_pu=latest.v_pu,
                measured_max_pu=_max_v(latest),
                nodes_above=sum(
                    1
                    for vs in latest.v_pu.values()
                    for v in vs
                    if v is not None and v > service.settings.v_max_pu
                ),
            )
        if st.decision is not None:
            predicted = st.decision.predicted_pu
            by_bus: dict[str, list[float | None]] = {}
            for (bus, k), v in zip(coordinator.tree.nodes, predicted, strict=True):
                by_bus.setdefault(bus, [None, None, None])[k] = round(float(v), 6)
            out.update(predicted_after_pu=by_bus, predicted_max_pu=float(predicted.max()))
        return out

    @router.get(
        "/plot.png",
        response_class=Response,
        responses={200: content("image/png", "the profiles and curtailment"), **errors(404)},
    )
    def get_plot() -> Response:
        """PNG: voltage profile before/after the last decision and the curtailment per PV."""
        if st.decision is None or st.before is None:
            raise HTTPException(status_code=404, detail="no decision yet")
        from voltage_coordinator.plot import plot_decision

        buf = io.BytesIO()
        plot_decision(feeder, coordinator.tree, st.before, st.decision, buf)
        return Response(buf.getvalue(), media_type="image/png")

    service.include_router(router)

    @service.on_config_change
    def _reconfigure(old: Settings, new: Settings) -> None:
        coordinator.configure(new)

    @service.on_shutdown
    async def _close() -> None:
        await asyncio.to_thread(coordinator.close)

    return service


def setpoint_dir(settings: Settings, feeder_id: str) -> Path:
    """Where the per-area setpoint files go."""
    return settings.data_dir / NAME / feeder_id / "setpoints"


def _max_v(state: FeederState) -> float:
    values = [v for vs in state.v_pu.values() for v in vs if v is not None]
    return round(max(values), 6) if values else 0.0
