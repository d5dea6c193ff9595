"""`GmqttBus` specifics on a real Mosquitto (beyond the contract every bus passes)."""

from __future__ import annotations

import asyncio

from derbus import topics
from derbus.bus import GmqttBus, RawMessage
from derbus.testing import MosquittoServer, mqtt_test_settings, wait_for


async def test_subscribe_survives_a_broker_restart_before_its_suback(
    restartable_broker: MosquittoServer, topic_root: str
) -> None:
    """A SUBSCRIBE lost with its connection is answered on the next one: subscribe returns."""
    broker = restartable_broker
    settings = mqtt_test_settings(broker.host, broker.port, topic_root, keepalive_s=5)
    bus = GmqttBus(settings, client_id=f"sub-{topic_root[-8:]}")
    await bus.connect()
    got: list[bytes] = []

    async def record(message: RawMessage) -> None:
        got.append(message.payload)

    subscribing = asyncio.ensure_future(
        bus.subscribe(topics.METER.filter(root=topic_root), 1, record)
    )
    restartable_broker.stop()  # before the task ran: its SUBSCRIBE goes to a dead connection
    restartable_broker.start()
    await asyncio.wait_for(subscribing, 30)
    assert bus.stats.connections == 2
    pub = GmqttBus(settings)
    await pub.connect()
    await pub.publish(topics.METER.topic("s1", "pcc", topic_root), b"after", qos=1)
    await wait_for(lambda: got == [b"after"], 15, message="delivery on the renewed subscription")
    await pub.close()
    await bus.close()
