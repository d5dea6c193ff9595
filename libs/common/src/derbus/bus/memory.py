"""`InMemoryBus`: the MQTT contract (wildcards, retain, sessions, will, expiry) in one process."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from derbus.bus.base import Ack, BusCore, MessageCallback, RawMessage, filter_matches
from derbus.errors import BusNotConnectedError


@dataclass
class _Session:
    """What the broker keeps for a client id: its filters and the QoS>0 messages it missed."""

    filters: list[str] = field(default_factory=list)
    missed: list[tuple[RawMessage, float | None]] = field(default_factory=list)


@dataclass
class InMemoryBroker:
    """A broker living in memory; several `InMemoryBus` clients may share one.

    `clock` (seconds, monotonic) decides message expiry; tests inject one and move it.
    Persistent sessions (clients with a `client_id`) survive the client's absence and broker
    outages; shared subscriptions (`$share/group/filter`) give each message to one member.
    """

    clients: list[InMemoryBus] = field(default_factory=list)
    retained: dict[str, tuple[RawMessage, float | None]] = field(default_factory=dict)
    running: bool = True
    clock: Callable[[], float] = time.monotonic
    sessions: dict[str, _Session] = field(default_factory=dict)
    _turns: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        """Simulate a broker outage: every client is disconnected (retained, sessions persist)."""
        self.running = False
        for client in list(self.clients):
            client._transport_up = False

    def start(self) -> None:
        """End the outage: clients reconnect, re-subscribe and flush their queued QoS>0 messages."""
        self.running = True
        for client in list(self.clients):
            client._reconnected()

    def route(self, message: RawMessage, expiry_s: int | None = None) -> None:
        """Keep a retained message (an empty one clears it) and deliver to every matching client."""
        expires_at = None if expiry_s is None else self.clock() + expiry_s
        if message.retain:
            if message.payload:
                self.retained[message.topic] = (message, expires_at)
            else:
                self.retained.pop(message.topic, None)
        plain = RawMessage(
            message.topic,
            message.payload,
            message.qos,
            False,
            expiry_s,
            message.response_topic,
            message.correlation_data,
        )
        members: list[tuple[str, InMemoryBus | None, list[str], _Session | None]] = [
            (client_id, self._online(client_id), session.filters, session)
            for client_id, session in self.sessions.items()
        ]
        members += [
            (f"~{id(c)}", c, c._filters, None)
            for c in self.clients
            if c.client_id is None and c._transport_up
        ]
        shared: dict[str, list[tuple[str, InMemoryBus | None, _Session | None]]] = {}
        for key, client, filters, session in members:
            direct = False
            for topic_filter in filters:
                if not filter_matches(topic_filter, message.topic):
                    continue
                if topic_filter.startswith("$share/"):
                    shared.setdefault(topic_filter, []).append((key, client, session))
                else:
                    direct = True
            if direct:
                self._give(plain, expires_at, client, session)
        for group, candidates in shared.items():
            ordered = sorted(candidates, key=lambda c: c[0])
            live = [c for c in ordered if c[1] is not None] or ordered
            turn = self._turns.get(group, 0)
            self._turns[group] = turn + 1
            _, client, session = live[turn % len(live)]
            self._give(plain, expires_at, client, session)

    @staticmethod
    def _give(
        message: RawMessage,
        expires_at: float | None,
        client: InMemoryBus | None,
        session: _Session | None,
    ) -> None:
        if client is not None:
            client.deliver(message)
        elif session is not None and message.qos > 0:
            session.missed.append((message, expires_at))

    def _online(self, client_id: str) -> InMemoryBus | None:
        for client in self.clients:
            if client.client_id == client_id and client._transport_up:
                return client
        return None

    def unexpired(
        self, items: list[tuple[RawMessage, float | None]]
    ) -> list[tuple[RawMessage, float | None]]:
        """Messages whose expiry has not passed, with their remaining expiry set."""
        now = self.clock()
        kept: list[tuple[RawMessage, float | None]] = []
        for message, expires_at in items:
            if expires_at is None:
                kept.append((message, None))
            elif expires_at > now:
                left = max(1, int(expires_at - now))
                kept.append((_with_expiry(message, left), expires_at))
        return kept


def _with_expiry(message: RawMessage, expiry_s: int | None) -> RawMessage:
    return RawMessage(
        message.topic,
        message.payload,
        message.qos,
        message.retain,
        expiry_s,
        message.response_topic,
        message.correlation_data,
    )


class InMemoryBus(BusCore):
    """A bus client on an `InMemoryBroker` (its own unless one is given).

    Args:
        broker: the broker to share with other clients.
        client_id: with an id the broker keeps a session: subscriptions and the QoS>0 messages
            sent while this client was away are delivered when a client with the id connects.
    """

    def __init__(
        self,
        broker: InMemoryBroker | None = None,
        client_id: str | None = None,
        max_queued: int = 1_000_000,
    ) -> None:
        super().__init__(max_queued)
        self.broker = broker if broker is not None else InMemoryBroker()
        self.client_id = client_id or None
        self._filters: list[str] = []
        self._connected = False
        self._transport_up = False
        self._outbox: list[tuple[RawMessage, int | None]] = []
        self.published: list[RawMessage] = []
        self._space = asyncio.Event()
        self._unacked: dict[int, RawMessage] = {}
        self._delivery_ids = itertools.count()

    @property
    def connected(self) -> bool:
        return self._connected and self._transport_up

    @property
    def outstanding(self) -> int:
        """QoS>0 publishes held while the broker is down."""
        return len(self._outbox)

    @property
    def unacknowledged(self) -> list[RawMessage]:
        """QoS>0 deliveries not acknowledged yet (handlers still running, or a deferred ack)."""
        return list(self._unacked.values())

    def _tracked(self, message: RawMessage) -> Ack | None:
        """Record a QoS>0 delivery as unacknowledged; the returned callable acknowledges it."""
        if message.qos == 0:
            return None
        key = next(self._delivery_ids)
        self._unacked[key] = message

        def ack() -> None:
            self._unacked.pop(key, None)

        return ack

    async def connect(self) -> None:
        self._dispatcher.start()
        if self not in self.broker.clients:
            self.broker.clients.append(self)
        self._connected = True
        self._transport_up = self.broker.running
        if self.client_id is not None:
            session = self.broker.sessions.setdefault(self.client_id, _Session())
            for topic_filter in session.filters:
                if topic_filter not in self._filters:
                    self._filters.append(topic_filter)
        if self._transport_up:
            self._up()

    def _up(self) -> None:
        self._stats.connections += 1
        self._stats.endpoint = "memory"
        if self.client_id is not None:
            session = self.broker.sessions[self.client_id]
            missed, session.missed = self.broker.unexpired(session.missed), []
            for message, _ in missed:
                self._dispatcher.put(message, self._tracked(message))
        pending, self._outbox = self._outbox, []
        for message, expiry_s in pending:
            self.broker.route(message, expiry_s)
        self._space.set()
        self._hooks.fire(self._stats.connections)

    def _reconnected(self) -> None:
        if not self._connected:
            return
        self._transport_up = True
        self._up()

    async def close(self) -> None:
        self._disconnect()
        await self._stop_delivering()

    async def abort(self) -> None:
        """Vanish without a clean disconnect: the broker publishes the last will."""
        self._disconnect()
        await self._stop_delivering()
        if self._will is not None:
            will = self._will
            payload = will.payload_for(max(1, self._stats.connections))
            self.broker.route(RawMessage(will.topic, payload, will.qos, will.retain))

    def _disconnect(self) -> None:
        self._connected = False
        self._transport_up = False
        self._stats.endpoint = ""
        if self in self.broker.clients:
            self.broker.clients.remove(self)

    async def subscribe(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        if not self._connected:
            raise BusNotConnectedError("subscribe before connect")
        self._dispatcher.add(topic_filter, qos, callback)
        if topic_filter not in self._filters:
            self._filters.append(topic_filter)
        if self.client_id is not None:
            session = self.broker.sessions[self.client_id]
            if topic_filter not in session.filters:
                session.filters.append(topic_filter)
        if topic_filter.startswith("$share/"):
            return  # shared subscriptions get no retained messages (MQTT 5, 4.8.2)
        for topic, (message, expires_at) in list(self.broker.retained.items()):
            if filter_matches(topic_filter, topic):
                for kept, _ in self.broker.unexpired([(message, expires_at)]):
                    retained = RawMessage(
                        topic,
                        kept.payload,
                        kept.qos,
                        True,
                        kept.expiry_s,
                        kept.response_topic,
                        kept.correlation_data,
                    )
                    self._dispatcher.put(retained, self._tracked(retained))

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        expiry_s: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        if not self._connected:
            raise BusNotConnectedError(f"publish on {topic} while disconnected")
        if qos > 0 and len(self._outbox) >= self._stats.queue_limit:
            self._stats.publish_waits += 1
            while len(self._outbox) >= self._stats.queue_limit:
                self._space.clear()
                await self._space.wait()
        message = RawMessage(topic, payload, qos, retain, None, response_topic, correlation_data)
        self.published.append(message)
        if not self._transport_up:
            if qos > 0:
                self._outbox.append((message, expiry_s))  # like MQTT: QoS>0 waits for reconnect
            else:
                self._stats.dropped_qos0 += 1
            return
        self.broker.route(message, expiry_s)

    def matches(self, topic: str) -> bool:
        """Whether one of this client's (non-shared) filters matches `topic`."""
        return any(not f.startswith("$share/") and filter_matches(f, topic) for f in self._filters)

    def deliver(self, message: RawMessage) -> None:
        """Queue a message the broker routed to this client (dropped while its transport is down)."""
        if not self._transport_up:
            return
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
        return self._dispatcher.idle
