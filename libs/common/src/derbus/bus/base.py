"""The `Bus` protocol every transport implements, and the pieces both implementations share."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from paho.mqtt.client import topic_matches_sub

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    """A message as it arrives: topic, raw payload bytes, QoS and retain flag."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


MessageCallback = Callable[[RawMessage], Awaitable[None]]
Ack = Callable[[], None]
"""Acknowledges one delivery to the broker (idempotent; call it on the event loop thread)."""


@dataclass(frozen=True)
class Will:
    """The last will the broker publishes when the client vanishes without saying goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


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

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish a payload; QoS 1 messages are queued while disconnected and sent later."""
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


@dataclass
class Dispatcher:
    """Delivers received messages, in arrival order, to every matching subscription callback.

    `after` (optional) runs once a message has been handled by all callbacks — the MQTT bus
    uses it to acknowledge deliveries manually. A callback may postpone it with `defer_ack`:
    `after` then runs once every deferred acknowledgement was invoked (group commit).

    A message no local subscription matches yet is held, not acknowledged, and delivered when a
    matching subscription is added: a persistent session resumes with the messages queued for it
    right at CONNECT, before the service has registered its handlers again.
    """

    subscriptions: list[_Subscription] = field(default_factory=list)
    queue: asyncio.Queue[tuple[RawMessage, Callable[[], None] | None]] | None = None
    task: asyncio.Task[None] | None = None
    unmatched: list[tuple[RawMessage, Callable[[], None] | None]] = field(default_factory=list)
    max_unmatched: int = 100_000
    current: _Delivery | None = None

    def add(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        self.subscriptions.append(_Subscription(topic_filter, qos, callback))
        held, self.unmatched = self.unmatched, []
        for message, after in held:
            if filter_matches(topic_filter, message.topic) and self.queue is not None:
                self.queue.put_nowait((message, after))
            else:
                self.unmatched.append((message, after))

    def start(self) -> None:
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._run(), name="bus-dispatch")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    def put(self, message: RawMessage, after: Callable[[], None] | None = None) -> None:
        if self.queue is None:
            raise RuntimeError("dispatcher not started")
        self.queue.put_nowait((message, after))

    def defer_ack(self) -> Ack:
        """Postpone the acknowledgement of the message being delivered (see `Bus.defer_ack`)."""
        delivery = self.current
        if delivery is None:
            raise RuntimeError("defer_ack called outside a subscription callback")
        delivery.holds += 1
        released = False

        def ack() -> None:
            nonlocal released
            if not released:
                released = True
                delivery.release()

        return ack

    async def join(self, timeout_s: float) -> None:
        if self.queue is not None:
            await asyncio.wait_for(self.queue.join(), timeout_s)

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            message, after = await self.queue.get()
            try:
                matched = [
                    s for s in self.subscriptions if filter_matches(s.topic_filter, message.topic)
                ]
                if not matched:
                    self._hold(message, after)
                    continue
                delivery = self.current = _Delivery(after)
                try:
                    for sub in matched:
                        try:
                            await sub.callback(message)
                        except Exception:  # the bus never dies of a callback
                            log.exception("bus callback failed on %s", message.topic)
                finally:
                    self.current = None
                delivery.release()
            finally:
                self.queue.task_done()

    def _hold(self, message: RawMessage, after: Callable[[], None] | None) -> None:
        if len(self.unmatched) >= self.max_unmatched:
            dropped, _ = self.unmatched.pop(0)  # unacknowledged: the broker sends it again later
            log.warning("more than %d messages without a subscription; released %s unacknowledged",
                        self.max_unmatched, dropped.topic)  # fmt: skip
        self.unmatched.append((message, after))
