"""Bus harnesses: the same contract tests run on InMemoryBus and on MqttBus with a real Mosquitto."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pytest

from derbus.bus import Bus, InMemoryBroker, InMemoryBus, MqttBus
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer


class Harness(Protocol):
    root: str

    def client(self, persistent: bool = False) -> Bus: ...
    def stop_broker(self) -> None: ...
    def start_broker(self) -> None: ...


@dataclass
class MemoryHarness:
    root: str
    broker: InMemoryBroker = field(default_factory=InMemoryBroker)

    def client(self, persistent: bool = False) -> Bus:
        return InMemoryBus(self.broker)

    def stop_broker(self) -> None:
        self.broker.stop()

    def start_broker(self) -> None:
        self.broker.start()


@dataclass
class MqttHarness:
    root: str
    server: MosquittoServer

    def settings(self) -> MqttSettings:
        return MqttSettings(
            host=self.server.host, port=self.server.port, root=self.root, connect_retries=3,
            reconnect_min_delay_s=0.2, reconnect_max_delay_s=1.0, keepalive_s=5,
        )  # fmt: skip

    def client(self, persistent: bool = False) -> Bus:
        client_id = f"derbus-test-{uuid.uuid4().hex[:8]}" if persistent else None
        return MqttBus(self.settings(), client_id=client_id)

    def stop_broker(self) -> None:
        self.server.stop()

    def start_broker(self) -> None:
        self.server.start()


@pytest.fixture(params=["memory", "mqtt"])
def harness(request: pytest.FixtureRequest, topic_root: str) -> Iterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness(topic_root)
    else:
        server: MosquittoServer = request.getfixturevalue("restartable_broker")
        yield MqttHarness(topic_root, server)
