"""The OCPP central system: a WebSocket server speaking OCPP 1.6J and 2.0.1 (the `ocpp` library).

A station connects to `ws://host:port/<station id>` offering `ocpp1.6` and/or `ocpp2.0.1`.
Unknown stations (not configured, and `accept_unknown` off) are refused with HTTP 404 before the
WebSocket opens; a station offering no version it is configured for gets HTTP 400. Each
connection gets a `ChargePoint` of its version whose handlers turn OCPP calls into plain calls on
the service state (`EvCharging`).

A frame that is not OCPP (not JSON, not an array, a wrong message type, missing elements)
is answered with a CALLERROR — unique id `-1` when it cannot be read (OCPP-J 2.0.1 §4.2.3),
`FormationViolation` (not JSON, not an RPC array) / `ProtocolError` (unknown message type) in 1.6, `FormatViolation` / `RpcFrameworkError` /
`MessageTypeNotSupported` in 2.0.1 — and counted; a call whose payload fails the action's JSON
schema gets the library's CallError (counted too). None of them ends the connection or the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, MessageType, unpack
from ocpp.routing import on as ocpp_on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from derbus.messages import OcppVersion, format_utc
from ev_charging.charging import EvCharging
from ev_charging.ocpp_model import connector_status, parse_meter_values

log = logging.getLogger(__name__)

SUBPROTOCOLS: dict[str, OcppVersion] = {"ocpp2.0.1": "2.0.1", "ocpp1.6": "1.6"}
"""WebSocket subprotocol → OCPP version, in the server's order of preference."""

F = TypeVar("F", bound=Callable[..., Any])


def on(action: str) -> Callable[[F], F]:
    """The library's `@on(action)` route decorator, typed."""
    return cast(Callable[[F], F], ocpp_on(action))


_CODES_16 = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    "MessageTypeNotSupported": "ProtocolError",
    "RpcFrameworkError": "FormationViolation",
}
"""2.0.1 error codes under their 1.6 names (1.6 spells them differently or lacks them)."""


def frame_error(raw: str | bytes, err: OCPPError) -> tuple[str, str]:
    """The unique id to answer a frame that did not unpack with, and the 2.0.1 error code.

    The id is the frame's own when it can be read (a JSON array whose 2nd element is a
    string), else `-1`.
    """
    unique_id = "-1"
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return unique_id, "RpcFrameworkError"
    if isinstance(data, list) and len(data) > 1 and isinstance(data[1], str) and data[1]:
        unique_id = data[1][:36]
    if isinstance(data, list) and data and data[0] not in (2, 3, 4):
        return unique_id, "MessageTypeNotSupported"
    if err.code == "FormatViolation" and not isinstance(data, list):
        return unique_id, "RpcFrameworkError"
    return unique_id, "RpcFrameworkError" if err.code == "ProtocolError" else err.code


