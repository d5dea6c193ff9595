"""`GmqttBus`: the `Bus` protocol on gmqtt, an asyncio MQTT client (no network thread).

Everything runs on the event loop: packets are parsed in the transport's callbacks, a QoS 1
publish is one packet write plus a dict entry until its PUBACK. This bus adds what derbus needs
on top: its own reconnect supervisor that walks a list of broker endpoints (a cluster) with
backoff, re-subscribes after every connection, a will rebuilt for each connection, an in-flight
window sized from the broker's Receive Maximum with an O(1) overflow queue (held while
disconnected too), back-pressure at `max_queued`, manual acknowledgement (a QoS 1 delivery is
acknowledged only once every handler is done with it, or later with `defer_ack`), and MQTT 5
message expiry, response topic and correlation data.

gmqtt's internals this relies on (its reconnect hook, its connection factory, its QoS 1 receive
path and its in-flight storage) are pinned by the dependency range and covered by the contract
suite that every bus passes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.storage import PersistentStorage

from derbus.bus.base import BrokerBusCore, MessageCallback, RawMessage, subscription_id, targets
from derbus.errors import BusError
from derbus.settings import MqttSettings

log = logging.getLogger(__name__)

_ATTEMPT_TIMEOUT_S = 5.0


class _Storage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store (mid → packet) that tells the bus when a PUBACK freed a slot."""

    def __init__(self, on_removed: Any) -> None:
        super().__init__()
        self._on_removed = on_removed

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._on_removed()

    def __len__(self) -> int:
        return len(self._messages)

    def __bool__(self) -> bool:
        return True  # gmqtt takes `persistent_storage or PersistentStorage()`: never falsy


