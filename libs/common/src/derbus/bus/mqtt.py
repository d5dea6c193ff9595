"""`MqttBus`: paho-mqtt 2 (callback API v2, its own network thread) behind the `Bus` protocol.

Bounded connect retries with backoff, automatic reconnect that re-subscribes and fails over
between the endpoints of a cluster, a last will rebuilt for every connection, TCP_NODELAY on the
socket, MQTT 5 (session expiry, message expiry, response topic, correlation data, will delay) or
3.1.1, optional manual acknowledgement of QoS 1 deliveries (a message is acknowledged to the
broker only after every handler has finished with it, or later when a handler deferred it with
`defer_ack`). paho's in-flight limit is off (0): with a limit it walks its whole outgoing queue on
every PUBACK; the bound that matters, `max_queued`, is applied here as back-pressure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from derbus.bus.base import BrokerBusCore, MessageCallback, RawMessage, subscription_id, targets
from derbus.errors import BusError
from derbus.settings import MqttSettings

log = logging.getLogger(__name__)


class MqttBus(BrokerBusCore):
    """A bus on a real MQTT broker (or a cluster of them), on paho.

    Args: those of `BrokerBusCore`, and
        max_queued: also bounds what paho would otherwise refuse with a hard "queue full" error
            at 65,535 in flight: `publish` waits instead (back-pressure).
        max_inflight: paho's in-flight window; 0 (no window) unless measuring the old setting.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str | None = None,
        manual_ack: bool = False,
        max_queued: int | None = None,
        max_inflight: int = 0,
        max_outstanding: int | None = None,
    ) -> None:
        super().__init__(settings, client_id, manual_ack, max_queued or max_outstanding)
        self._max_inflight = max_inflight
        self._subs: dict[str, int] = {}
        self._sub_ids: dict[str, int] = {}  # MQTT 5 subscription identifier of each filter
        self._id_filters: dict[int, frozenset[str]] = {}
        self._pending_subacks: dict[int, asyncio.Future[None]] = {}
        self._lock = threading.Lock()
        self._transport_up = False
        self._connack: asyncio.Event | None = None
        self._refused: str | None = None
        self._client: mqtt.Client | None = None
        self._in_flight: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()

    # --- state --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        with self._lock:
            return self._transport_up and all(f in self._acked for f in self._subs)

    def _set_will(self, client: mqtt.Client, connection: int) -> None:
        will = self._will
        if will is None:
            return
        props = None
        if self._v5 and will.delay_s > 0:
            props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            props.WillDelayInterval = will.delay_s
        client.will_set(
            will.topic, will.payload_for(connection), will.qos, will.retain, properties=props
        )

    # --- lifecycle ----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if self._v5 else not self._persistent,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            manual_ack=self._manual_ack,
        )
        if s.username:
            client.username_pw_set(
                s.username, s.password.get_secret_value() if s.password else None
            )
        if s.tls:
            client.tls_set(
                ca_certs=s.ca_file,
                certfile=s.cert_file,
                keyfile=s.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        self._set_will(client, 1)
        client.reconnect_delay_set(
            min_delay=max(1, round(s.reconnect_min_delay_s)),
            max_delay=max(1, round(s.reconnect_max_delay_s)),
        )
        client.max_inflight_messages_set(self._max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    async def connect(self) -> None:
        self._start_delivering()
        self._connack = asyncio.Event()
        self._refused = None
        self._client = client = self._make_client()
        await self._connect_rounds(functools.partial(self._attempt, client))
        s = self.settings
        client.loop_start()
        try:
            await asyncio.wait_for(self._connack.wait(), timeout=max(5.0, s.keepalive_s))
        except TimeoutError as err:
            client.loop_stop()
            await self._dispatcher.stop()
            raise BusError(
                f"no CONNACK from {self._endpoint_names()}{_PROTOCOL_HINT if self._v5 else ''}"
            ) from err
        if self._refused is not None:
            # A refused CONNACK (bad credentials, not authorised) fails fast instead of retrying.
            client.loop_stop()
            await self._dispatcher.stop()
            raise BusError(
                f"MQTT broker {self._endpoint_names()} refused the connection of user "
                f"{s.username!r}: {self._refused}"
            )

    async def _attempt(self, client: mqtt.Client) -> str | None:
        """One connection attempt to the current endpoint: None when it is made, else why not."""
        host, port = self._endpoints[self._endpoint_index]
        try:
            await asyncio.to_thread(self._connect_to, client, host, port)
        except (OSError, ssl.SSLError) as err:
            return f"{host}:{port}: {err}"
        return None

    def _connect_to(self, client: mqtt.Client, host: str, port: int) -> None:
        s = self.settings
        if not self._v5:
            client.connect(host, port, s.keepalive_s)
            return
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s if self._persistent else 0
        client.connect(
            host, port, s.keepalive_s, clean_start=not self._persistent, properties=props
        )

    def _rotate_endpoint(self, client: mqtt.Client) -> None:
        """Point paho's own reconnect at the next endpoint (network thread, socket closed)."""
        if len(self._endpoints) < 2:
            return
        host, port = self._next_endpoint()
        # paho's `host` setter refuses while its state says "connection lost", which is exactly
        # when its own reconnect is about to use `_host`/`_port`: set those.
        client._host, client._port = host, port

    async def close(self) -> None:
        client = self._client
        if client is not None:
            thread = client._thread  # before disconnect: see _stop_network_thread
            client.disconnect()
            await _stop_network_thread(client, thread)
        with self._lock:
            self._transport_up = False
        await self._stop_delivering()

    async def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would: the broker sends the will."""
        client = self._client
        if client is None:
            return
        client.on_disconnect = None
        client.on_connect = None
        # Stop paho's thread first: once the socket is down it would reconnect otherwise.
        await _stop_network_thread(client, client._thread)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            self._transport_up = False
        await self._stop_delivering()

    # --- pub/sub ------------------------------------------------------------------------------
    async def subscribe(self, topic_filter: str, qos: int, callback: MessageCallback) -> None:
        if self._client is None or self._loop is None:
            raise BusError("subscribe before connect")
        self._dispatcher.add(topic_filter, qos, callback)
        with self._lock:
            self._subs[topic_filter] = qos
            if self._v5 and topic_filter not in self._sub_ids:
                sub_id = subscription_id(topic_filter)
                self._sub_ids[topic_filter] = sub_id
                self._id_filters[sub_id] = frozenset((topic_filter,))
        fut = self._send_subscribe(topic_filter, qos)
        if fut is not None:
            try:
                await asyncio.wait_for(fut, timeout=10.0)
            except TimeoutError as err:
                raise BusError(f"no SUBACK for {topic_filter}") from err

    def _send_subscribe(self, topic_filter: str, qos: int) -> asyncio.Future[None] | None:
        assert self._client is not None
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        props = None
        sub_id = self._sub_ids.get(topic_filter)
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            props.SubscriptionIdentifier = sub_id
        with self._lock:
            rc, mid = self._client.subscribe(topic_filter, qos, properties=props)
            if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
                # Not connected now: the reconnect handler subscribes again.
                return None
            self._pending_subacks[mid] = fut
            fut.add_done_callback(functools.partial(self._on_suback_done, topic_filter))
        return fut

    def _on_suback_done(self, topic_filter: str, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        with self._lock:
            self._acked.add(topic_filter)

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
        if self._client is None:
            raise BusError(f"publish on {topic} before connect")
        if qos > 0 and self.outstanding >= self._stats.queue_limit:
            self._stats.publish_waits += 1
            while self.outstanding >= self._stats.queue_limit:
                await asyncio.sleep(0.01)  # back-pressure until the broker acknowledges more
        props = None
        if self._v5 and (expiry_s is not None or response_topic or correlation_data is not None):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if expiry_s is not None:
                props.MessageExpiryInterval = max(1, int(expiry_s))
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data is not None:
                props.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos > 0 and info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._in_flight.append(info)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise BusError(f"publish on {topic} failed: {mqtt.error_string(info.rc)}")
        if info.rc == mqtt.MQTT_ERR_NO_CONN and qos == 0:
            self._stats.dropped_qos0 += 1
            log.debug("QoS 0 message on %s dropped while disconnected", topic)

    @property
    def outstanding(self) -> int:
        """QoS>0 messages published and not yet acknowledged by the broker (approximate)."""
        in_flight = self._in_flight
        while in_flight and _acknowledged(in_flight[0]):
            in_flight.popleft()
        return len(in_flight)

    # --- paho callbacks (network thread) -------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection refused: %s", reason_code)
            connack = self._connack
            if connack is not None and not connack.is_set():
                self._refused = str(reason_code)
                self._call(connack.set)
            return
        with self._lock:
            self._transport_up = True
            self._acked.clear()
            subs = dict(self._subs)
            connection = self._count_connection()
        if connection > 1:
            log.info(
                "MQTT reconnected to %s; re-subscribing %d filters", self._stats.endpoint, len(subs)
            )
        self._set_will(client, connection + 1)  # sent with the next CONNECT
        for topic_filter, qos in subs.items():
            self._call(self._resubscribe, topic_filter, qos)
        self._call(self._hooks.fire, connection)
        if self._connack is not None:
            self._call(self._connack.set)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._rotate_endpoint(client)

    def _resubscribe(self, topic_filter: str, qos: int) -> None:
        self._send_subscribe(topic_filter, qos)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        with self._lock:
            self._transport_up = False
            self._acked.clear()
            self._stats.endpoint = ""
        if reason_code.value != 0:
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason_code)
            self._rotate_endpoint(client)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        with self._lock:
            fut = self._pending_subacks.pop(mid, None)
        if fut is None:
            return
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self._call(_set_exception, fut, BusError(f"subscription refused: {failed[0]}"))
        else:
            self._call(_set_result, fut)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        raw = RawMessage(
            msg.topic,
            bytes(msg.payload),
            msg.qos,
            bool(msg.retain),
            getattr(props, "MessageExpiryInterval", None),
            getattr(props, "ResponseTopic", None),
            getattr(props, "CorrelationData", None),
        )
        after = None
        if self._manual_ack and msg.qos > 0:
            mid, qos, generation = msg.mid, msg.qos, self._generation

            def after() -> None:
                # paho's ack only queues the PUBACK and wakes its network thread: safe from the
                # event loop. A (deferred) ack is dropped once the connection it came on is gone:
                # the broker re-sends that message under the same packet id, and acking the old
                # copy could acknowledge whatever reuses the id later.
                with self._lock:
                    current = self._generation == generation and self._transport_up
                if current:
                    client.ack(mid, qos)

        found = targets(getattr(props, "SubscriptionIdentifier", None), self._id_filters)
        self._call(self._dispatcher.put, raw, after, found)


_PROTOCOL_HINT = " (a broker without MQTT 5, e.g. amqtt or NATS, needs MQTT_PROTOCOL=3.1.1)"


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    # paho's is_published() raises for a message queued while disconnected (rc NO_CONN) even once
    # it has been sent and acknowledged after the reconnect, so read the flag it maintains.
    with info._condition:
        return bool(info._published)


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _set_exception(fut: asyncio.Future[None], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


async def _stop_network_thread(client: mqtt.Client, thread: threading.Thread | None) -> None:
    """Paho's `loop_stop`, without its race: wait for the network thread to end.

    After a DISCONNECT the thread ends by itself and sets `client._thread = None` on its way
    out; `loop_stop` checks `_thread` and then calls `_thread.join()`, so a thread that ends in
    between makes it raise AttributeError ('NoneType' object has no attribute 'join'; paho 2.2,
    seen in the bus contract tests). The thread object taken beforehand is joined instead.
    """
    client._thread_terminate = True
    if thread is not None and thread is not threading.current_thread():
        await asyncio.to_thread(thread.join)
