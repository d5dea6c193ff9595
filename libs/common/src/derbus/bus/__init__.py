"""The message bus: one `Bus` protocol, `MqttBus` for brokers and `InMemoryBus` for unit tests."""

from derbus.bus.base import Bus, MessageCallback, RawMessage, Will, filter_matches
from derbus.bus.memory import InMemoryBroker, InMemoryBus
from derbus.bus.mqtt import MqttBus

__all__ = [
    "Bus",
    "InMemoryBroker",
    "InMemoryBus",
    "MessageCallback",
    "MqttBus",
    "RawMessage",
    "Will",
    "filter_matches",
]
