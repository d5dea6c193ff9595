"""Test helpers for the simulator and its users: a manual clock, a small fleet factory and a
running simulator service on a broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from derbus.bus.mqtt import MqttBus
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.storage import reading_rows
from derbus.testing import free_port
from derbus.topics import TopicIds
from edge_simulator.fleet import Fleet, Location
from edge_simulator.service import build_service
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig
from edge_simulator.simulator import Simulator
from edge_simulator.wire import DEVICES

T0 = datetime(2026, 6, 22, 0, 0, tzinfo=UTC)
"""A summer Monday, midnight UTC."""


def steady_site(load_kw: float, battery_kw: float, capacity_kwh: float) -> SimConfig:
    """A site drawing a steady `load_kw` (no noise, no PV at night, no built-in EV, no
    appliances) with a battery of `battery_kw` both ways that stays idle unless told otherwise."""
    return SimConfig.model_validate(
        {
            "home_load": {
                "base_load_kw": load_kw,
                "base_noise": 0.0,
                "hvac_max_kw": 0.0,
                "appliance_kw": 0.0,
                "lighting_kw": 0.0,
                "cooking_kw": 0.0,
            },
            "ev": {"enabled": False},
            "battery": {
                "capacity_kwh": capacity_kwh,
                "max_charge_kw": battery_kw,
                "max_discharge_kw": battery_kw,
                "initial_soc_pct": 60.0,
                "self_consumption": False,
            },
        }
    )


@dataclass
class ManualClock:
    """A clock moved by hand (pass it as `build_service(..., clock=clock)`)."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


@contextlib.asynccontextmanager
async def running_simulator(
    mqtt: MqttSettings, clock: ManualClock
) -> AsyncIterator[Service[Settings, Simulator]]:
    """The simulator service on `mqtt`'s broker, stepped only by hand (hourly interval), its
    Modbus server on a free loopback port; stopped on exit."""
    settings = Settings(
        mqtt=mqtt, api_port=0, interval_s=3600, modbus_port=free_port(), modbus_host="127.0.0.1"
    )
    service = build_service(settings, MqttBus(mqtt), clock=clock)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def make_fleet(
    config: SimConfig | None = None, n_sites: int = 1, seed: int = 7, **kw: Any
) -> Fleet:
    """A fleet at the default location (Barcelona) starting at T0."""
    start = kw.pop("start", T0)
    return Fleet(config or SimConfig(), Location(), n_sites, seed, start, **kw)


def sent_rows(service: Any) -> set[tuple[datetime, str, str, str, float]]:
    """Every reading a running simulator service published and still holds in its sent buffer,
    as `readings` rows (time, site_id, device_id, metric, value): a fault test's ground truth."""
    sim = service.state
    devices = [d for d in DEVICES if d.device_id in service.settings.devices]
    rows: set[tuple[datetime, str, str, str, float]] = set()
    for step in sim.sent_buffer.steps:
        for k, device in enumerate(devices):
            for j, payload in enumerate(step.payloads[k]):
                ids = TopicIds(sim.fleet.ids[step.sites[j]], device.device_id)
                message = device.spec.model.from_json_bytes(payload)
                for r in reading_rows(device.spec, ids, message):
                    rows.add((r.time, r.site_id, r.device_id, r.metric, r.value))
    return rows
