"""`CoordinatorState` called directly: the service is never started, no broker runs.

The message and REST-body methods run on a service whose bus is never connected; the cycle,
the round and the fallbacks run on an in-memory bus connected only to record what is published.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from derbus import topics
from derbus.bus import InMemoryBus
from derbus.errors import SolverError
from derbus.messages import AreaExchange, FeederState, Priority
from derbus.service import Service
from voltage_coordinator.coordinator import Decision
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import compile_tree
from voltage_coordinator.optimizer import linear_voltages
from voltage_coordinator.settings import Settings
from voltage_coordinator.state import NAME, CoordinatorState, setpoint_dir
from voltage_coordinator.sweep import RULE_CODES

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SENT_AT = datetime(2026, 6, 1, 12, 0, 3, tzinfo=UTC)
V_MAX = 1.03  # the two-area feeder peaks at 1.036 pu (bus 3, phase a) with every PV at nameplate


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.s = 100.0

    def __call__(self) -> float:
        return self.s


def settings_for(tmp_path: Path, **fields: Any) -> Settings:
    base: dict[str, Any] = {
        "v_max_pu": V_MAX,
        "ac_model": False,
        "setpoint_ttl_s": 90,
        "write_setpoint_files": False,
        "data_dir": tmp_path,
    }
    return Settings(**{**base, **fields})


def make_state(
    settings: Settings, feeder: Feeder, clock: Clock | None = None, bus: InMemoryBus | None = None
) -> CoordinatorState:
    """The state on a service that is never started (its bus never connected unless given)."""
    service: Service[Settings, CoordinatorState] = Service(NAME, settings, bus or InMemoryBus())
    vc = service.state = CoordinatorState(
        service, feeder, clock=clock or Clock(), now=lambda: SENT_AT
    )
    return vc


async def connected(
    settings: Settings, feeder: Feeder, clock: Clock | None = None
) -> tuple[CoordinatorState, InMemoryBus]:
    """The state on an in-memory bus connected only to record what is published."""
    bus = InMemoryBus()
    await bus.connect()
    return make_state(settings, feeder, clock, bus), bus


def measured(feeder: Feeder, ts: datetime) -> FeederState:
    """Every PV at nameplate, measured voltages = LinDistFlow's (no bias)."""
    tree = compile_tree(feeder)
    avail = {pv.id: pv.rating_kw for pv in feeder.pvs}
    v_pu: dict[str, list[float | None]] = {}
    for (bus, k), v in zip(tree.nodes, linear_voltages(feeder, tree, 1.0, avail), strict=True):
        v_pu.setdefault(bus, [None, None, None])[k] = float(v)
    return FeederState(
        ts=ts,
        source="test",
        feeder_id=feeder.feeder_id,
        step=0,
        v_pu=v_pu,
        pv_available_kw=avail,
        pv_output_kw=avail,
        load_p_kw=feeder.total_load_kw,
    )


def topics_of(bus: InMemoryBus, root: str) -> list[str]:
    prefix = f"{root}/duo/"
    return [m.topic.removeprefix(prefix) for m in bus.published if m.topic.startswith(prefix)]


LIMITS = "grid/coordinator/pv_limits"
KPI = "status/voltage_coordinator/kpi"
START = "grid/coordinator/area_exchange"


def test_the_topic_names_above_are_the_catalogues() -> None:
    assert topics.PV_CURTAILMENT.topic("duo", "coordinator", "r") == f"r/duo/{LIMITS}"
    assert topics.KPI.topic("duo", NAME, "r") == f"r/duo/{KPI}"
    assert topics.AREA_EXCHANGE.topic("duo", "coordinator", "r") == f"r/duo/{START}"


def test_each_state_is_decided_on_once(duo: Feeder, tmp_path: Path) -> None:
    vc = make_state(settings_for(tmp_path), duo)
    assert vc.fresh_state() is None
    first = measured(duo, T0)
    vc.on_feeder_state(first)
    assert vc.fresh_state() is first
    assert vc.fresh_state() is None  # the same state again: nothing to do
    vc.on_feeder_state(first.model_copy(update={"source": "repeat"}))  # same ts
    assert vc.fresh_state() is None
    second = measured(duo, T0 + timedelta(seconds=2))
    vc.on_feeder_state(second)
    assert vc.fresh_state() is second


