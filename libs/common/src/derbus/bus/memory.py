"""`InMemoryBus`: the MQTT contract (wildcards, retain, last will) inside one process, for tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from derbus.bus.base import Ack, Dispatcher, MessageCallback, RawMessage, Will, filter_matches
from derbus.errors import BusNotConnectedError


@dataclass
class InMemoryBroker:
    """A broker living in memory; several `InMemoryBus` clients may share one."""

    clients: list[InMemoryBus] = field(default_factory=list)
    retained: dict[str, RawMessage] = field(default_factory=dict)
    running: bool = True

    def stop(self) -> None:
        """Simulate a broker outage: every client is disconnected (retained messages persist)."""
        self.running = False
        for client in list(self.clients):
            client._transport_up = False

    def start(self) -> None:
        """End the outage: clients reconnect, re-subscribe and flush their queued QoS>0 messages."""
        self.running = True
        for client in list(self.clients):
            client._reconnected()

    def route(self, message: RawMessage) -> None:
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        for client in list(self.clients):
            client.deliver(RawMessage(message.topic, message.payload, message.qos, False))


class InMemoryBus:
    """A bus client on an `InMemoryBroker` (its own unless one is given)."""

    def __init__(self, broker: InMemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else InMemoryBroker()
        self._dispatcher = Dispatcher()
        self._filters: list[str] = []
        self._connected = False
        self._transport_up = False
        self._will: Will | None = None
        self._outbox: list[RawMessage] = []
        self.published: list[RawMessage] = []
        self.reconnects = 0
        self._unacked: dict[int, RawMessage] = {}
        self._delivery_ids = itertools.count()

    @property
    def connected(self) -> bool:
        return self._connected and self._transport_up

    @property
    def unacknowledged(self) -> list[RawMessage]:
        """QoS>0 deliveries not acknowledged yet (handlers still running, or a deferred ack)."""
        return list(self._unacked.values())

    def defer_ack(self) -> Ack:
        return self._dispatcher.defer_ack()

    def _tracked(self, message: RawMessage) -> Ack | None:
        """Record a QoS>0 delivery as unacknowledged; the returned callable acknowledges it."""
        if message.qos == 0:
            return None
        key = next(self._delivery_ids)
        self._unacked[key] = message

        def ack() -> None:
            self._unacked.pop(key, None)

        return ack

    def set_will(self, will: Will) -> None:
        self._will = will

    async def connect(self) -> None:
        self._dispatcher.start()
        if self not in self.broker.clients:
            self.broker.clients.append(self)
        self._connected = True
        self._transport_up = self.broker.running

    def _reconnected(self) -> None:
        if not self._connected:
            return
        self._transport_up = True
        self.reconnects += 1
        pending, self._outbox = self._outbox, []
        for message in pending:
            self.broker.route(message)

    async def close(self) -> None:
        self._disconnect()
        await self._dispatcher.stop()

    async def abort(self) -> None:
        """Vanish without a clean disconnect: the broker publishes the last will."""
        self._disconnect()
        await self._dispatcher.stop()
        if self._will is not None:
            self.broker.route(
                RawMessage(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
            )

    def _disconnect(self) -> None:
        self._connected = False
        self._transport_up = False
        if self in self.broker.clients:
            self.broker.clients.remove(self)

    async def subscribe(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        if not self._connected:
            raise BusNotConnectedError("subscribe before connect")
        self._dispatcher.add(topic_filter, qos, callback)
        self._filters.append(topic_filter)
        for topic, message in list(self.broker.retained.items()):
            if filter_matches(topic_filter, topic):
                retained = RawMessage(topic, message.payload, message.qos, True)
                self._dispatcher.put(retained, self._tracked(retained))

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if not self._connected:
            raise BusNotConnectedError(f"publish on {topic} while disconnected")
        message = RawMessage(topic, payload, qos, retain)
        self.published.append(message)
        if not self._transport_up:
            if qos > 0:
                self._outbox.append(message)  # like paho: QoS>0 waits for the reconnect
            return
        self.broker.route(message)

    def deliver(self, message: RawMessage) -> None:
        if not self._transport_up:
            return
        if any(filter_matches(f, message.topic) for f in self._filters):
            self._dispatcher.put(message, self._tracked(message))

    async def drain(self, timeout_s: float = 5.0) -> None:
        # Handlers may publish more messages to other clients: join until all queues are quiet.
        for _ in range(100):
            clients = list(self.broker.clients) or [self]
            for client in clients:
                await client._dispatcher.join(timeout_s)
            if all(c._idle() for c in clients):
                return

    def _idle(self) -> bool:
        q = self._dispatcher.queue
        return q is None or q.empty()
