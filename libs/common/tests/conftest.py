"""Bus harnesses: one contract, three buses (in memory, paho and gmqtt on a real Mosquitto)."""

from __future__ import annotations

import abc
import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from derbus.bus import Bus, GmqttBus, InMemoryBroker, InMemoryBus, MqttBus
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer, mqtt_test_settings


class Harness(abc.ABC):
    """A broker the contract runs on, and the clients of one bus implementation on it."""

    root: str
    name: str

    def client(
        self,
        persistent: bool = False,
        client_id: str | None = None,
        manual_ack: bool = False,
        max_queued: int | None = None,
    ) -> Bus:
        """A new client; `persistent` without a `client_id` gets a session id of its own."""
        if persistent and client_id is None:
            client_id = f"derbus-test-{uuid.uuid4().hex[:8]}"
        return self.bus(client_id, manual_ack, max_queued)

    @abc.abstractmethod
    def bus(self, client_id: str | None, manual_ack: bool, max_queued: int | None) -> Bus: ...
    @abc.abstractmethod
    def stop_broker(self) -> None: ...
    @abc.abstractmethod
    def start_broker(self) -> None: ...
    @abc.abstractmethod
    async def let_time_pass(self, seconds: float) -> None: ...
    @abc.abstractmethod
    def clock(self) -> float: ...


@dataclass
class MemoryHarness(Harness):
    root: str
    name: str = "memory"
    now_s: float = 0.0
    broker: InMemoryBroker = field(default_factory=InMemoryBroker)

    def __post_init__(self) -> None:
        self.broker.clock = lambda: self.now_s

    def bus(self, client_id: str | None, manual_ack: bool, max_queued: int | None) -> Bus:
        return InMemoryBus(self.broker, client_id=client_id, max_queued=max_queued or 1_000_000)

    def stop_broker(self) -> None:
        self.broker.stop()

    def start_broker(self) -> None:
        self.broker.start()

    async def let_time_pass(self, seconds: float) -> None:
        """The in-memory broker's clock is injected: move it."""
        self.now_s += seconds

    def clock(self) -> float:
        return self.now_s


@dataclass
class MqttHarness(Harness):
    root: str
    server: MosquittoServer
    name: str = "paho"

    def settings(self) -> MqttSettings:
        return mqtt_test_settings(
            self.server.host, self.server.port, self.root, keepalive_s=5, will_delay_s=0
        )

    def bus(self, client_id: str | None, manual_ack: bool, max_queued: int | None) -> Bus:
        bus_class = GmqttBus if self.name == "gmqtt" else MqttBus
        return bus_class(
            self.settings(), client_id=client_id, manual_ack=manual_ack, max_queued=max_queued
        )

    def stop_broker(self) -> None:
        self.server.stop()

    def start_broker(self) -> None:
        self.server.start()

    async def let_time_pass(self, seconds: float) -> None:
        """A real broker's clock cannot be injected: message expiry needs the time to pass."""
        await asyncio.sleep(seconds)

    def clock(self) -> float:
        return time.monotonic()


@pytest.fixture(params=["memory", "paho", "gmqtt"])
def harness(request: pytest.FixtureRequest, topic_root: str) -> Iterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness(topic_root)
    else:
        server: MosquittoServer = request.getfixturevalue("restartable_broker")
        yield MqttHarness(topic_root, server, request.param)


@pytest.fixture(params=["paho", "gmqtt"])
def mqtt_harness(request: pytest.FixtureRequest, topic_root: str) -> MqttHarness:
    """The two buses on a real broker only (features an in-memory broker does not model)."""
    server: MosquittoServer = request.getfixturevalue("restartable_broker")
    return MqttHarness(topic_root, server, request.param)
