"""One contract, two buses: InMemoryBus and MqttBus on a real Mosquitto behave the same."""

from __future__ import annotations

import asyncio
from typing import Any
from typing import Any as Harness

import pytest

from derbus import topics
from derbus.bus import RawMessage, Will
from derbus.testing import wait_for


class Inbox:
    def __init__(self) -> None:
        self.items: list[RawMessage] = []

    async def __call__(self, message: RawMessage) -> None:
        self.items.append(message)

    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.items]

    def topics(self) -> set[str]:
        return {m.topic for m in self.items}


async def test_wildcard_delivery(harness: Harness) -> None:
    sub, pub = harness.client(), harness.client()
    await sub.connect()
    await pub.connect()
    inbox_plus, inbox_hash = Inbox(), Inbox()
    await sub.subscribe(topics.METER.filter(root=harness.root), 1, inbox_plus)
    await sub.subscribe(topics.category_filter("telemetry", harness.root), 1, inbox_hash)
    t1 = topics.METER.topic("s1", "pcc", harness.root)
    t2 = topics.METER.topic("s2", "sub", harness.root)
    t3 = topics.PV.topic("s1", "pv1", harness.root)
    t4 = topics.SETPOINT.topic("s1", "bat", harness.root)
    for t in (t1, t2, t3, t4):
        await pub.publish(t, t.encode(), qos=1)
    await wait_for(lambda: len(inbox_hash.items) == 3 and len(inbox_plus.items) == 2, 10)
    assert inbox_plus.topics() == {t1, t2}
    assert inbox_hash.topics() == {t1, t2, t3}
    await sub.close()
    await pub.close()


async def test_retained_message_reaches_a_later_subscriber(harness: Harness) -> None:
    pub = harness.client()
    await pub.connect()
    topic = topics.BATTERY.topic("s1", "bat", harness.root)
    await pub.publish(topic, b"first", qos=1, retain=True)
    await pub.publish(topic, b"latest", qos=1, retain=True)
    late = harness.client()
    await late.connect()
    inbox = Inbox()
    await late.subscribe(topics.BATTERY.filter(root=harness.root), 1, inbox)
    await wait_for(lambda: inbox.payloads() == [b"latest"], 10)
    assert inbox.items[0].retain is True
    await pub.close()
    await late.close()


async def test_last_will_on_unclean_disconnect(harness: Harness) -> None:
    watcher = harness.client()
    await watcher.connect()
    will_topic = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "victim", harness.root)
    inbox = Inbox()
    await watcher.subscribe(will_topic, 1, inbox)
    victim = harness.client()
    victim.set_will(Will(will_topic, b"offline", qos=1, retain=True))
    await victim.connect()
    await victim.abort()  # type: ignore[attr-defined]
    await wait_for(lambda: b"offline" in inbox.payloads(), 15, message="last will")
    await watcher.close()


async def test_clean_close_sends_no_will(harness: Harness) -> None:
    watcher = harness.client()
    await watcher.connect()
    will_topic = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "polite", harness.root)
    inbox = Inbox()
    await watcher.subscribe(will_topic, 1, inbox)
    polite = harness.client()
    polite.set_will(Will(will_topic, b"offline", qos=1, retain=False))
    await polite.connect()
    await polite.publish(will_topic, b"bye", qos=1)
    await polite.close()
    await wait_for(lambda: b"bye" in inbox.payloads(), 10)
    await watcher.drain()
    assert b"offline" not in inbox.payloads()
    await watcher.close()


async def test_qos1_delivery_across_broker_restart_with_resubscribe(harness: Harness) -> None:
    sub = harness.client(persistent=True)
    pub = harness.client(persistent=True)
    await sub.connect()
    await pub.connect()
    inbox = Inbox()
    topic = topics.METER.topic("s1", "pcc", harness.root)
    await sub.subscribe(topics.METER.filter(root=harness.root), 1, inbox)
    await pub.publish(topic, b"before", qos=1)
    await wait_for(lambda: inbox.payloads() == [b"before"], 10)

    harness.stop_broker()
    await wait_for(lambda: not sub.connected, 15, message="subscriber to notice the outage")
    await pub.publish(topic, b"during", qos=1)  # queued by the client while the broker is down
    harness.start_broker()

    await wait_for(lambda: sub.connected, 30, message="reconnect and re-subscribe")
    await wait_for(
        lambda: b"during" in inbox.payloads(), 30, message="QoS 1 message sent during outage"
    )
    await pub.publish(topic, b"after", qos=1)
    await wait_for(lambda: b"after" in inbox.payloads(), 15, message="delivery after re-subscribe")
    assert inbox.payloads().count(b"during") >= 1
    await sub.close()
    await pub.close()


