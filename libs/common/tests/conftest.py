"""Bus harnesses: one contract, three buses (in memory, paho and gmqtt on a real Mosquitto)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from derbus.bus import Bus, GmqttBus, InMemoryBroker, InMemoryBus, MqttBus
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer


class Harness(Protocol):
    root: str
    name: str

    def client(
        self,
        persistent: bool = False,
        client_id: str | None = None,
        manual_ack: bool = False,
        max_queued: int | None = None,
    ) -> Bus: ...
    def stop_broker(self) -> None: ...
    def start_broker(self) -> None: ...
    async def let_time_pass(self, seconds: float) -> None: ...
    def clock(self) -> float: ...


@dataclass
class MemoryHarness:
    root: str
    name: str = "memory"
    now_s: float = 0.0
    broker: InMemoryBroker = field(default_factory=InMemoryBroker)

    def __post_init__(self) -> None:
        self.broker.clock = lambda: self.now_s

    def client(
        self,
        persistent: bool = False,
        client_id: str | None = None,
        manual_ack: bool = False,
        max_queued: int | None = None,
    ) -> Bus:
        if persistent and client_id is None:
            client_id = f"derbus-test-{uuid.uuid4().hex[:8]}"
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
class MqttHarness:
    root: str
    server: MosquittoServer
    name: str = "paho"

    def settings(self) -> MqttSettings:
        return MqttSettings(
            host=self.server.host,
            port=self.server.port,
            root=self.root,
            connect_retries=3,
            reconnect_min_delay_s=0.2,
            reconnect_max_delay_s=1.0,
            keepalive_s=5,
            will_delay_s=0,
        )

    def client(
        self,
        persistent: bool = False,
        client_id: str | None = None,
        manual_ack: bool = False,
        max_queued: int | None = None,
    ) -> Bus:
        if persistent and client_id is None:
            client_id = f"derbus-test-{uuid.uuid4().hex[:8]}"
        if self.name == "gmqtt":
            return GmqttBus(
                self.settings(), client_id=client_id, manual_ack=manual_ack, max_queued=max_queued
            )
        return MqttBus(
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
