"""Area agents as services on the bus: the boundary sweep over topics.AREA_EXCHANGE.

A round starts when the coordinator publishes an exchange from `coordinator` naming the feeder
state to use and the fairness rule. Each area then publishes (device level = its area id):
iteration 1, its root flows (up, once all its children's arrived); iteration 2, its children's
root voltages (down, once its parent's arrived); iteration 3 (`converged`), its near-limit node
voltages and its available power per group. All are affine in the group fractions (per PV for
`equal_kw`; see sweep.py). Only boundary values travel; each agent keeps its own area's model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from derbus import topics
from derbus.bus.base import Bus
from derbus.messages import AreaExchange, FeederState, utcnow
from derbus.service import Context, Service
from voltage_coordinator.admm import area_specs
from voltage_coordinator.correction import inputs_from_state
from voltage_coordinator.feeder import COORDINATOR_DEVICE, FEEDER_DEVICE, Feeder
from voltage_coordinator.network import compile_tree
from voltage_coordinator.settings import Settings
from voltage_coordinator.sweep import RULES, Boundary, SweepAgent, group_order

NAME = "voltage_area"
_KEEP_STATES = 16


@dataclass
class _AgentRound:
    round_id: str
    state_ts_s: float
    agent: SweepAgent
    started: bool = False
    flows: Boundary = field(default_factory=dict)
    flows_from: set[str] = field(default_factory=set)
    volts: Boundary | None = None
    sent_up: bool = False
    done: bool = False


@dataclass
class AgentState:
    """An area agent's memory: recent feeder states, the round in flight, rounds answered."""

    states: dict[float, FeederState] = field(default_factory=dict)
    current: _AgentRound | None = None
    rounds_done: int = 0

    def remember(self, state: FeederState) -> None:
        """Keep a feeder state (the latest few)."""
        self.states[state.ts.timestamp()] = state
        for key in sorted(self.states)[:-_KEEP_STATES]:
            del self.states[key]

    def find_state(self, ts_s: float) -> FeederState | None:
        """The state a round names (by timestamp)."""
        for key, state in self.states.items():
            if math.isclose(key, ts_s, rel_tol=0.0, abs_tol=1e-4):
                return state
        return None


def build_area_agent(
    settings: Settings, bus: Bus, area_id: str, feeder: Feeder | None = None
) -> Service[Settings, AgentState]:
    """One area agent of the feeder as its own service (`voltage_area`; area id in the exchange).

    Every agent runs as service and broker user `voltage_area` (the ACL grants a service its
    status on its own name only), so the agents share one status topic; the area id is the
    device level of their topics.AREA_EXCHANGE messages and the `source` of each message.
    """
    feeder = feeder or settings.load_feeder()
    specs = {s.id: s for s in area_specs(feeder)}
    if area_id not in specs:
        raise ValueError(f"area {area_id!r} not in the feeder (areas: {sorted(specs)})")
    spec = specs[area_id]
    owner = feeder.area_of()
    child_areas = {owner[g] for g in spec.ghosts}
    agents: dict[int, SweepAgent] = {}  # by fairness rule code, built on first use

    def agent_for(rule: int) -> SweepAgent:
        if rule not in agents:
            fairness, group_by = RULES[rule]
            if fairness == "equal_kw":  # rows over one fraction per PV (see sweep.py)
                fairness, group_by = "none", "feeder"
            groups, group_ids = group_order(feeder, fairness, group_by)
            agents[rule] = SweepAgent(feeder, spec, settings.limits(), groups, group_ids)
        return agents[rule]

    tree = compile_tree(feeder)
    st = AgentState()
    service: Service[Settings, AgentState] = Service(NAME, settings, bus, state=st)
    service.declare_publishes(topics.AREA_EXCHANGE)
    fid = feeder.feeder_id

    async def send(rnd: _AgentRound, iteration: int, values: Boundary, done: bool) -> None:
        msg = AreaExchange(
            ts=utcnow(),
            source=f"{NAME}:{area_id}",
            area_id=area_id,
            round_id=rnd.round_id,
            iteration=iteration,
            values=values,
            converged=done,
        )
        await service.publish(topics.AREA_EXCHANGE, msg, site_id=fid, device_id=area_id)

    async def progress(rnd: _AgentRound) -> None:
        if not rnd.started:
            state = st.find_state(rnd.state_ts_s)
            if state is None:
                return  # the state has not reached this agent yet; on_state resumes
            rnd.agent.set_inputs(inputs_from_state(feeder, tree, state))
            rnd.started = True
        if not rnd.sent_up and rnd.flows_from >= child_areas:
            up = rnd.agent.backward(rnd.flows)
            rnd.sent_up = True
            if spec.parent is not None:
                await send(rnd, 1, up, False)
            else:
                rnd.volts = {}
        if rnd.sent_up and rnd.volts is not None and not rnd.done:
            down, rows = rnd.agent.forward(rnd.volts)
            rnd.done = True
            if down:
                await send(rnd, 2, down, False)
            await send(rnd, 3, rows.to_values(rnd.agent.group_ids), True)
            st.rounds_done += 1

    @service.on(topics.FEEDER_STATE, site_id=fid, device_id=FEEDER_DEVICE)
    async def on_state(msg: FeederState, ctx: Context) -> None:
        st.remember(msg)
        if st.current is not None:
            await progress(st.current)

    @service.on(topics.AREA_EXCHANGE, site_id=fid)
    async def on_exchange(msg: AreaExchange, ctx: Context) -> None:
        if msg.area_id == COORDINATOR_DEVICE:
            rule = int(msg.values.get("rule", 0))
            if rule not in RULES:
                await service.set_degraded("round", f"unknown fairness rule code {rule}")
                return
            st.current = _AgentRound(msg.round_id, msg.values["state_ts_s"], agent_for(rule))
            await progress(st.current)
            return
        rnd = st.current
        if rnd is None or msg.round_id != rnd.round_id or msg.area_id == area_id:
            return
        if msg.iteration == 1 and msg.area_id in child_areas:
            rnd.flows.update(msg.values)
            rnd.flows_from.add(msg.area_id)
        elif msg.iteration == 2 and msg.area_id == spec.parent:
            rnd.volts = {k: v for k, v in msg.values.items() if f":{spec.root_bus}:" in k}
        await progress(rnd)

    return service
