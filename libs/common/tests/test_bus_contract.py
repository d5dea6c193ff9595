"""One contract, three buses: InMemoryBus, MqttBus (paho) and GmqttBus on a real Mosquitto."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from typing import Any as Harness
from typing import Any as MqttHarness

import pytest

from derbus import topics
from derbus.bus import Bus, Outcomes, RawMessage, Will
from derbus.messages import utcnow
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


async def client_with_will(
    harness: Harness,
    name: str,
    retain: bool,
    persistent: bool = False,
    build: Callable[[int], bytes] | None = None,
) -> tuple[Bus, Inbox, Bus, str]:
    """Client `name` connected with a will (`offline`) on its status topic, and a watcher there.

    Returns the watcher, the watcher's inbox, the client and the will topic.
    """
    watcher = harness.client()
    await watcher.connect()
    will_topic = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, name, harness.root)
    inbox = Inbox()
    await watcher.subscribe(will_topic, 1, inbox)
    client = harness.client(persistent=persistent)
    client.set_will(Will(will_topic, b"offline", qos=1, retain=retain, build=build))
    await client.connect()
    return watcher, inbox, client, will_topic


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
    watcher, inbox, victim, _ = await client_with_will(harness, "victim", retain=True)
    await victim.abort()  # type: ignore[attr-defined]
    await wait_for(lambda: b"offline" in inbox.payloads(), 15, message="last will")
    await watcher.close()


async def test_clean_close_sends_no_will(harness: Harness) -> None:
    watcher, inbox, polite, will_topic = await client_with_will(harness, "polite", retain=False)
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


async def test_publish_applies_back_pressure_while_the_broker_is_down(harness: Harness) -> None:
    bus = harness.client(persistent=True, max_queued=50)
    sub = harness.client(persistent=True)
    await bus.connect()
    await sub.connect()
    inbox = Inbox()
    await sub.subscribe(topics.METER.filter(root=harness.root), 1, inbox)
    harness.stop_broker()
    await wait_for(lambda: not bus.connected, 15)
    topic = topics.METER.topic("s1", "pcc", harness.root)
    for i in range(50):
        await bus.publish(topic, str(i).encode(), qos=1)
    assert bus.stats.queued == 50
    assert bus.stats.publish_waits == 0
    blocked = asyncio.ensure_future(bus.publish(topic, b"50", qos=1))
    done, _ = await asyncio.wait({blocked}, timeout=0.3)  # a chance to (wrongly) go through
    assert not done, "the 51st publish must wait while 50 are unacknowledged"
    assert bus.stats.publish_waits == 1
    harness.start_broker()
    await asyncio.wait_for(blocked, 30)
    await wait_for(lambda: len(set(inbox.payloads())) == 51, 30, message="all 51 messages")
    await wait_for(lambda: bus.stats.queued == 0, 10, message="every message acknowledged")
    await bus.close()
    await sub.close()


async def test_qos0_while_disconnected_is_dropped_and_counted(harness: Harness) -> None:
    bus = harness.client(persistent=True)
    await bus.connect()
    harness.stop_broker()
    await wait_for(lambda: not bus.connected, 15)
    await bus.publish(topics.METER.topic("s1", "pcc", harness.root), b"gone", qos=0)
    assert bus.stats.dropped_qos0 == 1
    assert bus.stats.queued == 0
    harness.start_broker()
    await wait_for(lambda: bus.connected, 30, message="reconnect")
    assert bus.stats.connections == 2
    assert bus.stats.reconnects == 1
    await bus.close()


async def test_persistent_session_survives_a_broker_restart_while_the_client_is_away(
    harness: Harness,
) -> None:
    """The broker, not the client, holds the subscription: messages wait for the client."""
    client_id = f"away-{harness.root[-8:]}"
    first = harness.client(client_id=client_id)
    await first.connect()
    await first.subscribe(topics.SETPOINT.filter(root=harness.root), 1, Inbox())
    await first.abort()  # type: ignore[attr-defined]
    harness.stop_broker()
    harness.start_broker()
    pub = harness.client()
    await pub.connect()
    topic = topics.SETPOINT.topic("s1", "bat", harness.root)
    await pub.publish(topic, b"while-away", qos=1)
    await wait_for(lambda: pub.stats.queued == 0, 15, message="the broker took the message")
    back = harness.client(client_id=client_id)
    inbox = Inbox()
    await back.connect()
    await back.subscribe(topics.SETPOINT.filter(root=harness.root), 1, inbox)
    await wait_for(lambda: inbox.payloads() == [b"while-away"], 15, message="held message")
    await back.close()
    await pub.close()


async def test_message_expiry_delivers_the_live_command_and_drops_the_stale_one(
    harness: Harness,
) -> None:
    """A command sent while its receiver is away arrives when it is back, or expires by its TTL.

    The receiver answers on the command's response topic with its correlation data, so the
    sender learns which: an answer for the live one, none for the expired one.
    """
    client_id = f"receiver-{harness.root[-8:]}"
    commands = topics.SETPOINT.filter(root=harness.root)
    receiver = harness.client(client_id=client_id)
    await receiver.connect()
    await receiver.subscribe(commands, 1, Inbox())
    await receiver.abort()  # type: ignore[attr-defined]

    sender = harness.client()
    await sender.connect()
    answers = Inbox()
    outcomes = Outcomes(clock=harness.clock)

    async def on_answer(message: RawMessage) -> None:
        answers.items.append(message)
        outcomes.answer(message.correlation_data)

    reply_to = topics.SETPOINT_ACK.topic("s1", "bat", harness.root)
    await sender.subscribe(reply_to, 1, on_answer)
    topic = topics.SETPOINT.topic("s1", "bat", harness.root)
    for payload, ttl_s, correlation in ((b"stale", 1, b"c-1"), (b"live", 600, b"c-2")):
        await sender.publish(
            topic,
            payload,
            qos=1,
            expiry_s=ttl_s,
            response_topic=reply_to,
            correlation_data=correlation,
        )
        outcomes.sent(correlation, ttl_s)
    await wait_for(lambda: sender.stats.queued == 0, 15, message="the broker took both")
    await harness.let_time_pass(2.5)

    back = harness.client(client_id=client_id)
    inbox = Inbox()

    async def answer(message: RawMessage) -> None:
        inbox.items.append(message)
        assert message.response_topic is not None
        await back.publish(
            message.response_topic, b"done", qos=1, correlation_data=message.correlation_data
        )

    await back.connect()
    await back.subscribe(commands, 1, answer)
    await wait_for(lambda: len(answers.items) == 1, 15, message="the answer to the live command")
    assert inbox.payloads() == [b"live"]
    assert inbox.items[0].expiry_s is not None
    assert 0 < inbox.items[0].expiry_s <= 600
    assert answers.items[0].correlation_data == b"c-2"
    assert outcomes.expire() == [b"c-1"]  # the sender learns which expired
    assert (outcomes.answered, outcomes.pending) == ([b"c-2"], {})
    await back.close()
    await sender.close()


async def test_a_service_publishes_setpoints_with_their_ttl_as_message_expiry(
    harness: Harness,
) -> None:
    from derbus.messages import SetpointCommand
    from derbus.service import Service
    from derbus.settings import MqttSettings
    from derbus.testing.example import EchoSettings

    bus = harness.client()
    service = Service("sender", EchoSettings(mqtt=MqttSettings(root=harness.root)), bus)
    receiver = harness.client()
    inbox = Inbox()
    await bus.connect()
    await receiver.connect()
    await receiver.subscribe(topics.SETPOINT.filter(root=harness.root), 1, inbox)
    command = SetpointCommand(
        ts=utcnow(), source="test", target="battery_p_kw", value=-3.0, unit="kW", ttl_s=29.5
    )
    await service.publish(topics.SETPOINT, command, site_id="s1", device_id="bat")
    await wait_for(lambda: len(inbox.items) == 1, 10, message="the setpoint")
    got = inbox.items[0]
    assert got.expiry_s is not None
    assert 0 < got.expiry_s <= 30
    assert got.response_topic == topics.SETPOINT_ACK.topic("s1", "bat", harness.root)
    assert got.correlation_data == command.setpoint_id.encode()
    await receiver.close()
    await bus.close()


async def test_shared_subscription_splits_the_messages(harness: Harness) -> None:
    """Replicas in one `$share` group each get a part; together every message exactly once."""
    shared = f"$share/replicas/{topics.METER.filter(root=harness.root)}"
    replicas = [harness.client(persistent=True) for _ in range(2)]
    inboxes = [Inbox(), Inbox()]
    for replica, inbox in zip(replicas, inboxes, strict=True):
        await replica.connect()
        await replica.subscribe(shared, 1, inbox)
    pub = harness.client()
    await pub.connect()
    sent = [f"m{i}".encode() for i in range(40)]
    for i, payload in enumerate(sent):
        await pub.publish(topics.METER.topic(f"s{i % 8}", "pcc", harness.root), payload, qos=1)
    await wait_for(
        lambda: sum(len(i.items) for i in inboxes) == len(sent), 15, message="all 40 delivered"
    )
    for replica in replicas:
        await replica.drain()
    got = [p for inbox in inboxes for p in inbox.payloads()]
    assert sorted(got) == sorted(sent)  # each exactly once
    assert all(inbox.items for inbox in inboxes), "both replicas take a share"
    for replica in replicas:
        await replica.close()
    await pub.close()


async def test_will_is_built_for_each_connection(harness: Harness) -> None:
    """The will sent after a crash is the one built when the lost connection was made."""
    watcher, inbox, victim, _ = await client_with_will(
        harness, "victim", retain=False, persistent=True, build=lambda n: f"offline-{n}".encode()
    )
    harness.stop_broker()
    await wait_for(lambda: not victim.connected, 15, message="victim to notice the outage")
    harness.start_broker()
    await wait_for(lambda: victim.connected, 30, message="victim reconnected")
    await wait_for(lambda: watcher.connected, 30, message="watcher reconnected")
    assert victim.stats.connections == 2
    await victim.abort()  # type: ignore[attr-defined]
    await wait_for(lambda: b"offline-2" in inbox.payloads(), 15, message="the second will")
    # A restarted Mosquitto may publish the will of the connection it lost (offline-1), but
    # never after the will of the connection that came after it.
    assert inbox.payloads()[-1] == b"offline-2"
    await watcher.close()


async def test_connect_listeners_run_on_every_connection(harness: Harness) -> None:
    bus = harness.client(persistent=True)
    seen: list[int] = []

    async def listener(connection: int) -> None:
        seen.append(connection)

    bus.add_connect_listener(listener)
    await bus.connect()
    await wait_for(lambda: seen == [1], 10)
    harness.stop_broker()
    await wait_for(lambda: not bus.connected, 15)
    harness.start_broker()
    await wait_for(lambda: seen == [1, 2], 30, message="listener after the reconnect")
    await bus.close()


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
    mqtt_harness: MqttHarness,
) -> None:
    """A deferred delivery stays with the broker (persistent session) until its callable ran."""
    h = mqtt_harness
    client_id = f"defer-{h.root[-8:]}"
    topic = topics.METER.topic("s1", "pcc", h.root)
    pub = h.client()
    await pub.connect()

    async def session() -> tuple[Bus, Inbox, dict[bytes, Any]]:
        bus = h.client(client_id=client_id, manual_ack=True)
        inbox = Inbox()
        deferred: dict[bytes, Any] = {}

        async def handle(message: RawMessage) -> None:
            inbox.items.append(message)
            if message.payload == b"held":
                deferred[message.payload] = bus.defer_ack()

        await bus.connect()
        await bus.subscribe(topics.METER.filter(root=h.root), 1, handle)
        return bus, inbox, deferred

    first, inbox1, _ = await session()
    await pub.publish(topic, b"held", qos=1)
    await pub.publish(topic, b"done", qos=1)
    await wait_for(lambda: inbox1.payloads() == [b"held", b"done"], 10, message="first delivery")
    await first.abort()  # type: ignore[attr-defined]  # crash before the deferred ack ran

    second, inbox2, deferred2 = await session()
    await pub.publish(topic, b"marker-1", qos=1)
    await wait_for(lambda: b"marker-1" in inbox2.payloads(), 10, message="marker after restart")
    assert inbox2.payloads() == [b"held", b"marker-1"]  # "done" was acked, "held" was not
    deferred2[b"held"]()  # now acknowledge it, then crash again
    # Both clients send their packets in order and the broker handles them in order: once a
    # later publish of ours is acknowledged, the broker has the PUBACK.
    await second.publish(topics.PV.topic("s1", "pv", h.root), b"sync", qos=1)
    await wait_for(lambda: second.stats.queued == 0, 10, message="PUBACK flushed")
    await second.abort()  # type: ignore[attr-defined]

    third, inbox3, _ = await session()
    await pub.publish(topic, b"marker-2", qos=1)
    await wait_for(lambda: b"marker-2" in inbox3.payloads(), 10, message="marker after 2nd restart")
    assert inbox3.payloads() == [b"marker-2"]
    await third.close()
    await pub.close()