class _Routing:
    """Frame handling shared by both versions: CALLERRORs for bad frames, counted."""

    state: EvCharging
    id: str
    _ocpp_version: str
    _response_queue: asyncio.Queue[Any]

    if TYPE_CHECKING:  # the library's (untyped) ChargePoint provides these

        async def _send(self, message: str) -> None: ...

        async def _handle_call(self, msg: Call) -> None: ...

        async def call(self, payload: Any, suppress: bool = True) -> Any: ...

    async def _status_of(self, payload: Any) -> str:
        """Send a call to the station; its `status`, or the CallError's code."""
        try:
            answer = await self.call(payload, suppress=False)
        except OCPPError as err:
            return f"CallError {err.code}"
        return str(answer.status)

    def _code(self, code: str) -> str:
        return _CODES_16.get(code, code) if self._ocpp_version == "1.6" else code

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Route one frame (replaces the library's, which only logs a frame it cannot read)."""
        try:
            msg = unpack(raw_msg)
        except OCPPError as err:
            unique_id, code = frame_error(raw_msg, err)
            code = self._code(code)
            self.state.count_frame_error(code)
            log.warning("%s: malformed OCPP frame (%s): %.200r", self.id, code, raw_msg)
            await self._send(CallError(unique_id, code, err.description, err.details).to_json())
            return
        if msg.message_type_id == MessageType.Call:
            self.state.metrics.calls.labels(action=str(msg.action)[:64]).inc()
            try:
                await self._handle_call(msg)
            except OCPPError as err:
                code = self._code(err.code)
                self.state.count_frame_error(code)
                log.warning("%s: CallError %s for %s: %s", self.id, code, msg.action, err)
                await self._send(
                    CallError(msg.unique_id, code, err.description, err.details).to_json()
                )
        elif msg.message_type_id in (MessageType.CallResult, MessageType.CallError):
            self._response_queue.put_nowait(msg)


class Csms16(_Routing, ChargePoint16):  # type: ignore[misc]
    """One OCPP 1.6J station, as the central system sees it."""

    def __init__(self, station_id: str, connection: ServerConnection, state: EvCharging) -> None:
        super().__init__(station_id, connection, response_timeout=state.settings.call_timeout_s)
        self.state = state

    @property
    def version(self) -> OcppVersion:
        """OCPP 1.6."""
        return "1.6"

    async def set_charging_profile(self, request: dict[str, Any]) -> str:
        """SetChargingProfile; the station's status (Accepted / Rejected / NotSupported)."""
        return await self._status_of(call16.SetChargingProfile(**request))

    async def clear_charging_profile(self, request: dict[str, Any]) -> str:
        """ClearChargingProfile; the station's status (Accepted / Unknown)."""
        return await self._status_of(call16.ClearChargingProfile(**request))

    def _id_tag_info(self, accepted: bool) -> dict[str, str]:
        return {"status": "Accepted" if accepted else "Invalid"}

    @on("BootNotification")
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **_: Any) -> Any:
        self.state.on_boot(self.id, charge_point_vendor, charge_point_model)
        return result16.BootNotification(
            current_time=format_utc(self.state.now()),
            interval=self.state.settings.heartbeat_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=format_utc(self.state.on_heartbeat(self.id)))

    @on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return result16.Authorize(
            id_tag_info=self._id_tag_info(self.state.authorize(self.id, id_tag))
        )

    @on("StatusNotification")
    async def on_status(self, connector_id: int, status: str, **_: Any) -> Any:
        await self.state.on_status(self.id, connector_id, connector_status(status))
        return result16.StatusNotification()

    @on("MeterValues")
    async def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kw: Any
    ) -> Any:
        tx = kw.get("transaction_id")
        sample = parse_meter_values(meter_value)
        await self.state.on_meter(self.id, connector_id, sample, None if tx is None else str(tx))
        return result16.MeterValues()

    @on("StartTransaction")
    async def on_start(self, connector_id: int, id_tag: str, meter_start: int, **_: Any) -> Any:
        ok, tx = await self.state.start_transaction(
            self.id, connector_id, id_tag, meter_start / 1000
        )
        return result16.StartTransaction(transaction_id=int(tx), id_tag_info=self._id_tag_info(ok))

    @on("StopTransaction")
    async def on_stop(self, meter_stop: int, transaction_id: int, **kw: Any) -> Any:
        conn = self.state.transaction_of(self.id, str(transaction_id))
        if conn is not None and kw.get("transaction_data"):
            sample = parse_meter_values(kw["transaction_data"])
            await self.state.on_meter(self.id, conn.connector_id, sample, str(transaction_id))
        await self.state.stop_transaction(self.id, str(transaction_id), meter_stop / 1000)
        id_tag = kw.get("id_tag")
        if id_tag is None:
            return result16.StopTransaction()
        return result16.StopTransaction(
            id_tag_info=self._id_tag_info(self.state.authorize(self.id, id_tag))
        )


_CHARGING_STATE = {
    "Charging": "Charging",
    "SuspendedEV": "SuspendedEV",
    "SuspendedEVSE": "SuspendedEVSE",
    "EVConnected": "Preparing",
    "Idle": "Preparing",
}
"""2.0.1 chargingState → connector status (2.0.1 StatusNotification only says Occupied)."""


