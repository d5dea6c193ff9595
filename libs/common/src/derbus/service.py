"""The service runtime: typed handlers on catalogue topics, periodic tasks, status and metrics.

A service is declared, not written: `@service.on(topics.METER)` handlers receive the validated
model and a `Context` to publish; `@service.every(seconds)` tasks run periodically. The
dispatcher here is the only broad `except` of a service: a payload that fails to decode or
validate is logged, counted and dead-lettered (and, for a handler declared with `on_invalid`,
handed to that hook: a command receiver answers it with a `rejected` ack); a handler that raises
is logged with its traceback and marks the service degraded; consumption always continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from fastapi import APIRouter
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError
from typing_extensions import TypeVar as DefaultTypeVar

from derbus import topics
from derbus.bus.base import Ack, Bus, BusStats, RawMessage, Will
from derbus.errors import ConfigError
from derbus.messages import (
    DeadLetter,
    Message,
    ServiceState,
    ServiceStatus,
    SetpointCommand,
    describe_problems,
    utcnow,
)
from derbus.messages.status import WILL_SEQ_LOW
from derbus.settings import ServiceSettings, describe_validation_error
from derbus.topics import PLATFORM_SITE, TopicIds, TopicSpec

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=ServiceSettings)
T = TypeVar("T")
# the service's typed state/decision object; services not yet migrated keep a plain dict
St = DefaultTypeVar("St", default=dict[str, Any])

Handler = Callable[[M, "Context"], Awaitable[None] | None]
RawHandler = Callable[[RawMessage, "Context"], Awaitable[None] | None]
"""A handler of undecoded payloads (`Service.on_raw`): it validates and dead-letters itself."""
InvalidHandler = Callable[[RawMessage, ValidationError, "Context"], Awaitable[None] | None]
"""Called after a payload failed its model (already dead-lettered): raw message, error, context."""
Task = Callable[["Context"], Awaitable[None] | None]


class ServiceMetrics:
    """Prometheus metrics of one service, on its own registry (no global state)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages_in = Counter(
            "derbus_messages_in_total", "Messages received", ["topic"], registry=self.registry
        )
        self.messages_out = Counter(
            "derbus_messages_out_total", "Messages published", ["topic"], registry=self.registry
        )
        self.messages_invalid = Counter(
            "derbus_messages_invalid_total",
            "Payloads that failed to decode or validate (dead-lettered)",
            ["topic"],
            registry=self.registry,
        )
        self.handler_errors = Counter(
            "derbus_handler_errors_total", "Handler exceptions", ["handler"], registry=self.registry
        )
        self.handler_seconds = Histogram(
            "derbus_handler_seconds",
            "Handler duration",
            ["handler"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.bus_connected = Gauge(
            "derbus_bus_connected", "1 when the bus is connected", registry=self.registry
        )
        self.degraded = Gauge(
            "derbus_service_degraded", "1 when the service is degraded", registry=self.registry
        )
        self.info = Gauge(
            "derbus_service_info", "Service identity", ["service"], registry=self.registry
        )
        self.info.labels(service=service).set(1)

    def watch_bus(self, bus: Bus) -> None:
        """Export the bus's own counters (read at scrape time)."""
        figures: dict[str, tuple[str, Callable[[BusStats], float]]] = {
            "derbus_bus_queued": (
                "QoS 1 publishes not yet acknowledged by the broker (held while down included)",
                lambda s: s.queued,
            ),
            "derbus_bus_queue_limit": ("queued at which publish waits", lambda s: s.queue_limit),
            "derbus_bus_publish_waits": (
                "publishes that waited for the queue (back-pressure), since start",
                lambda s: s.publish_waits,
            ),
            "derbus_bus_dropped_qos0": (
                "QoS 0 publishes dropped while disconnected, since start",
                lambda s: s.dropped_qos0,
            ),
            "derbus_bus_connections": (
                "successful broker connections since start (reconnects + 1)",
                lambda s: s.connections,
            ),
        }
        for name, (doc, read) in figures.items():
            gauge = Gauge(name, doc, registry=self.registry)
            gauge.set_function(functools.partial(_read_stats, bus, read))


def _read_stats(bus: Bus, read: Callable[[BusStats], float]) -> float:
    return float(read(bus.stats))


@dataclass
class Context:
    """What a handler or task gets besides its message: where it came from and how to publish."""

    service: Service[Any, Any]
    topic: str | None = None
    ids: TopicIds | None = None

    @property
    def site_id(self) -> str:
        """Site of the message being handled (or the service's default site)."""
        return self.ids.site_id if self.ids else self.service.settings.site.id

    @property
    def device_id(self) -> str | None:
        """Device of the message being handled."""
        return self.ids.device_id if self.ids else None

    def defer_ack(self) -> Ack:
        """Acknowledge the message being handled only when the returned callable is invoked.

        For handlers that make the message durable later (group commit): the runtime then does
        not acknowledge it when the handler returns. Call it while handling the message (before
        the handler returns); invoke the callable on the event loop thread.
        """
        return self.service.bus.defer_ack()

    async def publish(
        self, spec: TopicSpec[M], message: M, *, site_id: str | None = None, device_id: str
    ) -> None:
        """Publish on a catalogue topic (site defaults to the one being handled)."""
        await self.service.publish(
            spec, message, site_id=site_id or self.site_id, device_id=device_id
        )


@dataclass
class _HandlerEntry(Generic[M]):
    spec: TopicSpec[M]
    topic_filter: str
    fn: Handler[M] | RawHandler
    name: str
    on_invalid: InvalidHandler | None = None
    raw: bool = False


@dataclass
class _TaskEntry:
    fn: Task
    interval_s: Callable[[], float]
    name: str
    run_at_start: bool


@dataclass
class _Health:
    degraded: dict[str, str] = field(default_factory=dict)
    started: bool = False


class Service(Generic[S, St]):
    """One derbus service: handlers on topics, periodic tasks, status, metrics, REST routers.

    Args:
        name: service name (`peak_shaving`), also its status device id.
        settings: the service's settings (built in `__main__`).
        bus: the bus to run on (`MqttBus` in production, `InMemoryBus` in unit tests).
        version: reported in the status message.
        state: the service's typed state/decision object (what it remembers between messages
            and the methods that decide); tests reach it as `service.state`.
        incarnation: this run's number in status messages (default: process start in ms since
            the epoch, so a restarted service's statuses order after the old run's will).
    """

    def __init__(
        self,
        name: str,
        settings: S,
        bus: Bus,
        version: str = "0.1.0",
        state: St | None = None,
        incarnation: int | None = None,
    ) -> None:
        topics.validate_id("service name", name)
        self.name = name
        self.settings: S = settings
        self.bus = bus
        self.version = version
        self.metrics = ServiceMetrics(name)
        self.metrics.watch_bus(bus)
        self.incarnation = incarnation if incarnation is not None else time.time_ns() // 1_000_000
        self._connection = 0  # the bus connection statuses are published on now
        self._status_n = 0  # statuses published on that connection
        self.routers: list[APIRouter] = []
        self.state: St = state if state is not None else cast(St, {})
        self._handlers: list[_HandlerEntry[Any]] = []
        self._tasks: list[_TaskEntry] = []
        self._running: list[asyncio.Task[None]] = []
        self._health = _Health()
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._shutdown: list[Callable[[], Awaitable[None]]] = []
        self._config_listeners: list[Callable[[S, S], Awaitable[None] | None]] = []
        self._shard: tuple[int, int] | None = None
        self.published_specs: set[str] = set()

    # --- declaration -------------------------------------------------------------------------
    @property
    def root(self) -> str:
        """The topic root this service runs under."""
        return self.settings.mqtt.root

    @property
    def status_site(self) -> str:
        """The site level of this service's status, will and dead letters (`MQTT_STATUS_SITE`).

        `platform` for a platform service; an edge gateway logged in as its site uses that site.
        """
        return self.settings.mqtt.status_site

    def on(
        self,
        spec: TopicSpec[M],
        *,
        site_id: str | None = None,
        device_id: str | None = None,
        shared_group: str | None = None,
        on_invalid: InvalidHandler | None = None,
    ) -> Callable[[Handler[M]], Handler[M]]:
        """Declare a handler for a topic spec (missing ids are wildcards).

        `shared_group` subscribes as an MQTT shared subscription so replicas split the load.
        `on_invalid` is called for a payload that failed the spec's model, after it was logged,
        counted and dead-lettered (a command receiver answers it there).
        """

        def register(fn: Handler[M]) -> Handler[M]:
            topic_filter = spec.filter(site_id, device_id, root=self.root)
            if shared_group:
                topic_filter = f"$share/{shared_group}/{topic_filter}"
            self._handlers.append(_HandlerEntry(spec, topic_filter, fn, fn.__name__, on_invalid))
            return fn

        return register

    def on_raw(
        self, spec: TopicSpec[Any], *, shared_group: str | None = None
    ) -> Callable[[RawHandler], RawHandler]:
        """Declare a handler that gets the payload undecoded, with the topic's ids in its Context.

        For hot paths that decode faster than the pydantic model (cloud_sync's intake). The
        handler owns validation: it must refuse what the spec's model refuses and call
        `dead_letter` for it. Counting, retained-clear skipping and error handling are as `on`.
        """

        def register(fn: RawHandler) -> RawHandler:
            topic_filter = spec.filter(root=self.root)
            if shared_group:
                topic_filter = f"$share/{shared_group}/{topic_filter}"
            self._handlers.append(_HandlerEntry(spec, topic_filter, fn, fn.__name__, raw=True))
            return fn

        return register

    def every(
        self, interval_s: float | Callable[[], float], *, run_at_start: bool = False
    ) -> Callable[[Task], Task]:
        """Declare a periodic task; the interval may be a callable read before each wait."""
        getter: Callable[[], float] = (
            interval_s if callable(interval_s) else (lambda: float(interval_s))
        )

        def register(fn: Task) -> Task:
            self._tasks.append(_TaskEntry(fn, getter, fn.__name__, run_at_start))
            return fn

        return register

    def on_startup(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run `fn` after the bus connected and before handlers are subscribed."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run `fn` when the service stops (before the bus closes)."""
        self._shutdown.append(fn)
        return fn

    def on_config_change(
        self, fn: Callable[[S, S], Awaitable[None] | None]
    ) -> Callable[[S, S], Awaitable[None] | None]:
        """Run `fn(old, new)` after `PUT /config` changed the settings."""
        self._config_listeners.append(fn)
        return fn

    def declare_publishes(self, *specs: TopicSpec[Any]) -> None:
        """Declare the topics this service publishes (for `GET /topics` and the broker ACL)."""
        self.published_specs.update(s.key for s in specs)

    def include_router(self, router: APIRouter) -> None:
        """Add service-specific REST endpoints to the service's API."""
        self.routers.append(router)

    # --- introspection -----------------------------------------------------------------------
    def subscriptions(self) -> list[dict[str, Any]]:
        """What the service subscribes to (for `GET /topics`)."""
        return [
            {
                "key": h.spec.key,
                "filter": h.topic_filter,
                "model": h.spec.model.__name__,
                "qos": h.spec.qos,
                "handler": h.name,
            }
            for h in self._handlers
        ]

    @property
    def ready(self) -> bool:
        """Started, and the bus is connected with every subscription acknowledged."""
        return self._health.started and self.bus.connected

    @property
    def degraded_reasons(self) -> dict[str, str]:
        """Why the service is degraded (empty when healthy)."""
        return dict(self._health.degraded)

    def status(self) -> ServiceStatus:
        """The current status message (each call takes the next sequence number)."""
        reasons = self._health.degraded
        state: ServiceState = "degraded" if reasons else "online"
        reason = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or None
        return self._status(state, reason)

    def _status(self, state: ServiceState, reason: str | None) -> ServiceStatus:
        connection = max(1, self.bus.stats.connections)
        if connection != self._connection:
            self._connection, self._status_n = connection, 0
        self._status_n += 1
        return ServiceStatus(
            ts=utcnow(),
            source=self.name,
            service=self.name,
            state=state,
            reason=reason,
            version=self.version,
            incarnation=self.incarnation,
            seq=(connection << 32) | self._status_n,
        )

    def _will(self, connection: int) -> bytes:
        """The last will of the n-th bus connection, built as that connection is made."""
        return ServiceStatus(
            ts=utcnow(),
            source=self.name,
            service=self.name,
            state="offline",
            reason="connection lost (last will)",
            version=self.version,
            incarnation=self.incarnation,
            seq=(connection << 32) | WILL_SEQ_LOW,
        ).to_json_bytes()

    async def _on_bus_connect(self, connection: int) -> None:
        """After a reconnect, say we are back (numbered after the previous connection's will).

        A broker that lost the connection (or restarted) may have published the previous will;
        the retained status must not stay `offline` while the service runs.
        """
        if connection > 1:
            await self._publish_status()

    # --- health --------------------------------------------------------------------------------
    async def set_degraded(self, key: str, reason: str) -> None:
        """Mark the service degraded for `key` (published on the status topic once per change)."""
        if self._health.degraded.get(key) == reason:
            return
        self._health.degraded[key] = reason
        self.metrics.degraded.set(1)
        log.warning("%s degraded (%s): %s", self.name, key, reason)
        await self._publish_status()

    async def clear_degraded(self, key: str) -> None:
        """Clear one degradation reason; back to online when none is left."""
        if self._health.degraded.pop(key, None) is None:
            return
        self.metrics.degraded.set(1 if self._health.degraded else 0)
        log.info("%s recovered (%s)", self.name, key)
        await self._publish_status()

    async def _publish_status(self) -> None:
        if self._health.started:
            await self.publish(
                topics.SERVICE_STATUS, self.status(), site_id=self.status_site, device_id=self.name
            )

    # --- running -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the bus, run start-up hooks, subscribe handlers, start periodic tasks."""
        self.bus.set_will(
            Will(
                topics.SERVICE_STATUS.topic(self.status_site, self.name, self.root),
                self._will(1),
                qos=1,
                retain=True,
                delay_s=self.settings.mqtt.will_delay_s,
                build=self._will,
            )
        )
        self.bus.add_connect_listener(self._on_bus_connect)
        await self.bus.connect()
        for hook in self._startup:
            await hook()
        for entry in self._handlers:
            await self.bus.subscribe(entry.topic_filter, entry.spec.qos, self._dispatch_for(entry))
        self._health.started = True
        self.metrics.bus_connected.set(1)
        await self._publish_status()
        for task in self._tasks:
            self._running.append(
                asyncio.create_task(self._loop(task), name=f"{self.name}:{task.name}")
            )

    async def stop(self) -> None:
        """Cancel tasks, run shutdown hooks, publish `offline` and close the bus."""
        for running in self._running:
            running.cancel()
        for running in self._running:
            with contextlib.suppress(asyncio.CancelledError):
                await running
        self._running.clear()
        for hook in self._shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook %s failed", getattr(hook, "__name__", hook))
        if self._health.started and self.bus.connected:
            offline = self._status("offline", "stopped")
            await self.publish(
                topics.SERVICE_STATUS, offline, site_id=self.status_site, device_id=self.name
            )
        self._health.started = False
        self.metrics.bus_connected.set(0)
        await self.bus.close()

    async def publish(
        self, spec: TopicSpec[M], message: M, *, site_id: str, device_id: str
    ) -> None:
        """Publish a message on a catalogue topic with the spec's QoS and retain flag."""
        if not isinstance(message, spec.model):
            raise TypeError(
                f"{spec.key} carries {spec.model.__name__}, not {type(message).__name__}"
            )
        topic = spec.topic(site_id, device_id, root=self.root)
        expiry_s, reply_to, correlation = None, None, None
        if isinstance(message, SetpointCommand):
            # MQTT 5: the broker drops a setpoint its receiver could not get within its TTL, and
            # tells an MQTT 5 receiver where the acknowledgement goes and with what id.
            expiry_s = max(1, math.ceil(message.ttl_s))
            reply_to = topics.SETPOINT_ACK.topic(site_id, device_id, root=self.root)
            correlation = message.setpoint_id.encode()
        await self.bus.publish(
            topic,
            message.to_json_bytes(),
            qos=spec.qos,
            retain=spec.retain,
            expiry_s=expiry_s,
            response_topic=reply_to,
            correlation_data=correlation,
        )
        self.metrics.messages_out.labels(topic=spec.key).inc()
        self.published_specs.add(spec.key)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (solver, model fit, Modbus I/O) off the event loop."""
        return await asyncio.to_thread(fn, *args)

    async def run_task(self, name: str) -> None:
        """Run one periodic task now (tests, on-demand endpoints)."""
        for task in self._tasks:
            if task.name == name:
                await self._run_task_once(task)
                return
        raise KeyError(name)

    async def _loop(self, task: _TaskEntry) -> None:
        if task.run_at_start:
            await self._run_task_once(task)
        while True:
            await asyncio.sleep(max(0.001, task.interval_s()))
            await self._run_task_once(task)

    async def _run_task_once(self, task: _TaskEntry) -> None:
        started = time.perf_counter()
        try:
            result = task.fn(Context(self))
            if inspect.isawaitable(result):
                await result
        except Exception as err:  # a task failure degrades, never kills, the service
            self.metrics.handler_errors.labels(handler=task.name).inc()
            log.exception("task %s failed", task.name)
            await self.set_degraded(f"task:{task.name}", f"{type(err).__name__}: {err}")
        else:
            await self.clear_degraded(f"task:{task.name}")
        finally:
            self.metrics.handler_seconds.labels(handler=task.name).observe(
                time.perf_counter() - started
            )

    def _dispatch_for(self, entry: _HandlerEntry[Any]) -> Callable[[RawMessage], Awaitable[None]]:
        async def dispatch(raw: RawMessage) -> None:
            await self._dispatch(entry, raw)

        return dispatch

    def shard_sites(self, index: int, count: int) -> None:
        """Handle the messages of only the sites of shard `index` of `count`.

        Sites are assigned by a CRC-32 of the site id: N replicas, shards 0..N-1, split the
        sites between them, each site on exactly one, whatever the broker (every replica
        receives everything; each keeps its own sites' state). Platform-wide messages (site
        `platform`) reach every replica.
        """
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count}: the index must be in 0..{count - 1}")
        self._shard = (index, count)

    def owns_site(self, site_id: str) -> bool:
        """Whether this replica handles `site_id` (always, without `shard_sites`)."""
        if self._shard is None or site_id == PLATFORM_SITE:
            return True
        index, count = self._shard
        return zlib.crc32(site_id.encode()) % count == index

    async def _dispatch(self, entry: _HandlerEntry[Any], raw: RawMessage) -> None:
        spec = entry.spec
        self.metrics.messages_in.labels(topic=spec.key).inc()
        if not raw.payload and raw.retain:
            return  # a cleared retained message, not a message
        ids = spec.parse(raw.topic, root=self.root)
        if self._shard is not None and ids is not None and not self.owns_site(ids.site_id):
            return  # another replica's site
        message: Any = raw
        if not entry.raw:
            try:
                message = spec.model.model_validate_json(raw.payload)
            except ValidationError as err:
                await self.dead_letter(raw, spec, describe_problems(err))
                if entry.on_invalid is not None:
                    await self._answer_invalid(entry, entry.on_invalid, raw, err)
                return
        started = time.perf_counter()
        try:
            result = entry.fn(message, Context(self, raw.topic, ids))
            if inspect.isawaitable(result):
                await result
        except Exception as err:  # the dispatcher is the one broad except of a service
            self.metrics.handler_errors.labels(handler=entry.name).inc()
            log.exception("handler %s failed on %s", entry.name, raw.topic)
            await self.set_degraded(f"handler:{entry.name}", f"{type(err).__name__}: {err}")
        else:
            await self.clear_degraded(f"handler:{entry.name}")
        finally:
            self.metrics.handler_seconds.labels(handler=entry.name).observe(
                time.perf_counter() - started
            )

    async def _answer_invalid(
        self,
        entry: _HandlerEntry[Any],
        hook: InvalidHandler,
        raw: RawMessage,
        err: ValidationError,
    ) -> None:
        ids = entry.spec.parse(raw.topic, root=self.root)
        name = f"{entry.name}:invalid"
        try:
            result = hook(raw, err, Context(self, raw.topic, ids))
            if inspect.isawaitable(result):
                await result
        except Exception as hook_err:  # part of the dispatcher: one bad message never stops it
            self.metrics.handler_errors.labels(handler=name).inc()
            log.exception("invalid-payload hook %s failed on %s", name, raw.topic)
            await self.set_degraded(f"handler:{name}", f"{type(hook_err).__name__}: {hook_err}")
        else:
            await self.clear_degraded(f"handler:{name}")

    async def dead_letter(self, raw: RawMessage, spec: TopicSpec[Any] | None, error: str) -> None:
        """Log, count and republish an invalid payload on the dead-letter topic."""
        key = spec.key if spec else "unknown"
        self.metrics.messages_invalid.labels(topic=key).inc()
        log.warning("invalid payload on %s: %s", raw.topic, error)
        letter = DeadLetter(
            ts=utcnow(),
            source=self.name,
            original_topic=raw.topic,
            payload=raw.payload.decode("utf-8", errors="replace")[:65536],
            error=error[:4000],
            service=self.name,
        )
        await self.publish(
            topics.DEAD_LETTER, letter, site_id=self.status_site, device_id=self.name
        )

    # --- configuration -------------------------------------------------------------------------
    async def update_config(self, patch: dict[str, Any]) -> S:
        """Change mutable settings at run time; raises ConfigError naming the field."""
        mutable = type(self.settings).mutable_fields
        for key in patch:
            if key not in mutable:
                if key in type(self.settings).model_fields:
                    raise ConfigError(f"{key}: field cannot be changed at run time", (key,))
                raise ConfigError(f"{key}: unknown field", (key,))
        old = self.settings
        try:
            new = type(old).model_validate({**old.model_dump(), **patch})
        except ValidationError as err:
            fields = tuple(".".join(str(p) for p in e["loc"]) for e in err.errors())
            raise ConfigError(describe_validation_error(err), fields) from err
        self.settings = new
        for listener in self._config_listeners:
            result = listener(old, new)
            if inspect.isawaitable(result):
                await result
        return new