async def test_publish_applies_back_pressure_while_the_broker_is_down(
    restartable_broker: Any, topic_root: str
) -> None:
    from derbus.bus import MqttBus
    from derbus.settings import MqttSettings

    settings = MqttSettings(
        host=restartable_broker.host, port=restartable_broker.port, root=topic_root,
        reconnect_min_delay_s=0.2, reconnect_max_delay_s=1.0, keepalive_s=5,
    )  # fmt: skip
    bus = MqttBus(settings, client_id=f"bp-{topic_root[-8:]}", max_outstanding=50)
    sub = MqttBus(settings, client_id=f"bp-sub-{topic_root[-8:]}")
    await bus.connect()
    await sub.connect()
    inbox = Inbox()
    await sub.subscribe(topics.METER.filter(root=topic_root), 1, inbox)
    restartable_broker.stop()
    await wait_for(lambda: not bus.connected, 15)
    topic = topics.METER.topic("s1", "pcc", topic_root)
    for i in range(50):
        await bus.publish(topic, str(i).encode(), qos=1)
    assert bus.outstanding == 50
    blocked = asyncio.ensure_future(bus.publish(topic, b"50", qos=1))
    done, _ = await asyncio.wait({blocked}, timeout=0.3)  # a chance to (wrongly) go through
    assert not done, "the 51st publish must wait while 50 are unacknowledged"
    restartable_broker.start()
    await asyncio.wait_for(blocked, 30)
    await wait_for(lambda: len(set(inbox.payloads())) == 51, 30, message="all 51 messages")
    await bus.close()
    await sub.close()


async def test_deferred_ack_in_memory_waits_for_every_callable() -> None:
    from derbus.bus import InMemoryBroker, InMemoryBus

    broker = InMemoryBroker()
    sub, pub = InMemoryBus(broker), InMemoryBus(broker)
    await sub.connect()
    await pub.connect()
    acks: dict[bytes, list[Any]] = {}

    async def hold(message: RawMessage) -> None:
        if message.payload != b"plain":
            acks.setdefault(message.payload, []).append(sub.defer_ack())

    inbox = Inbox()
    root = "test/v1"
    topic = topics.METER.topic("s1", "pcc", root)
    await sub.subscribe(topics.METER.filter(root=root), 1, hold)
    await sub.subscribe(topics.METER.filter(root=root), 1, inbox)  # a second, non-deferring one
    for payload in (b"a", b"plain", b"b"):
        await pub.publish(topic, payload, qos=1)
    await pub.drain()
    assert inbox.payloads() == [b"a", b"plain", b"b"]
    assert [m.payload for m in sub.unacknowledged] == [b"a", b"b"]  # "plain" acked on return
    acks[b"b"][0]()
    acks[b"b"][0]()  # idempotent
    assert [m.payload for m in sub.unacknowledged] == [b"a"]
    acks[b"a"][0]()
    assert sub.unacknowledged == []
    with pytest.raises(RuntimeError, match="outside a subscription callback"):
        sub.defer_ack()
    await sub.close()
    await pub.close()


async def test_deferred_ack_on_mqtt_is_redelivered_after_a_crash_until_acked(
    mqtt_settings: Any,
) -> None:
    """A deferred delivery stays with the broker (persistent session) until its callable ran."""
    from derbus.bus import MqttBus

    client_id = f"defer-{mqtt_settings.root[-8:]}"
    topic = topics.METER.topic("s1", "pcc", mqtt_settings.root)
    pub = MqttBus(mqtt_settings)
    await pub.connect()

    async def session() -> tuple[MqttBus, Inbox, dict[bytes, Any]]:
        bus = MqttBus(mqtt_settings, client_id=client_id, manual_ack=True)
        inbox = Inbox()
        deferred: dict[bytes, Any] = {}

        async def handle(message: RawMessage) -> None:
            inbox.items.append(message)
            if message.payload == b"held":
                deferred[message.payload] = bus.defer_ack()

        await bus.connect()
        await bus.subscribe(topics.METER.filter(root=mqtt_settings.root), 1, handle)
        return bus, inbox, deferred

    first, inbox1, _ = await session()
    await pub.publish(topic, b"held", qos=1)
    await pub.publish(topic, b"done", qos=1)
    await wait_for(lambda: inbox1.payloads() == [b"held", b"done"], 10, message="first delivery")
    await first.abort()  # crash before the deferred ack ran

    second, inbox2, deferred2 = await session()
    await pub.publish(topic, b"marker-1", qos=1)
    await wait_for(lambda: b"marker-1" in inbox2.payloads(), 10, message="marker after restart")
    assert inbox2.payloads() == [b"held", b"marker-1"]  # "done" was acked, "held" was not
    deferred2[b"held"]()  # now acknowledge it, then crash again
    # paho sends its packets in order and the broker handles them in order: once a later
    # publish of ours is acknowledged, the broker has the PUBACK.
    await second.publish(topics.PV.topic("s1", "pv", mqtt_settings.root), b"sync", qos=1)
    await wait_for(lambda: second.outstanding == 0, 10, message="PUBACK flushed")
    await second.abort()

    third, inbox3, _ = await session()
    await pub.publish(topic, b"marker-2", qos=1)
    await wait_for(lambda: b"marker-2" in inbox3.payloads(), 10, message="marker after 2nd restart")
    assert inbox3.payloads() == [b"marker-2"]
    await third.close()
    await pub.close()