class Csms201(_Routing, ChargePoint201):  # type: ignore[misc]
    """One OCPP 2.0.1 charging station, as the CSMS sees it."""

    def __init__(self, station_id: str, connection: ServerConnection, state: EvCharging) -> None:
        super().__init__(station_id, connection, response_timeout=state.settings.call_timeout_s)
        self.state = state

    @property
    def version(self) -> OcppVersion:
        """OCPP 2.0.1."""
        return "2.0.1"

    async def set_charging_profile(self, request: dict[str, Any]) -> str:
        """SetChargingProfile; the station's status (Accepted / Rejected)."""
        return await self._status_of(call201.SetChargingProfile(**request))

    async def clear_charging_profile(self, request: dict[str, Any]) -> str:
        """ClearChargingProfile; the station's status (Accepted / Unknown)."""
        return await self._status_of(call201.ClearChargingProfile(**request))

    def _token_info(self, id_token: dict[str, Any] | None) -> dict[str, str]:
        token = None if id_token is None else id_token.get("id_token")
        accepted = self.state.authorize(self.id, token)
        return {"status": "Accepted" if accepted else "Invalid"}

    @on("BootNotification")
    def on_boot(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
        self.state.on_boot(
            self.id, str(charging_station.get("vendor_name")), str(charging_station.get("model"))
        )
        return result201.BootNotification(
            current_time=format_utc(self.state.now()),
            interval=self.state.settings.heartbeat_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=format_utc(self.state.on_heartbeat(self.id)))

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return result201.Authorize(id_token_info=self._token_info(id_token))

    @on("StatusNotification")
    async def on_status(self, evse_id: int, connector_status: str, **_: Any) -> Any:
        conn = self.state.connector(self.id, evse_id)
        status = connector_status
        if status == "Occupied" and conn is not None and conn.transaction_id is not None:
            status = conn.status  # the transaction's charging state says more
        await self.state.on_status(self.id, evse_id, _status(status))
        return result201.StatusNotification()

    @on("MeterValues")
    async def on_meter_values(
        self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any
    ) -> Any:
        await self.state.on_meter(self.id, evse_id, parse_meter_values(meter_value))
        return result201.MeterValues()

    @on("TransactionEvent")
    async def on_transaction_event(
        self, event_type: str, transaction_info: dict[str, Any], **kw: Any
    ) -> Any:
        tx = str(transaction_info["transaction_id"])
        evse = kw.get("evse") or {}
        id_token = kw.get("id_token")
        conn = self.state.transaction_of(self.id, tx)
        sample = parse_meter_values(kw.get("meter_value") or [])
        info = None
        if conn is None and event_type != "Ended" and "id" in evse:
            token = None if id_token is None else id_token.get("id_token")
            ok, _ = await self.state.start_transaction(
                self.id, int(evse["id"]), token, sample.e_kwh, tx
            )
            info = {"status": "Accepted" if ok else "Invalid"}
            conn = self.state.transaction_of(self.id, tx)
        elif id_token is not None:
            info = self._token_info(id_token)
        if conn is not None:
            state = transaction_info.get("charging_state")
            if state in _CHARGING_STATE:
                conn.status = _status(_CHARGING_STATE[state])
            await self.state.on_meter(self.id, conn.connector_id, sample, tx)
        if event_type == "Ended":
            await self.state.stop_transaction(self.id, tx, sample.e_kwh)
        return result201.TransactionEvent(id_token_info=info)


def _status(value: str) -> Any:
    return connector_status(value)


class CentralSystem:
    """The WebSocket server of the central system (one per service).

    Args:
        state: the service state the stations' calls go to.
    """

    def __init__(self, state: EvCharging) -> None:
        self.state = state
        self.server: Server | None = None
        self.port: int | None = None

    def _station_id(self, path: str) -> str:
        return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse unknown stations (404) and stations offering none of their versions (400)."""
        station_id = self._station_id(request.path)
        why = self.state.admit(station_id) if station_id else "no station id in the URL"
        if why is not None:
            self.state.count_refused("unknown_station")
            log.warning("refused OCPP connection to %s: %s", request.path[:200], why)
            return connection.respond(HTTPStatus.NOT_FOUND, f"{why}\n")
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        allowed = self.state.stations[station_id].config.protocols
        if not any(SUBPROTOCOLS.get(p) in allowed for p in offered):
            self.state.count_refused("protocol")
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"station {station_id} may speak OCPP {', '.join(allowed)}; offered {offered}\n",
            )
        return None

    def _select(self, connection: ServerConnection, offered: Any) -> Any:
        station_id = self._station_id(connection.request.path if connection.request else "")
        station = self.state.stations.get(station_id)
        allowed = station.config.protocols if station else ()
        for name, version in SUBPROTOCOLS.items():
            if name in offered and version in allowed:
                return name
        return None

    async def _handler(self, connection: ServerConnection) -> None:
        """One station connection: its ChargePoint runs until the socket closes."""
        path = connection.request.path if connection.request else ""
        station_id = self._station_id(path)
        version = SUBPROTOCOLS.get(connection.subprotocol or "")
        if version is None:
            await connection.close(1002, "no OCPP subprotocol")
            return
        cls = Csms16 if version == "1.6" else Csms201
        cp = cls(station_id, connection, self.state)
        await self.state.on_connect(station_id, cp)
        try:
            await cp.start()
        except ConnectionClosed:
            log.info("station %s disconnected", station_id)
        finally:
            await self.state.on_disconnect(station_id, cp)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); returns the port."""
        self.server = await serve(
            self._handler,
            host,
            port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=self._process_request,
            select_subprotocol=self._select,
            max_size=self.state.settings.max_frame_bytes,
            ping_interval=30,
            ping_timeout=30,
        )
        sock = next(iter(self.server.sockets))
        self.port = int(sock.getsockname()[1])
        log.info("OCPP central system on ws://%s:%d/<station id>", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Close every station connection and stop listening."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5.0)
            self.server = None
