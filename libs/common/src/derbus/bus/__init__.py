"""The message bus: one `Bus` protocol; `GmqttBus` and `MqttBus` for brokers, `InMemoryBus` for tests.

Services get theirs from `make_bus`, which picks the implementation (`MQTT_CLIENT`) and gives
the client a stable id derived from the topic root, service, site and replica, so its session
(subscriptions and the QoS 1 messages sent while it was away) survives restarts.
"""

from derbus.bus.base import (
    Bus,
    BusStats,
    ConnectListener,
    MessageCallback,
    RawMessage,
    Will,
    filter_matches,
)
from derbus.bus.gmqtt_bus import GmqttBus
from derbus.bus.memory import InMemoryBroker, InMemoryBus
from derbus.bus.mqtt import MqttBus
from derbus.bus.outcomes import Outcomes
from derbus.settings import MqttSettings


def make_bus(
    settings: MqttSettings,
    service: str,
    *,
    site_id: str | None = None,
    manual_ack: bool = False,
    client_id: str | None = None,
) -> GmqttBus | MqttBus:
    """The bus a service runs on: `settings.client` picks gmqtt (default) or paho.

    Args:
        settings: broker settings (`MQTT_*`).
        service: service name, part of the derived client id.
        site_id: the site this instance looks after (part of the derived client id).
        manual_ack: acknowledge QoS 1 deliveries only after the handlers ran.
        client_id: a fixed id instead of the derived one (`settings.client_id` wins over both).
    """
    client_id = settings.client_id or client_id or settings.derived_client_id(service, site_id)
    if settings.client == "paho":
        return MqttBus(settings, client_id=client_id, manual_ack=manual_ack)
    return GmqttBus(settings, client_id=client_id, manual_ack=manual_ack)


__all__ = [
    "Bus",
    "BusStats",
    "ConnectListener",
    "GmqttBus",
    "InMemoryBroker",
    "InMemoryBus",
    "MessageCallback",
    "MqttBus",
    "Outcomes",
    "RawMessage",
    "Will",
    "filter_matches",
    "make_bus",
]