def test_limits_and_kpi_of_a_decision(duo: Feeder, tmp_path: Path) -> None:
    vc = make_state(settings_for(tmp_path), duo)
    state = measured(duo, T0)
    decision = vc.coordinator.decide(state)
    msg = vc.limits_message(decision)
    assert (msg.ts, msg.feeder_id, msg.ttl_s) == (SENT_AT, "duo", 90)
    assert msg.priority is Priority.GRID_OPERATOR
    assert msg.limits_kw == decision.limits_kw
    assert msg.limits_kw["pv3"] < 250.0  # bus 3 is the one above the limit
    kpi = vc.kpi_report(decision, state, msg)
    assert (kpi.ts, kpi.name, kpi.source) == (SENT_AT, "pv_curtailment", NAME)
    values = kpi.values
    assert values["available_kw"] == 550.0
    assert values["curtailed_kw"] == round(decision.curtailment.curtailed_kw, 4)
    assert values["curtailed_kw"] > 0
    assert values["v_measured_max_pu"] == pytest.approx(1.03608, abs=1e-5)
    assert values["v_predicted_max_pu"] <= V_MAX + 1e-6
    assert values["bias_rounds"] == 1.0  # no AC model: the bias is bounded in one round


def test_rest_bodies_before_and_after_a_decision(duo: Feeder, tmp_path: Path) -> None:
    vc = make_state(settings_for(tmp_path), duo)
    assert vc.setpoints_view() == {"feeder_id": "duo", "published": False}
    assert vc.voltages_view() == {"feeder_id": "duo", "v_max_pu": V_MAX}
    assert vc.plot_png() is None
    state = measured(duo, T0)
    vc.on_feeder_state(state)
    decision = vc.coordinator.decide(state)
    msg = vc.limits_message(decision)
    vc.published_decision(decision, state, msg)
    assert vc.solves == 1
    sent = vc.setpoints_view()
    assert sent["published"] is True
    assert (sent["setpoint_id"], sent["ts"], sent["ttl_s"]) == (
        msg.setpoint_id,
        SENT_AT.isoformat(),
        90,
    )
    assert (sent["priority"], sent["method"]) == ("grid_operator", "centralised")
    assert sent["limits_kw"] == msg.limits_kw
    volts = vc.voltages_view()
    assert volts["nodes_above"] == 1  # bus 3 phase a; buses 1 and 2 peak at 1.022
    assert volts["measured_max_pu"] == pytest.approx(1.03608, abs=1e-5)
    assert sorted(volts["predicted_after_pu"]) == ["1", "2", "3", "s"]
    assert volts["predicted_after_pu"]["s"] == [1.0, 1.0, 1.0]
    assert volts["predicted_max_pu"] <= V_MAX + 1e-6
    png = vc.plot_png()
    assert png is not None
    assert png.startswith(b"\x89PNG")


def test_a_round_start_names_the_state_and_the_rule(duo: Feeder, tmp_path: Path) -> None:
    vc = make_state(settings_for(tmp_path, mode="agents", fairness="none"), duo)
    state = measured(duo, T0)
    rnd = vc.start_round(state, 5.0)
    assert vc.round is rnd
    assert rnd.area_ids == {"A", "B"}
    start = vc.round_start(rnd)
    assert (start.area_id, start.round_id, start.iteration) == ("coordinator", rnd.round_id, 0)
    assert start.values == {
        "state_ts_s": T0.timestamp(),
        "state_step": 0.0,
        "rule": float(RULE_CODES[("none", "feeder")]),
    }


def test_reconfigure_rebuilds_the_solvers(duo: Feeder, tmp_path: Path) -> None:
    old = settings_for(tmp_path)
    vc = make_state(old, duo)
    with pytest.raises(SolverError, match="sweep"):
        vc.coordinator.row_group_ids  # noqa: B018 - centralised has no rows
    vc.reconfigure(old, settings_for(tmp_path, mode="agents"))
    assert vc.coordinator.row_group_ids == ["duo"]


async def test_a_cycle_decides_on_a_new_state_and_publishes_once(
    duo: Feeder, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, write_setpoint_files=True)
    vc, bus = await connected(settings, duo)
    await vc.cycle()
    assert bus.published == []  # no state yet
    state = measured(duo, T0)
    vc.on_feeder_state(state)
    await vc.cycle()
    assert topics_of(bus, settings.mqtt.root) == [LIMITS, KPI]
    decision = vc.decision
    assert decision is not None
    assert (vc.solves, decision.method) == (1, "centralised")
    assert vc.before is state
    sent = json.loads(bus.published[0].payload)
    assert sent["limits_kw"] == decision.limits_kw
    files = sorted(setpoint_dir(settings, "duo").glob("*.json"))
    assert [f.stem for f in files] == ["A", "B"]
    assert json.loads(files[1].read_text())["pvs"]["pv3"]["limit_kw"] == sent["limits_kw"]["pv3"]
    await vc.cycle()  # the same state: nothing new
    assert len(bus.published) == 2
    assert vc.solves == 1


