"""Fixtures shared by the integration tests (the broker, database and topic-root fixtures come
from the derbus.testing pytest plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from derbus.bus import MqttBus
from derbus.service import Service
from derbus.settings import MqttSettings
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.simulator import Simulator
from edge_simulator.testing import ManualClock, running_simulator

SIM_START = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)
"""Where the `sim_clock` fixture starts: a summer-solstice morning."""


@pytest.fixture
def sim_clock() -> ManualClock:
    """The simulator's clock, moved only by the test."""
    return ManualClock(SIM_START)


@pytest.fixture
async def simulator(
    mqtt_settings: MqttSettings, sim_clock: ManualClock
) -> AsyncIterator[Service[SimSettings, Simulator]]:
    """The edge simulator on the test's broker and topic root, stepped by hand on `sim_clock`."""
    async with running_simulator(mqtt_settings, sim_clock) as service:
        yield service


@pytest.fixture
async def probe(mqtt_settings: MqttSettings) -> AsyncIterator[MqttBus]:
    """A connected client on the test's broker: the outside party that records and publishes."""
    bus = MqttBus(mqtt_settings)
    await bus.connect()
    yield bus
    await bus.close()
