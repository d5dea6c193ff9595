"""Wiring of the coordinator: feeder state in, PV limits (TTL, grid_operator) and KPIs out."""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass, field
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
from voltage_coordinator.coordinator import Coordinator, Decision, limits_to_send
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import RULE_CODES, Rows, next_pass, solve_fractions

NAME = "voltage_coordinator"
COORDINATOR_DEVICE = "coordinator"
FEEDER_DEVICE = "feeder"


@dataclass
class _Round:
    """An agents-mode round in flight."""

    round_id: str
    state: FeederState
    started_s: float
    group_ids: list[str]
    rows: dict[str, Rows] = field(default_factory=dict)
    saturate: dict[str, float] = field(default_factory=dict)
    """`equal_kw`: thresholds of the PVs curtailed fully in this pass."""
    passes: int = 1


@dataclass
class CoordinatorState:
    """What the service knows between cycles (keyed by nothing: one feeder per instance)."""

    latest: FeederState | None = None
    solved_ts: Any = None
    decision: Decision | None = None
    before: FeederState | None = None
    published: PvCurtailmentSet | None = None
    round: _Round | None = None
    solves: int = 0


def build_service(settings: Settings, bus: Bus, feeder: Feeder | None = None) -> Service[Settings]:
    """The voltage coordinator on a bus: subscribes to the feeder state, re-solves on a cadence.

    Args:
        settings: the coordinator's settings.
        bus: the bus.
        feeder: the feeder (default: from the settings).
    """
    feeder = feeder or settings.load_feeder()
    service: Service[Settings] = Service(NAME, settings, bus)
    coordinator = Coordinator(feeder, settings)
    st = CoordinatorState()
    service.state["coordinator"] = st
    service.state["feeder"] = feeder
    service.declare_publishes(topics.PV_CURTAILMENT, topics.AREA_EXCHANGE, topics.KPI)
    fid = feeder.feeder_id
    area_ids = [a.id for a in feeder.areas]

    @service.on(topics.FEEDER_STATE, site_id=fid, device_id=FEEDER_DEVICE)
    async def on_feeder_state(msg: FeederState, ctx: Context) -> None:
        st.latest = msg

    @service.on(topics.AREA_EXCHANGE, site_id=fid)
    async def on_area_exchange(msg: AreaExchange, ctx: Context) -> None:
        rnd = st.round
        if rnd is None or msg.round_id != rnd.round_id or not msg.converged:
            return
        try:
            rnd.rows[msg.area_id] = Rows.from_values(msg.values, rnd.group_ids)
        except SolverError as err:
            await service.set_degraded("agents", f"area {msg.area_id}: {err}")
            return
        if set(rnd.rows) >= set(area_ids):
            st.round = None
            inputs = coordinator.inputs(rnd.state)
            rows = list(rnd.rows.values())
            try:
                if coordinator.sweep is not None and coordinator.sweep.equal_kw:
                    fractions, more = next_pass(rows, rnd.group_ids, rnd.saturate)
                    if more is not None:
                        if rnd.passes > len(feeder.pvs):
                            raise SolverError(f"equal_kw: no fixed point in {rnd.passes} passes")
                        await _start_round(rnd.state, rnd.started_s, more, rnd.passes + 1)
                        return
                else:
                    fractions = solve_fractions(rows, rnd.group_ids)
                decision = coordinator.from_fractions(
                    rnd.state, inputs, fractions, rnd.saturate, rnd.passes
                )
            except SolverError as err:
                await service.set_degraded("solver", str(err))
                return
            await _publish(decision, rnd.state)
            await service.clear_degraded("agents")

    @service.every(lambda: service.settings.solve_interval_s)
    async def solve(ctx: Context) -> None:
        state = st.latest
        if st.round is not None:
            if time.monotonic() - st.round.started_s < service.settings.round_timeout_s:
                return
            missing = sorted(set(area_ids) - set(st.round.rows))
            await service.set_degraded("agents", f"round timed out; no answer from {missing}")
            fallback = st.round.state
            st.round = None
            await _solve_here(fallback, centralised=True)
            return
        if state is None or state.ts == st.solved_ts:
            return
        st.solved_ts = state.ts
        if service.settings.mode == "agents":
            await _start_round(state, time.monotonic(), {}, 1)
            return
        await _solve_here(state, centralised=False)

    async def _start_round(
        state: FeederState, started_s: float, saturate: dict[str, float], passes: int
    ) -> None:
        """Start an agents round (for `equal_kw`, one per pass; the timeout covers them all)."""
        sweep = coordinator.sweep
        if sweep is None:  # agents mode always builds the sweep (see Coordinator.configure)
            raise SolverError("agents mode without the sweep solver")
        round_id = uuid.uuid4().hex[:12]
        st.round = _Round(
            round_id, state, started_s, list(sweep.group_ids), saturate=saturate, passes=passes
        )
        rule = RULE_CODES[(service.settings.fairness, service.settings.group_by)]
        start = AreaExchange(
            ts=utcnow(), source=NAME, area_id=COORDINATOR_DEVICE, round_id=round_id,
            iteration=0,
            values={
                "state_ts_s": state.ts.timestamp(), "state_step": state.step, "rule": rule,
                **saturate,
            },
        )  # fmt: skip
        await service.publish(
            topics.AREA_EXCHANGE, start, site_id=fid, device_id=COORDINATOR_DEVICE
        )

    async def _solve_here(state: FeederState, centralised: bool) -> None:
        try:
            if centralised:
                inputs = coordinator.inputs(state)
                result = await service.run_blocking(coordinator.centralised.solve, inputs)
                decision = Decision(
                    state.step, inputs, result, limits_to_send(feeder, result), "centralised"
                )
            else:
                decision = await service.run_blocking(coordinator.decide, state)
        except SolverError as err:
            # fall back to the reference solver; if that fails too, keep the live limits (they
            # lapse at their TTL) and report degraded
            if centralised or service.settings.mode == "centralised":
                await service.set_degraded("solver", str(err))
                return
            await service.set_degraded("solver", f"{err}; fell back to the centralised solver")
            await _solve_here(state, centralised=True)
            return
        if not centralised:
            await service.clear_degraded("solver")
        await _publish(decision, state)

    async def _publish(decision: Decision, state: FeederState) -> None:
        msg = PvCurtailmentSet(
            ts=utcnow(), source=NAME, feeder_id=fid, limits_kw=decision.limits_kw,
            ttl_s=service.settings.setpoint_ttl_s, priority=Priority.GRID_OPERATOR,
        )  # fmt: skip
        await service.publish(topics.PV_CURTAILMENT, msg, site_id=fid, device_id=COORDINATOR_DEVICE)
        st.decision, st.before, st.published = decision, state, msg
        st.solves += 1
        cut = decision.curtailment
        kpi = KpiReport(
            ts=msg.ts, source=NAME, name="pv_curtailment",
            values={
                "curtailed_kw": round(cut.curtailed_kw, 4),
                "available_kw": round(sum(cut.available_kw.values()), 4),
                "v_measured_max_pu": _max_v(state),
                "v_predicted_max_pu": round(float((cut.v_lin_pu + _bias(decision)).max()), 6),
                "solve_s": round(cut.solve_s, 6),
                "iterations": float(cut.iterations),
                "passes": float(cut.passes),
            },
        )  # fmt: skip
        await service.publish(topics.KPI, kpi, site_id=fid, device_id=NAME)

    def _bias(decision: Decision) -> Any:
        bias = decision.inputs.v_bias_pu
        return bias if bias is not None else 0.0

    router = APIRouter(tags=["voltage"])

    @router.get("/setpoints", response_model=SentLimits, response_model_exclude_none=True)
    def get_setpoints() -> dict[str, Any]:
        """The PV limits last sent, with fractions, curtailed power and how they were solved."""
        d, msg = st.decision, st.published
        if d is None or msg is None:
            return {"feeder_id": fid, "published": False}
        cut = d.curtailment
        return {
            "feeder_id": fid, "published": True, "setpoint_id": msg.setpoint_id,
            "ts": msg.ts.isoformat(), "ttl_s": msg.ttl_s, "priority": msg.priority.value,
            "step": d.step, "method": d.method, "limits_kw": d.limits_kw,
            "fraction": cut.fraction, "group_fraction": cut.group_fraction,
            "curtailed_kw": cut.curtailed_kw, "iterations": cut.iterations, "passes": cut.passes,
            "solve_s": cut.solve_s,
        }  # fmt: skip

    @router.get("/voltages", response_model=Voltages, response_model_exclude_none=True)
    def get_voltages() -> dict[str, Any]:
        """Measured voltages (latest state) and the predicted profile after the last decision."""
        latest = st.latest
        out: dict[str, Any] = {"feeder_id": fid, "v_max_pu": service.settings.v_max_pu}
        if latest is not None:
            out.update(
                step=latest.step, ts=latest.ts.isoformat(), measured_pu=latest.v_pu,
                measured_max_pu=_max_v(latest),
                nodes_above=sum(
                    1 for vs in latest.v_pu.values() for v in vs
                    if v is not None and v > service.settings.v_max_pu
                ),
            )  # fmt: skip
        if st.decision is not None:
            predicted = st.decision.curtailment.v_lin_pu + _bias(st.decision)
            by_bus: dict[str, list[float | None]] = {}
            for (bus, k), v in zip(coordinator.tree.nodes, predicted, strict=True):
                by_bus.setdefault(bus, [None, None, None])[k] = round(float(v), 6)
            out.update(predicted_after_pu=by_bus, predicted_max_pu=float(predicted.max()))
        return out

    @router.get(
        "/plot.png", response_class=Response,
        responses={200: content("image/png", "the profiles and curtailment"), **errors(404)},
    )  # fmt: skip
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

    return service


def _max_v(state: FeederState) -> float:
    values = [v for vs in state.v_pu.values() for v in vs if v is not None]
    return round(max(values), 6) if values else 0.0