async def test_a_round_that_times_out_falls_back_on_the_latest_state(
    duo: Feeder, tmp_path: Path
) -> None:
    clock = Clock()
    settings = settings_for(tmp_path, mode="agents", round_timeout_s=20)
    vc, bus = await connected(settings, duo, clock)
    first = measured(duo, T0)
    vc.on_feeder_state(first)
    await vc.cycle()
    assert topics_of(bus, settings.mqtt.root) == [START]
    assert vc.round is not None
    assert vc.round.started_s == 100.0
    clock.s = 119.9
    await vc.cycle()  # still waiting for the areas
    assert len(bus.published) == 1
    assert vc.fallbacks == 0
    later = measured(duo, T0 + timedelta(seconds=2))
    vc.on_feeder_state(later)
    clock.s = 120.0
    await vc.cycle()
    assert vc.service.degraded_reasons["agents"] == "round timed out; no answer from ['A', 'B']"
    assert vc.fallbacks == 1
    assert vc.round is None
    assert vc.abandoned is not None
    assert vc.abandoned.state is first
    assert vc.before is later  # the latest state, not the round's
    assert vc.decision is not None
    assert vc.decision.method == "centralised"
    assert topics_of(bus, settings.mqtt.root)[1:] == [LIMITS, KPI]
    await vc.cycle()  # the latest state is decided: no round for it
    assert vc.round is None
    assert len(bus.published) == 3
    vc.on_feeder_state(measured(duo, T0 + timedelta(seconds=4)))
    await vc.cycle()  # a new state goes to the agents again
    assert vc.round is not None
    assert topics_of(bus, settings.mqtt.root)[3:] == [START]


async def test_every_area_answered_decides_on_their_rows(duo: Feeder, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, mode="agents")
    vc, bus = await connected(settings, duo)
    state = measured(duo, T0)
    vc.on_feeder_state(state)
    await vc.cycle()
    rnd = vc.round
    assert rnd is not None
    groups = vc.coordinator.row_group_ids
    assert vc.coordinator.sweep is not None
    rows = vc.coordinator.sweep.sweep(vc.coordinator.inputs(state)).to_values(groups)

    def answer(
        area_id: str, values: dict[str, float], round_id: str = rnd.round_id
    ) -> AreaExchange:
        return AreaExchange(
            ts=T0,
            source="test",
            area_id=area_id,
            round_id=round_id,
            iteration=3,
            values=values,
            converged=True,
        )

    await vc.on_area_exchange(answer("A", {"v:0": 1.0, "a:0:nogroup": 1.0}))
    assert vc.service.degraded_reasons["agents"].startswith("area A: malformed area rows")
    assert vc.round is rnd
    assert vc.solves == 0
    await vc.on_area_exchange(answer("A", rows, round_id="an-older-round"))
    await vc.on_area_exchange(answer("A", rows))  # the whole feeder's rows, from one area
    assert vc.round is rnd
    assert vc.solves == 0
    await vc.on_area_exchange(answer("B", {}))
    assert vc.round is None
    assert vc.solves == 1
    assert "agents" not in vc.service.degraded_reasons
    decision = vc.decision
    assert decision is not None
    assert decision.method == "agents"
    centralised = vc.coordinator.decide(state, centralised=True)
    assert decision.curtailment.curtailed_kw == pytest.approx(
        centralised.curtailment.curtailed_kw, rel=1e-3
    )
    assert topics_of(bus, settings.mqtt.root) == [START, LIMITS, KPI]


def _failing() -> Decision:
    raise SolverError("no solution")


async def test_a_failing_solve_falls_back_to_the_centralised_lp(
    duo: Feeder, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, mode="distributed")
    vc, bus = await connected(settings, duo)
    state = measured(duo, T0)
    await vc.decide(state, _failing)
    reasons = vc.service.degraded_reasons
    assert reasons["solver"] == "no solution; fell back to the centralised solver"
    assert vc.decision is not None
    assert vc.decision.method == "centralised"
    assert topics_of(bus, settings.mqtt.root) == [LIMITS, KPI]
    await vc.decide(state, lambda: vc.coordinator.decide(state))
    assert "solver" not in vc.service.degraded_reasons
    assert vc.decision.method == "distributed-sweep"
    assert vc.solves == 2


async def test_in_centralised_mode_a_failing_solve_keeps_the_live_limits(
    duo: Feeder, tmp_path: Path
) -> None:
    vc, bus = await connected(settings_for(tmp_path), duo)
    await vc.decide(measured(duo, T0), _failing)
    assert vc.service.degraded_reasons["solver"] == "no solution"
    assert bus.published == []
    assert vc.solves == 0
    assert vc.decision is None
