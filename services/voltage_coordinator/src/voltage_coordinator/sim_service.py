"""Wiring of the feeder simulation: AC power flow state out, PV limit batches in (with acks)."""

from __future__ import annotations

import asyncio

from derbus import topics
from derbus.bus.base import Bus
from derbus.messages import PvCurtailmentSet, utcnow
from derbus.service import Context, Service
from voltage_coordinator.feeder import FEEDER_DEVICE, Feeder
from voltage_coordinator.settings import Settings
from voltage_coordinator.simulation import FeederSimulation

NAME = "feeder_sim"


def build_feeder_sim(
    settings: Settings, bus: Bus, feeder: Feeder | None = None
) -> Service[Settings, FeederSimulation]:
    """The feeder simulation as a service: publishes topics.FEEDER_STATE every `sim_interval_s`.

    A batch on topics.PV_CURTAILMENT is applied at once (ack on topics.SETPOINT_ACK, device
    `feeder`) and a fresh state is published for the same step, so the loop closes quickly.
    """
    feeder = feeder or settings.load_feeder()
    sim = FeederSimulation(feeder, settings.sim_start_step, settings.sim_hold_step)
    # its own service and broker user (`feeder_sim` in the catalogue and the ACL)
    service: Service[Settings, FeederSimulation] = Service(NAME, settings, bus, state=sim)
    service.declare_publishes(topics.FEEDER_STATE, topics.SETPOINT_ACK)
    lock = asyncio.Lock()
    fid = feeder.feeder_id

    async def publish_state() -> None:
        if sim.closed:  # limits arriving while the service stops: nothing left to solve on
            return
        async with lock:
            # on the AC flow's own engine thread (the only thread that touches its DSS context)
            loop = asyncio.get_running_loop()
            state = await loop.run_in_executor(sim.ac.executor, sim.solve, utcnow())
        await service.publish(topics.FEEDER_STATE, state, site_id=fid, device_id=FEEDER_DEVICE)

    @service.on_shutdown
    async def release_engine() -> None:
        # after the tasks are cancelled a solve may still run on the engine thread: wait for it
        await asyncio.to_thread(sim.close)

    @service.on(topics.PV_CURTAILMENT, site_id=fid)
    async def on_limits(msg: PvCurtailmentSet, ctx: Context) -> None:
        async with lock:
            ack = sim.apply(msg, utcnow())
        await service.publish(topics.SETPOINT_ACK, ack, site_id=fid, device_id=FEEDER_DEVICE)
        await publish_state()

    @service.every(lambda: service.settings.sim_interval_s, run_at_start=True)
    async def tick(ctx: Context) -> None:
        await publish_state()
        sim.advance()

    return service
