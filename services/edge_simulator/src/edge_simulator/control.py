"""Setpoints of every simulated device: one SetpointArbiter per (site, device), turned into overrides.

`Controls` is pure (`now` is an argument); `SimSetpoints` makes the simulator a setpoint receiver
for `derbus.setpoint_receiver.serve_setpoints`. Device ids and targets follow the cross-service
contract: `battery` → `battery_p_kw` (+ charge), `pv` → `pv_limit_kw` / `pv_limit_pct`,
`load1`, `load2`, `ev` → `load_on` (1 on / 0 off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from derbus.messages import SetpointAck, SetpointCommand, SetpointTarget
from derbus.setpoint_receiver import done
from derbus.setpoints import SetpointArbiter, TargetLimits
from edge_simulator.fleet import Fleet, Overrides

CONTROLLABLE: dict[str, tuple[SetpointTarget, ...]] = {
    "battery": ("battery_p_kw",),
    "pv": ("pv_limit_kw", "pv_limit_pct"),
    "load1": ("load_on",),
    "load2": ("load_on",),
    "ev": ("load_on",),
}
"""Devices that take setpoints and their targets."""


@dataclass(frozen=True)
class AckOut:
    """An acknowledgement to publish for a site's device."""

    site_index: int
    device_id: str
    ack: SetpointAck


@dataclass
class Controls:
    """The live setpoints of a fleet; arbiters are created on a device's first setpoint.

    Args:
        fleet: the simulated sites (their ratings bound the accepted ranges).
        source: written in the acknowledgements.
    """

    fleet: Fleet
    source: str = "edge_simulator"
    arbiters: dict[tuple[int, str], SetpointArbiter] = field(default_factory=dict)

    def limits(self, site_index: int, device_id: str) -> dict[SetpointTarget, TargetLimits]:
        """The ranges a device accepts (its ratings)."""
        f = self.fleet
        if device_id == "battery":
            return {
                "battery_p_kw": TargetLimits(
                    -float(f.battery_max_discharge_kw[site_index]),
                    float(f.battery_max_charge_kw[site_index]),
                )
            }
        if device_id == "pv":
            return {
                "pv_limit_kw": TargetLimits(0.0, float(f.pv_capacity_kw[site_index])),
                "pv_limit_pct": TargetLimits(0.0, 100.0),
            }
        if device_id in CONTROLLABLE:
            return {"load_on": TargetLimits(0.0, 1.0)}
        raise KeyError(device_id)

    def arbiter(self, site_index: int, device_id: str) -> SetpointArbiter:
        """The arbiter of a device (created on first use)."""
        key = (site_index, device_id)
        arb = self.arbiters.get(key)
        if arb is None:
            arb = self.arbiters[key] = SetpointArbiter(
                self.source, self.limits(site_index, device_id)
            )
        return arb

    def submit(
        self, site_index: int, device_id: str, cmd: SetpointCommand, now: datetime
    ) -> list[AckOut]:
        """Apply the setpoint contract to a command; returns the acks to publish."""
        return [
            AckOut(site_index, device_id, a)
            for a in self.arbiter(site_index, device_id).submit(cmd, now)
        ]

    def cancel(
        self, site_index: int, device_id: str, setpoint_id: str, now: datetime, reason: str
    ) -> list[AckOut]:
        """End one setpoint before its TTL (e.g. a Modbus client disabled its control)."""
        arb = self.arbiters.get((site_index, device_id))
        if arb is None:
            return []
        return [AckOut(site_index, device_id, a) for a in arb.withdraw(setpoint_id, now, reason)]

    def expire(self, now: datetime) -> list[AckOut]:
        """End the setpoints whose TTL passed; returns their `expired` acks."""
        out: list[AckOut] = []
        for (site, device), arb in self.arbiters.items():
            nxt = arb.next_expiry()
            if nxt is not None and nxt <= now:
                out.extend(AckOut(site, device, a) for a in arb.expire(now))
        return out

    def overrides(self, now: datetime) -> Overrides:
        """The values the physics applies now (NaN where the device runs on its own)."""
        ovr = Overrides.none(self.fleet.n_sites)
        for (site, device), arb in self.arbiters.items():
            if arb.idle:
                continue
            if device == "battery":
                ovr.battery_p_kw[site] = arb.value("battery_p_kw", now, np.nan)
            elif device == "pv":
                cap = float(self.fleet.pv_capacity_kw[site])
                limits = []
                kw = arb.value("pv_limit_kw", now)
                if kw is not None:
                    limits.append(kw)
                pct = arb.value("pv_limit_pct", now)
                if pct is not None:
                    limits.append(cap * pct / 100.0)
                if limits:
                    ovr.pv_limit_kw[site] = min(limits)
            else:
                value = arb.value("load_on", now, np.nan)
                getattr(ovr, f"{device}_on")[site] = value
        return ovr


@dataclass
class SimSetpoints:
    """The simulator as a setpoint receiver (`derbus.setpoint_receiver.SetpointReceiver`).

    Args:
        controls: the arbiters of the fleet.
        clock: simulated time.
        publish: publishes acknowledgements on the bus.
        applied: told the site index after a setpoint came into force there.
    """

    controls: Controls
    clock: Callable[[], datetime]
    publish: Callable[[Iterable[AckOut]], Awaitable[None]]
    applied: Callable[[int], None]

    @property
    def source(self) -> str:
        """Written in the acks."""
        return self.controls.source

    def now(self) -> datetime:
        """Simulated time."""
        return self.clock()

    def sites(self) -> Iterable[str]:
        """The simulated sites."""
        return self.controls.fleet.ids

    def devices(self, site_id: str) -> Collection[str] | None:
        """The controllable devices of a simulated site (None for another site)."""
        return CONTROLLABLE.keys() if site_id in self.controls.fleet.index else None

    async def submit(
        self, site_id: str, device_id: str, cmd: SetpointCommand
    ) -> asyncio.Future[SetpointAck]:
        """Apply the contract at once and publish the acks; the first one is returned."""
        index = self.controls.fleet.index[site_id]
        acks = self.controls.submit(index, device_id, cmd, self.clock())
        await self.publish(acks)
        if acks[0].ack.status == "accepted":
            self.applied(index)
        return done(acks[0].ack)
