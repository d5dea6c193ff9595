"""The `Bus` protocol every transport implements, and the pieces the implementations share."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from paho.mqtt.client import topic_matches_sub

from derbus.errors import BusError
from derbus.settings import MqttSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    """A message as it arrives: topic, raw payload bytes, QoS, retain flag, MQTT 5 properties.

    `expiry_s` is what is left of the sender's message expiry when the message is delivered
    (None: it never expires, or the broker speaks MQTT 3.1.1). `response_topic` and
    `correlation_data` are where and with what the sender wants its answer.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    expiry_s: int | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


MessageCallback = Callable[[RawMessage], Awaitable[None]]
Ack = Callable[[], None]
"""Acknowledges one delivery to the broker (idempotent; call it on the event loop thread)."""


@dataclass(frozen=True)
class Will:
    """The last will the broker publishes when the client vanishes without saying goodbye.

    `build`, when given, makes the payload for the n-th connection (1, 2, …) at the moment that
    connection is made, so a will can carry what only then is known (a sequence number that
    orders it after everything the client publishes on that connection). `delay_s` is MQTT 5's
    will delay: a client back within it publishes no will.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    delay_s: int = 0
    build: Callable[[int], bytes] | None = None

    def payload_for(self, connection: int) -> bytes:
        """The will payload for the n-th connection."""
        return self.build(connection) if self.build is not None else self.payload


ConnectListener = Callable[[int], Awaitable[None]]
"""Runs on the event loop after the n-th successful connection (n = 1, 2, …), subscriptions renewed."""


@dataclass
class BusStats:
    """What a bus counts (exported on a service's /metrics)."""

    connections: int = 0
    """Successful connections so far (the first one included)."""
    queued: int = 0
    """QoS>0 publishes not yet acknowledged by the broker, including those held while down."""
    queue_limit: int = 0
    """`queued` at which publish waits (back-pressure)."""
    publish_waits: int = 0
    """Publishes that had to wait for the queue to shrink."""
    dropped_qos0: int = 0
    """QoS 0 publishes dropped because the connection was down (QoS 0 is never queued)."""
    endpoint: str = ""
    """host:port of the broker connected now (empty while down)."""

    @property
    def reconnects(self) -> int:
        """Connections after the first one."""
        return max(0, self.connections - 1)


@functools.lru_cache(maxsize=65_536)
def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT wildcard matching (paho's own), accepting shared subscriptions `$share/g/…`.

    Cached: the same (filter, topic) pairs recur every step for every site and device.
    """
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3:
            return False
        topic_filter = parts[2]
    return bool(topic_matches_sub(topic_filter, topic))


@runtime_checkable
class Bus(Protocol):
    """A publish/subscribe bus with MQTT semantics (wildcards, QoS, retain, last will)."""

    @property
    def connected(self) -> bool:
        """True while connected and all subscriptions are acknowledged."""
        ...

    def set_will(self, will: Will) -> None:
        """Set the last will; call before `connect`."""
        ...

    async def connect(self) -> None:
        """Connect (with bounded retries); raises BusError when it cannot."""
        ...

    async def close(self) -> None:
        """Disconnect cleanly (no last will) and stop delivering."""
        ...

    async def subscribe(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        """Subscribe and return once the broker acknowledged; callbacks run on the event loop."""
        ...

    @property
    def stats(self) -> BusStats:
        """Counters: connections, queued QoS 1 publishes, back-pressure waits, QoS 0 drops."""
        ...

    def add_connect_listener(self, listener: ConnectListener) -> None:
        """Run `listener(n)` after every successful connection (n = 1, 2, …)."""
        ...

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
        """Publish a payload; QoS 1 messages are queued while disconnected and sent later.

        Waits (back-pressure) while `stats.queued` is at `stats.queue_limit`. `expiry_s`
        (MQTT 5 message expiry) makes the broker drop the message if it could not be delivered
        within that many seconds; `response_topic` / `correlation_data` travel with it.
        """
        ...

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until every message received so far has been handled."""
        ...

    def defer_ack(self) -> Ack:
        """Take over the acknowledgement of the message being delivered right now.

        Call it from inside a subscription callback: the message is then acknowledged to the
        broker only once the returned callable has been invoked (and every callback returned),
        not when the callbacks return. Idempotent; call it on the event loop thread. A no-op
        callable when the delivery needs no acknowledgement (QoS 0, automatic acks).
        """
        ...


@dataclass
class _Subscription:
    topic_filter: str
    qos: int
    callback: MessageCallback


@dataclass
class _Delivery:
    """Acknowledgement bookkeeping of one message: acked when every hold is released."""

    after: Ack | None
    holds: int = 1  # the dispatcher's own, released once every callback returned

    def release(self) -> None:
        self.holds -= 1
        if self.holds == 0 and self.after is not None:
            self.after()


class Dispatcher:
    """Delivers received messages, in arrival order, to every matching subscription callback.

    `after` (optional) runs once a message has been handled by all callbacks — the MQTT bus
    uses it to acknowledge deliveries manually. A callback may postpone it with `defer_ack`:
    `after` then runs once every deferred acknowledgement was invoked (group commit).

    A message no local subscription matches yet is held, not acknowledged, and delivered when a
    matching subscription is added: a persistent session resumes with the messages queued for it
    right at CONNECT, before the service has registered its handlers again.

    A deque and one wake-up event instead of an `asyncio.Queue`: this runs for every message.
    """

    def __init__(self, max_unmatched: int = 100_000) -> None:
        self.subscriptions: list[_Subscription] = []
        self.unmatched: list[_Queued] = []
        self.max_unmatched = max_unmatched
        self.current: _Delivery | None = None
        self.task: asyncio.Task[None] | None = None
        self._items: collections.deque[_Queued] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = 0  # put and not yet handled (or held)
        self._after: Ack | None = None
        self._delivering = False
        self._matches: dict[tuple[str, frozenset[str] | None], list[_Subscription]] = {}

    def add(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        """Add a subscription; held messages it matches are delivered now."""
        self.subscriptions.append(_Subscription(topic_filter, qos, callback))
        self._matches.clear()
        held, self.unmatched = self.unmatched, []
        for item in held:
            if _targets(topic_filter, item) and self.task is not None:
                self._push(item)
            else:
                self.unmatched.append(item)

    def start(self) -> None:
        """Start delivering, on the running event loop (again after `stop`)."""
        if self.task is None:
            # events of the running loop (a bus may be connected again in another loop)
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            if self._items:
                self._wake.set()
            if not self._pending:
                self._idle.set()
            self.task = asyncio.get_running_loop().create_task(self._run(), name="bus-dispatch")

    async def stop(self) -> None:
        """Stop delivering (queued messages stay queued)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def put(
        self,
        message: RawMessage,
        after: Callable[[], None] | None = None,
        filters: frozenset[str] | None = None,
    ) -> None:
        """Queue a message for delivery.

        `filters`, when the broker said which subscriptions matched (MQTT 5 subscription
        identifiers), limits the delivery to the callbacks on those filters: a broker sends one
        copy per matching subscription, and each copy is for its own subscription only.
        """
        if self.task is None:
            raise RuntimeError("dispatcher not started")
        self._push((message, after, filters))

    def _push(self, item: _Queued) -> None:
        self._items.append(item)
        self._pending += 1
        if self._pending == 1:
            self._idle.clear()
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing waiting to be handled."""
        return self._pending == 0

    def defer_ack(self) -> Ack:
        """Postpone the acknowledgement of the message being delivered (see `Bus.defer_ack`)."""
        if not self._delivering:
            raise RuntimeError("defer_ack called outside a subscription callback")
        delivery = self.current
        if delivery is None:
            delivery = self.current = _Delivery(self._after)
        delivery.holds += 1
        released = False

        def ack() -> None:
            nonlocal released
            if not released:
                released = True
                delivery.release()

        return ack

    async def join(self, timeout_s: float) -> None:
        """Wait until every message put so far was handled (TimeoutError after `timeout_s`)."""
        if self._pending:
            await asyncio.wait_for(self._idle.wait(), timeout_s)

    def _matched(self, item: _Queued) -> list[_Subscription]:
        key = (item[0].topic, item[2])
        found = self._matches.get(key)
        if found is None:
            if len(self._matches) > 65_536:
                self._matches.clear()
            found = self._matches[key] = [
                s for s in self.subscriptions if _targets(s.topic_filter, item)
            ]
        return found

    async def _run(self) -> None:
        items = self._items
        while True:
            if not items:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = items.popleft()
            message, after, _ = item
            try:
                matched = self._matched(item)
                if not matched:
                    self._hold(item)
                    continue
                self.current, self._after, self._delivering = None, after, True
                try:
                    for sub in matched:
                        try:
                            await sub.callback(message)
                        except Exception:  # the bus never dies of a callback
                            log.exception("bus callback failed on %s", message.topic)
                finally:
                    delivery, self.current, self._delivering = self.current, None, False
                if delivery is not None:
                    delivery.release()
                elif after is not None:
                    after()
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    def _hold(self, item: _Queued) -> None:
        if len(self.unmatched) >= self.max_unmatched:
            dropped = self.unmatched.pop(0)[0]  # unacknowledged: the broker sends it again later
            log.warning(
                "more than %d messages without a subscription; released %s unacknowledged",
                self.max_unmatched,
                dropped.topic,
            )
        self.unmatched.append(item)


_Queued = tuple[RawMessage, Callable[[], None] | None, frozenset[str] | None]


def _targets(topic_filter: str, item: _Queued) -> bool:
    message, _, filters = item
    if filters is not None:
        return topic_filter in filters
    return filter_matches(topic_filter, message.topic)


@dataclass
class ConnectHooks:
    """The connect listeners of one bus, each run as a task on the event loop."""

    listeners: list[ConnectListener] = field(default_factory=list)
    running: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, listener: ConnectListener) -> None:
        """Run `listener(connection)` on every (re)connection from now on."""
        self.listeners.append(listener)

    def fire(self, connection: int) -> None:
        """Start every listener for the n-th connection (call on the event loop thread)."""
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            task = loop.create_task(_logged(listener, connection), name="bus-on-connect")
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def stop(self) -> None:
        """Cancel the listeners still running and wait for them."""
        for task in list(self.running):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _logged(listener: ConnectListener, connection: int) -> None:
    try:
        await listener(connection)
    except Exception:  # a listener's failure must not take the bus down
        log.exception("connect listener failed (connection %d)", connection)


class BusCore:
    """What every bus client keeps alike: dispatcher, connect listeners, last will and counters.

    A subclass says how many QoS>0 publishes are `outstanding` (what `stats.queued` reports).
    """

    def __init__(self, queue_limit: int) -> None:
        self._dispatcher = Dispatcher()
        self._hooks = ConnectHooks()
        self._stats = BusStats(queue_limit=queue_limit)
        self._will: Will | None = None

    @property
    def outstanding(self) -> int:
        """QoS>0 publishes not yet acknowledged by the broker, including those held while down."""
        raise NotImplementedError

    @property
    def stats(self) -> BusStats:
        """See `Bus.stats`."""
        self._stats.queued = self.outstanding
        return self._stats

    @property
    def reconnects(self) -> int:
        """Connections after the first one."""
        return self._stats.reconnects

    def set_will(self, will: Will) -> None:
        """See `Bus.set_will`."""
        self._will = will

    def add_connect_listener(self, listener: ConnectListener) -> None:
        """See `Bus.add_connect_listener`."""
        self._hooks.add(listener)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """See `Bus.drain`."""
        await self._dispatcher.join(timeout_s)

    def defer_ack(self) -> Ack:
        """See `Bus.defer_ack`."""
        return self._dispatcher.defer_ack()

    async def _stop_delivering(self) -> None:
        """Cancel the connect listeners still running, then stop the dispatcher."""
        await self._hooks.stop()
        await self._dispatcher.stop()


class BrokerBusCore(BusCore):
    """What the two clients of a real broker share: identity, session, endpoints, connect rounds.

    Args:
        settings: broker connection settings (`endpoints()`, protocol, session, queue bound).
        client_id: overrides `settings.client_id`. With an id and `persistent_session` the
            broker keeps the session (subscriptions, queued QoS 1 messages) across reconnects,
            restarts of this process and broker restarts; without one the session is clean.
        manual_ack: acknowledge QoS 1 deliveries only after the handlers ran (or when the
            callable of `defer_ack` is invoked).
        max_queued: overrides `settings.max_queued`.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str | None,
        manual_ack: bool,
        max_queued: int | None,
    ) -> None:
        super().__init__(max_queued or settings.max_queued)
        self.settings = settings
        self.client_id = client_id or settings.client_id or ""
        self._persistent = bool(self.client_id) and settings.persistent_session
        self._v5 = settings.protocol == "5"
        self._manual_ack = manual_ack
        self._endpoints = settings.endpoints()
        self._endpoint_index = 0
        self._generation = 0  # connections so far: an ack never crosses into a later connection
        self._acked: set[str] = set()  # filters the broker acknowledged on this connection
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start_delivering(self) -> None:
        """Bind the bus to the running event loop and start the dispatcher (`connect` first)."""
        self._loop = asyncio.get_running_loop()
        self._dispatcher.start()

    def _endpoint_names(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self._endpoints)

    def _next_endpoint(self) -> tuple[str, int]:
        """Move on to the next endpoint of the cluster (the first after the last) and return it."""
        self._endpoint_index = (self._endpoint_index + 1) % len(self._endpoints)
        return self._endpoints[self._endpoint_index]

    def _count_connection(self) -> int:
        """Record a successful connection to the current endpoint; its number (1, 2, …)."""
        self._generation += 1
        self._stats.connections += 1
        host, port = self._endpoints[self._endpoint_index]
        self._stats.endpoint = f"{host}:{port}"
        return self._stats.connections

    async def _connect_rounds(self, attempt: Callable[[], Awaitable[str | None]]) -> None:
        """Try every endpoint in turn, `connect_retries + 1` rounds with backoff between them.

        `attempt` tries the current endpoint: None when connected, else why not. When no
        attempt succeeds the dispatcher is stopped and BusError raised.
        """
        s = self.settings
        delay = s.reconnect_min_delay_s
        errors: list[str] = []
        for round_ in range(s.connect_retries + 1):
            for _ in range(len(self._endpoints)):
                error = await attempt()
                if error is None:
                    return
                errors.append(error)
                self._next_endpoint()
            log.warning("MQTT connect failed (round %d): %s", round_ + 1, errors[-1])
            if round_ < s.connect_retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.reconnect_max_delay_s)
        await self._dispatcher.stop()
        raise BusError(
            f"cannot connect to MQTT broker {self._endpoint_names()} after "
            f"{s.connect_retries + 1} rounds: {errors[-1] if errors else 'no endpoint'}"
        )


def subscription_id(topic_filter: str) -> int:
    """The MQTT 5 subscription identifier of a filter: the same in every process and session.

    Derived from the filter, so messages a persistent session queued under an earlier process's
    subscription still name the right filter after a restart.
    """
    return zlib.crc32(topic_filter.encode()) % 268_435_455 + 1


def targets(ids: list[int] | None, known: dict[int, frozenset[str]]) -> frozenset[str] | None:
    """The filters a delivered copy is for (its subscription identifiers), None when unknown.

    `known` maps each identifier of this client to its filter (as a one-element set). An
    identifier it does not know (a session resumed before the subscriptions were made again)
    makes the copy go by topic matching instead.
    """
    if not ids:
        return None
    if len(ids) == 1:
        return known.get(ids[0])
    found = [known.get(i) for i in ids]
    if any(f is None for f in found):
        return None
    return frozenset().union(*(f for f in found if f is not None))