class _Corked:
    """The packets of one connection, gathered and written once per event-loop iteration.

    gmqtt writes each packet (every PUBLISH, every PUBACK) to the socket at once: one `send`
    system call per packet, most of the time of a busy client. Gathered, a burst goes out in a
    few calls; a lone message still leaves in the same loop iteration.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.buffer: list[bytes] = []
        self.loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        connection = self.protocol._connection
        if connection is not None:
            connection._last_data_out = time.monotonic()  # gmqtt's keepalive reads it
        if not self.buffer:
            self.loop.call_soon(self.flush)
        self.buffer.append(data)

    def flush(self) -> None:
        buffer, self.buffer = self.buffer, []
        transport = self.protocol._transport
        if buffer and transport is not None and not transport.is_closing():
            transport.write(b"".join(buffer))


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client with its own reconnect replaced by the bus's endpoint-aware supervisor."""

    def __init__(self, bus: GmqttBus, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.derbus_bus = bus

    async def reconnect(self, delay: bool = False) -> None:
        # gmqtt calls this when a connection is lost or a CONNACK refused a retryable reason.
        self.derbus_bus._connection_lost()


class GmqttBus(BrokerBusCore):
    """A bus on a real MQTT broker (or a cluster of them), on gmqtt (arguments: `BrokerBusCore`)."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str | None = None,
        manual_ack: bool = False,
        max_queued: int | None = None,
    ) -> None:
        super().__init__(settings, client_id, manual_ack, max_queued)
        gmqtt_log = logging.getLogger("gmqtt")
        if gmqtt_log.level == logging.NOTSET:
            gmqtt_log.setLevel(logging.WARNING)  # it logs every SUBSCRIBE and connection at INFO
        self._client: _Client | None = None
        self._storage = _Storage(self._on_acked)
        self._pending: collections.deque[gmqtt.Message] = collections.deque()
        self._window = 1
        self._space = asyncio.Event()
        self._waiting = False  # a publish waits for space (back-pressure)
        self._subs: dict[str, gmqtt.Subscription] = {}
        self._sub_ids: dict[int, frozenset[str]] = {}  # MQTT 5 subscription identifier → filter
        self._suback_waiters: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._resubscribed: dict[str, asyncio.Future[None]] = {}  # SUBACK of the latest connection
        self._connect_waiters: list[asyncio.Future[None]] = []
        self._up = False
        self._closing = False
        self._reconnector: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._cork: _Corked | None = None

    # --- state --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._up and all(f in self._acked for f in self._subs)

    @property
    def outstanding(self) -> int:
        """QoS>0 messages published and not yet acknowledged, including those not sent yet."""
        return len(self._storage) + len(self._pending)

    # --- lifecycle ----------------------------------------------------------------------------
    def _make_client(self) -> _Client:
        s = self.settings
        props: dict[str, Any] = {}
        if self._v5:
            props["session_expiry_interval"] = s.session_expiry_s if self._persistent else 0
        client = _Client(
            self,
            self.client_id or None,
            clean_session=not self._persistent,
            optimistic_acknowledgement=True,
            persistent_storage=self._storage,
            logger=logging.getLogger("gmqtt"),
            **props,
        )
        if s.username:
            client.set_auth_credentials(
                s.username, s.password.get_secret_value() if s.password else None
            )
        handler = client._package_handler
        # A broker that lost the session (restart without persistence, another cluster node
        # without it) answers session_present=0; gmqtt would then forget the QoS 1 messages in
        # flight. Send them again instead: at least once, never silently dropped.
        handler._clear_qos_callback = self._resend_after_clean_session
        if self._manual_ack:
            handler._handle_qos_1_publish_packet = self._on_qos1_manual
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    async def connect(self) -> None:
        self._start_delivering()
        self._closing = False
        if self._client is None:
            self._client = self._make_client()
        await self._connect_rounds(self._attempt)

    async def _attempt(self) -> str | None:
        """One connection attempt to the current endpoint: None when accepted, else why not.

        Raises BusError when the broker refused for good (credentials, authorisation).
        """
        client = self._client
        assert client is not None
        host, port = self._endpoints[self._endpoint_index]
        s = self.settings
        version = MQTTv50 if self._v5 else MQTTv311
        client._host, client._port, client._keepalive = host, port, s.keepalive_s
        client._ssl = tls_context(s) if s.tls else False
        client._connection_state.protocol_version = version
        client._package_handler.reset_error_state()
        client._is_active = True
        old = client._connection
        if old is not None and not old.is_closing():
            await old.close()
        try:
            client._connection = await asyncio.wait_for(
                client._create_connection(
                    host,
                    port,
                    ssl=client._ssl,
                    clean_session=not self._persistent,
                    keepalive=s.keepalive_s,
                ),
                _ATTEMPT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as err:
            return f"{host}:{port}: {err or type(err).__name__}"
        protocol = client._connection._protocol
        self._cork = _Corked(protocol)
        protocol.write_data = self._cork.write
        client._will_message = self._will_message(self._stats.connections + 1)
        await client._connection.auth(
            client._client_id,
            client._username,
            client._password,
            will_message=client._will_message,
            **client._connect_properties,
        )
        connack = asyncio.ensure_future(client._connack_received.wait())
        lost = asyncio.ensure_future(client._connection_lost.wait())
        done, _ = await asyncio.wait(
            {connack, lost},
            timeout=max(_ATTEMPT_TIMEOUT_S, s.keepalive_s),
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in (connack, lost):
            waiter.cancel()
        handler = client._package_handler
        if handler.has_error:
            error = str(handler._error)
            with contextlib.suppress(OSError):
                await client._connection.close()
            if handler._permanent_failure:
                raise BusError(
                    f"MQTT broker {host}:{port} refused the connection of user "
                    f"{s.username!r}: {error}"
                )
            return f"{host}:{port}: {error}"
        if connack not in done or not self._up:
            with contextlib.suppress(OSError):
                await client._connection.close()
            hint = " (a broker without MQTT 5 needs MQTT_PROTOCOL=3.1.1)" if self._v5 else ""
            return f"{host}:{port}: no CONNACK{hint}"
        return None

    def _will_message(self, connection: int) -> gmqtt.Message | None:
        will = self._will
        if will is None:
            return None
        props: dict[str, Any] = {}
        if self._v5 and will.delay_s > 0:
            props["will_delay_interval"] = will.delay_s
        return gmqtt.Message(
            will.topic, will.payload_for(connection), qos=will.qos, retain=will.retain, **props
        )

    def _wake_connect_waiters(self) -> None:
        waiters, self._connect_waiters = self._connect_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _connection_lost(self) -> None:
        """The connection was lost (or a CONNACK refused): supervise the reconnect."""
        was_up = self._up
        self._up = False
        self._acked.clear()
        self._stats.endpoint = ""
        if was_up:
            log.warning("MQTT connection to %s lost; reconnecting", self._endpoint_names())
        if self._closing or self._reconnector is not None or self._loop is None:
            return
        if was_up:
            self._reconnector = self._loop.create_task(self._reconnect(), name="bus-reconnect")

    async def _reconnect(self) -> None:
        s = self.settings
        delay = s.reconnect_min_delay_s
        try:
            while not self._closing:
                # fail over: the endpoint that was lost is tried last
                for _ in range(len(self._endpoints)):
                    self._next_endpoint()
                    try:
                        if await self._attempt() is None:
                            return
                    except BusError as err:
                        log.error("%s; still retrying", err)
                    if self._closing:
                        return
                await asyncio.sleep(delay)
                delay = min(delay * 2, s.reconnect_max_delay_s)
        finally:
            self._reconnector = None

    async def close(self) -> None:
        self._closing = True
        self._wake_connect_waiters()
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        client = self._client
        if client is not None and client._connection is not None:
            client._is_active = False
            client._connack_received.clear()
            client._connection_lost.set()
            connection = client._connection
            if not connection.is_closing():
                connection.send_disconnect()
            if self._cork is not None:
                self._cork.flush()  # what is gathered (the DISCONNECT last) before the socket closes
            with contextlib.suppress(OSError, ConnectionError):
                await connection.close()
        self._up = False
        await self._stop_delivering()
        await asyncio.sleep(0)  # let gmqtt's connection-lost callbacks finish before the loop ends

    async def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would: the broker sends the will."""
        self._closing = True
        client = self._client
        if client is not None and client._connection is not None:
            client._is_active = False
            client._connection._transport.abort()
        self._up = False
        await self._stop_delivering()
        await asyncio.sleep(0)

    # --- gmqtt callbacks (event loop) ----------------------------------------------------------
    def _on_connect(self, client: Any, flags: Any, rc: Any, properties: Any) -> None:
        self._up = True
        connection = self._count_connection()
        receive_max = client._package_handler.id_generator._max
        self._window = max(1, min(self._stats.queue_limit, receive_max - 2))
        if connection > 1:
            log.info(
                "MQTT reconnected to %s; re-subscribing %d filters",
                self._stats.endpoint,
                len(self._subs),
            )
        for topic_filter, sub in self._subs.items():
            fut = self._send_subscribe(topic_filter, sub)
            if fut is not None:
                self._resubscribed[topic_filter] = fut
        self._wake_connect_waiters()
        loop = asyncio.get_running_loop()
        # after gmqtt's replay of the messages in flight (scheduled before this callback)
        loop.call_soon(self._flush)
        self._hooks.fire(connection)

    def _on_subscribe(self, client: Any, mid: int, qos: tuple[int, ...], properties: Any) -> None:
        waiter = self._suback_waiters.pop(mid, None)
        if waiter is None:
            return
        topic_filter, fut = waiter
        if fut.done():
            return
        if any(q >= 0x80 for q in qos):
            fut.set_exception(BusError(f"subscription to {topic_filter} refused: {qos}"))
        else:
            self._acked.add(topic_filter)
            fut.set_result(None)

    def _on_message(
        self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> None:
        found = targets(properties.get("subscription_identifier"), self._sub_ids)
        self._dispatcher.put(_raw(topic, payload, qos, properties), None, found)

    def _on_qos1_manual(
        self, mid: int, payload: bytes, topic: str, properties: dict[str, Any]
    ) -> None:
        generation = self._generation
        handler = self._client._package_handler if self._client is not None else None

        def after() -> None:
            # A (deferred) ack is dropped once the connection it came on is gone: the broker
            # sends that message again, and acking the old copy could acknowledge whatever
            # reuses the packet id later.
            if handler is not None and self._up and self._generation == generation:
                handler._send_puback(mid)

        found = targets(properties.get("subscription_identifier"), self._sub_ids)
        self._dispatcher.put(_raw(topic, payload, 1, properties), after, found)

    def _resend_after_clean_session(self) -> None:
        client = self._client
        if client is not None and not self._storage.is_empty:
            log.warning(
                "broker has no session for %s: sending %d unacknowledged messages again",
                self.client_id or "(clean session)",
                len(self._storage),
            )
            task = asyncio.ensure_future(client._resend_qos_messages())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _on_acked(self) -> None:  # on every PUBACK: keep it short
        if self._pending:
            self._flush()
        if self._waiting and len(self._storage) + len(self._pending) < self._stats.queue_limit:
            self._space.set()

    def _flush(self) -> None:
        client = self._client
        pending = self._pending
        while pending and self._up and client is not None and len(self._storage) < self._window:
            client.publish(pending.popleft())

    # --- pub/sub ------------------------------------------------------------------------------
    async def subscribe(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        if self._client is None or self._loop is None:
            raise BusError("subscribe before connect")
        self._dispatcher.add(topic_filter, qos, callback)
        sub = self._subs.get(topic_filter)
        if sub is None:
            sub_id = subscription_id(topic_filter) if self._v5 else None
            sub = gmqtt.Subscription(topic_filter, qos=qos, subscription_identifier=sub_id)
            self._subs[topic_filter] = sub
            if sub_id is not None:
                self._sub_ids[sub_id] = frozenset((topic_filter,))
        fut = self._send_subscribe(topic_filter, sub)
        if fut is None:
            return  # not connected now: the next connection subscribes
        try:
            await asyncio.wait_for(self._subacked(topic_filter, fut), timeout=10.0)
        except TimeoutError as err:
            raise BusError(f"no SUBACK for {topic_filter}") from err

    async def _subacked(self, topic_filter: str, fut: asyncio.Future[None]) -> None:
        """Until a SUBACK for the filter, on this connection or (after a drop) the next one."""
        while True:
            waiter = self._reconnected_or_closed()
            try:
                await asyncio.wait({fut, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._connect_waiters.remove(waiter)
            if fut.done():
                fut.result()  # raises when the broker refused the subscription
                return
            if topic_filter in self._acked:
                return
            if self._closing:
                raise BusError(f"bus closed before the SUBACK for {topic_filter}")
            # a new connection re-subscribed: wait for its SUBACK
            fut = self._resubscribed.get(topic_filter, fut)

    def _reconnected_or_closed(self) -> asyncio.Future[None]:
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._connect_waiters.append(waiter)
        return waiter

    def _send_subscribe(
        self, topic_filter: str, sub: gmqtt.Subscription
    ) -> asyncio.Future[None] | None:
        client = self._client
        if not self._up or client is None or self._loop is None:
            return None  # the next connection subscribes
        fut: asyncio.Future[None] = self._loop.create_future()
        mid = client._connection.subscribe([sub])
        self._suback_waiters[mid] = (topic_filter, fut)
        return fut

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
        client = self._client
        if client is None:
            raise BusError(f"publish on {topic} before connect")
        if qos == 0 and not self._up:
            self._stats.dropped_qos0 += 1
            return
        limit = self._stats.queue_limit
        if qos > 0 and len(self._storage) + len(self._pending) >= limit:
            self._stats.publish_waits += 1
            self._waiting = True
            try:
                while len(self._storage) + len(self._pending) >= limit:
                    self._space.clear()
                    await self._space.wait()
            finally:
                self._waiting = False
        if self._v5 and (
            expiry_s is not None or response_topic is not None or correlation_data is not None
        ):
            props: dict[str, Any] = {}
            if expiry_s is not None:
                props["message_expiry_interval"] = max(1, int(expiry_s))
            if response_topic is not None:
                props["response_topic"] = response_topic
            if correlation_data is not None:
                props["correlation_data"] = correlation_data
            message = gmqtt.Message(topic, payload, qos=qos, retain=retain, **props)
        else:
            message = gmqtt.Message(topic, payload, qos=qos, retain=retain)
        if qos == 0 or (self._up and not self._pending and len(self._storage) < self._window):
            client.publish(message)
        else:
            self._pending.append(message)


def _raw(topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> RawMessage:
    expiry = properties.get("message_expiry_interval")
    response = properties.get("response_topic")
    correlation = properties.get("correlation_data")
    return RawMessage(
        topic,
        payload,
        qos,
        bool(properties.get("retain")),
        expiry[0] if expiry else None,
        response[0] if response else None,
        correlation[0] if correlation else None,
    )


def tls_context(s: MqttSettings) -> ssl.SSLContext:
    """The client TLS context: the CA to trust and, when given, the client certificate."""
    context = ssl.create_default_context(cafile=s.ca_file)
    if s.cert_file:
        context.load_cert_chain(s.cert_file, s.key_file)
    return context
