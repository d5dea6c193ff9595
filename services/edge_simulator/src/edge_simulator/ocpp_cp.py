"""Simulated OCPP charge points (1.6J and 2.0.1, the `ocpp` library's client side) with an EV.

Each `SimChargePoint` is one charging station with one connector and a simulated vehicle. It
connects to a central system at `<url>/<station id>`, boots, sends heartbeats and, while a
vehicle is plugged in, charges it at `min(vehicle max, connector max, profile limit)` and
reports MeterValues (1.6) / TransactionEvent Updated (2.0.1) every `meter_interval_s` and at
once when its charging rate changes. It takes SetChargingProfile (an Absolute TxProfile in W or
A, with an optional duration after which it reverts by itself) and ClearChargingProfile.

`OcppChargePoints` runs one per simulated site (station id `<prefix><site id>`); the edge
simulator starts it when `EDGE_SIMULATOR_OCPP_URL` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
from ocpp.routing import on as ocpp_on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from derbus.messages import format_utc

log = logging.getLogger(__name__)

Version = Literal["1.6", "2.0.1"]
SUBPROTOCOL: dict[Version, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
VOLTS_PER_AMP_KW = 0.23
"""kW per ampere of a schedule in A (single phase, 230 V)."""

F = TypeVar("F", bound=Callable[..., Any])


def on(action: str) -> Callable[[F], F]:
    """The library's `@on(action)` route decorator, typed."""
    return cast(Callable[[F], F], ocpp_on(action))


class OcppSimSettings(BaseSettings):
    """The simulator's charge points (`EDGE_SIMULATOR_OCPP_*`); off unless `url` is set."""

    model_config = SettingsConfigDict(env_prefix="EDGE_SIMULATOR_OCPP_", extra="ignore")

    url: str | None = Field(
        default=None, description="central system URL (ws://host:port); unset = no charge points"
    )
    version: Version = Field(default="1.6", description="OCPP version the charge points speak")
    station_prefix: str = Field(default="sim-", description="station id = prefix + site id")
    id_token: str = Field(default="SIM-TAG", description="id token the simulated driver shows")
    meter_interval_s: float = Field(default=10.0, gt=0, description="MeterValues interval, s")
    max_kw: float = Field(default=11.0, gt=0, description="connector rating, kW")
    ev_battery_kwh: float = Field(default=60.0, gt=0, description="vehicle battery, kWh")
    ev_max_kw: float = Field(default=11.0, gt=0, description="vehicle on-board charger, kW")
    ev_soc_pct: float = Field(default=30.0, ge=0, le=100, description="SoC at plug-in, %")
    plug_in: bool = Field(default=True, description="a vehicle plugs in once the station booted")
    retry_s: float = Field(
        default=600.0, ge=0, description="how long a station keeps trying to connect, s"
    )


def profile_limit_kw(version: Version, request: dict[str, Any], now: datetime) -> float | None:
    """The limit a snake_case SetChargingProfile request sets at `now`, kW (None: none now)."""
    schedule = _schedule(version, request)
    start = schedule.get("start_schedule")
    begin = datetime.fromisoformat(start.replace("Z", "+00:00")) if start else now
    elapsed_s = (now - begin).total_seconds()
    duration = schedule.get("duration")
    if elapsed_s < 0 or (duration is not None and elapsed_s >= duration):
        return None
    limit = None
    for period in sorted(schedule["charging_schedule_period"], key=lambda p: p["start_period"]):
        if period["start_period"] <= elapsed_s:
            limit = float(period["limit"])
    if limit is None:
        return None
    return limit / 1000.0 if schedule["charging_rate_unit"] == "W" else limit * VOLTS_PER_AMP_KW


def profile_end(version: Version, request: dict[str, Any]) -> datetime | None:
    """When a SetChargingProfile request's schedule ends (None: open-ended)."""
    schedule = _schedule(version, request)
    start, duration = schedule.get("start_schedule"), schedule.get("duration")
    if start is None or duration is None:
        return None
    return datetime.fromisoformat(start.replace("Z", "+00:00")) + timedelta(seconds=duration)


def _schedule(version: Version, request: dict[str, Any]) -> dict[str, Any]:
    if version == "1.6":
        return cast(dict[str, Any], request["cs_charging_profiles"]["charging_schedule"])
    return cast(dict[str, Any], request["charging_profile"]["charging_schedule"][0])


def _profile_of(version: Version, request: dict[str, Any]) -> tuple[int, str | None]:
    """(profile id, transaction id) of a SetChargingProfile request."""
    if version == "1.6":
        p = request["cs_charging_profiles"]
        tx = p.get("transaction_id")
        return int(p["charging_profile_id"]), None if tx is None else str(tx)
    p = request["charging_profile"]
    return int(p["id"]), p.get("transaction_id")


@dataclass
class ProfileEvent:
    """A charging profile call the charge point received (for tests and the bench)."""

    received_s: float
    """`time.time()` at receipt (wall clock, comparable across processes of one machine)."""
    call: Literal["set", "clear"]
    limit_kw: float | None
    accepted: bool


@dataclass
class EvState:
    """The simulated vehicle and connector (pure: `step` takes the elapsed time)."""

    max_kw: float
    ev_max_kw: float
    battery_kwh: float
    soc_pct: float
    plugged: bool = False
    transaction_id: str | None = None
    register_wh: float = 0.0
    limit_kw: float | None = None
    profile_id: int | None = None
    profile_end: datetime | None = None

    def p_kw(self) -> float:
        """Power drawn now, kW (+ charging)."""
        if self.transaction_id is None or self.soc_pct >= 100.0:
            return 0.0
        p = min(self.max_kw, self.ev_max_kw)
        return max(0.0, p if self.limit_kw is None else min(p, self.limit_kw))

    def step(self, dt_s: float, now: datetime) -> None:
        """Charge for `dt_s` seconds; a profile past its end lapses first."""
        if self.profile_end is not None and now >= self.profile_end:
            self.limit_kw, self.profile_id, self.profile_end = None, None, None
        e_kwh = self.p_kw() * dt_s / 3600.0
        self.register_wh += e_kwh * 1000.0
        self.soc_pct = min(100.0, self.soc_pct + 100.0 * e_kwh / self.battery_kwh)


class _Client:
    """Handlers both versions share, on a `SimChargePoint`."""

    sim: SimChargePoint

    def _set(self, version: Version, request: dict[str, Any]) -> bool:
        received = time.time()
        pid, tx = _profile_of(version, request)
        ev = self.sim.ev
        purpose = (
            request["cs_charging_profiles"] if version == "1.6" else request["charging_profile"]
        )["charging_profile_purpose"]
        ok = purpose == "TxProfile" and ev.transaction_id is not None and tx == ev.transaction_id
        limit = profile_limit_kw(version, request, self.sim.now()) if ok else None
        if ok:
            ev.limit_kw, ev.profile_id = limit, pid
            ev.profile_end = profile_end(version, request)
            self.sim.rate_changed()
        self.sim.profiles.append(ProfileEvent(received, "set", limit, ok))
        return ok

    def _clear(self, profile_id: int | None) -> bool:
        ev = self.sim.ev
        known = ev.profile_id is not None and profile_id in (None, ev.profile_id)
        self.sim.profiles.append(ProfileEvent(time.time(), "clear", None, known))
        if known:
            ev.limit_kw, ev.profile_id, ev.profile_end = None, None, None
            self.sim.rate_changed()
        return known


class Client16(_Client, ChargePoint16):  # type: ignore[misc]
    """The charge point's OCPP 1.6J side."""

    @on("SetChargingProfile")
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        request = {"connector_id": connector_id, "cs_charging_profiles": cs_charging_profiles}
        ok = self._set("1.6", request)
        return result16.SetChargingProfile(status="Accepted" if ok else "Rejected")

    @on("ClearChargingProfile")
    def on_clear_profile(self, **kw: Any) -> Any:
        ok = self._clear(kw.get("id"))
        return result16.ClearChargingProfile(status="Accepted" if ok else "Unknown")


class Client201(_Client, ChargePoint201):  # type: ignore[misc]
    """The charging station's OCPP 2.0.1 side."""

    @on("SetChargingProfile")
    def on_set_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        ok = self._set("2.0.1", {"evse_id": evse_id, "charging_profile": charging_profile})
        return result201.SetChargingProfile(status="Accepted" if ok else "Rejected")

    @on("ClearChargingProfile")
    def on_clear_profile(self, **kw: Any) -> Any:
        ok = self._clear(kw.get("charging_profile_id"))
        return result201.ClearChargingProfile(status="Accepted" if ok else "Unknown")


@dataclass
class SimChargePoint:
    """One simulated charging station with one connector and a vehicle.

    Args:
        station_id: OCPP identity (the last URL level).
        url: the central system, `ws://host:port`.
        version: OCPP version.
        settings: ratings, vehicle, id token, intervals.
        clock: the current time, UTC.
    """

    station_id: str
    url: str
    version: Version
    settings: OcppSimSettings
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    ev: EvState = field(init=False)
    profiles: list[ProfileEvent] = field(default_factory=list, init=False)
    booted: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    refused: str | None = field(default=None, init=False)
    cp: Any = field(default=None, init=False)
    _ws: ClientConnection | None = field(default=None, init=False)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list, init=False)
    _last_step: float = field(default=0.0, init=False)
    _seq_no: int = field(default=0, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.ev = EvState(s.max_kw, s.ev_max_kw, s.ev_battery_kwh, s.ev_soc_pct)

    def now(self) -> datetime:
        """The current time, UTC."""
        return self.clock()

    # --- connection ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the WebSocket, start the OCPP loop and boot (raises InvalidStatus when refused)."""
        try:
            self._ws = await connect(
                f"{self.url.rstrip('/')}/{self.station_id}",
                subprotocols=[SUBPROTOCOL[self.version]],  # type: ignore[list-item]
                open_timeout=10,
            )
        except InvalidStatus as err:
            self.refused = f"HTTP {err.response.status_code}"
            raise
        cls = Client16 if self.version == "1.6" else Client201
        self.cp = cls(self.station_id, self._ws, response_timeout=10)
        self.cp.sim = self
        self._tasks.append(asyncio.create_task(self._serve(), name=f"ocpp:{self.station_id}"))
        await self.boot()
        self._last_step = time.monotonic()
        self._tasks.append(asyncio.create_task(self._meter_loop(), name=f"meter:{self.station_id}"))

    async def _serve(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.cp.start()

    async def close(self) -> None:
        """Stop the loops and close the WebSocket."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task
        self._tasks.clear()
        if self._ws is not None:
            await self._ws.close()

    async def send_raw(self, frame: str) -> None:
        """Send a raw text frame (tests: malformed OCPP)."""
        assert self._ws is not None
        await self._ws.send(frame)

    # --- OCPP calls ----------------------------------------------------------------------------
    async def boot(self) -> None:
        """BootNotification, then the connector's status."""
        if self.version == "1.6":
            answer = await self.cp.call(
                call16.BootNotification(
                    charge_point_model="derbus-sim", charge_point_vendor="derbus"
                )
            )
        else:
            answer = await self.cp.call(
                call201.BootNotification(
                    charging_station={"model": "derbus-sim", "vendor_name": "derbus"},
                    reason="PowerUp",
                )
            )
        if answer is not None and answer.status == "Accepted":
            self.booted.set()
        await self.status("Available")

    async def heartbeat(self) -> str:
        """Heartbeat; the central system's time."""
        call = call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat()
        answer = await self.cp.call(call)
        return str(answer.current_time)

    async def status(self, status: str) -> None:
        """StatusNotification of connector 1 (2.0.1: Available / Occupied)."""
        if self.version == "1.6":
            await self.cp.call(
                call16.StatusNotification(connector_id=1, error_code="NoError", status=status)
            )
        else:
            connector = "Available" if status == "Available" else "Occupied"
            await self.cp.call(
                call201.StatusNotification(
                    timestamp=format_utc(self.now()),
                    connector_status=connector,
                    evse_id=1,
                    connector_id=1,
                )
            )

    async def authorize(self, id_token: str) -> bool:
        """Authorize an id token at the central system."""
        if self.version == "1.6":
            answer = await self.cp.call(call16.Authorize(id_tag=id_token))
            return bool(answer.id_tag_info["status"] == "Accepted")
        answer = await self.cp.call(
            call201.Authorize(id_token={"id_token": id_token, "type": "ISO14443"})
        )
        return bool(answer.id_token_info["status"] == "Accepted")

    async def plug_in(self, id_token: str | None = None, soc_pct: float | None = None) -> bool:
        """A vehicle plugs in and the driver shows a token; True when charging started."""
        token = id_token or self.settings.id_token
        self._step()
        if soc_pct is not None:
            self.ev.soc_pct = soc_pct
        self.ev.plugged = True
        await self.status("Preparing")
        if not await self.authorize(token):
            return False
        now = format_utc(self.now())
        if self.version == "1.6":
            answer = await self.cp.call(
                call16.StartTransaction(
                    connector_id=1,
                    id_tag=token,
                    meter_start=int(self.ev.register_wh),
                    timestamp=now,
                )
            )
            if answer.id_tag_info["status"] != "Accepted":
                return False
            self.ev.transaction_id = str(answer.transaction_id)
            await self.status("Charging")
        else:
            tx = f"{self.station_id}-{int(time.time() * 1000)}"
            self.ev.transaction_id = tx
            answer = await self._transaction_event("Started", "Authorized", token)
            if answer.id_token_info is None or answer.id_token_info["status"] != "Accepted":
                self.ev.transaction_id = None
                return False
            await self.status("Charging")
        self._last_step = time.monotonic()
        return True

    async def unplug(self) -> None:
        """The transaction ends and the vehicle leaves."""
        self._step()
        if self.ev.transaction_id is not None:
            if self.version == "1.6":
                await self.cp.call(
                    call16.StopTransaction(
                        meter_stop=int(self.ev.register_wh),
                        timestamp=format_utc(self.now()),
                        transaction_id=int(self.ev.transaction_id),
                        reason="EVDisconnected",
                    )
                )
            else:
                await self._transaction_event("Ended", "EVDeparted")
        self.ev.transaction_id, self.ev.plugged = None, False
        self.ev.limit_kw = self.ev.profile_id = self.ev.profile_end = None
        await self.status("Available")

    def _sampled(self) -> list[dict[str, Any]]:
        p_w, e_wh, soc = self.ev.p_kw() * 1000.0, self.ev.register_wh, self.ev.soc_pct
        values: list[dict[str, Any]]
        if self.version == "1.6":
            values = [
                {"value": f"{p_w:.1f}", "measurand": "Power.Active.Import", "unit": "W"},
                {
                    "value": f"{e_wh:.1f}",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                },
                {"value": f"{soc:.1f}", "measurand": "SoC", "unit": "Percent"},
            ]
        else:
            values = [
                {
                    "value": round(p_w, 1),
                    "measurand": "Power.Active.Import",
                    "unit_of_measure": {"unit": "W"},
                },
                {
                    "value": round(e_wh, 1),
                    "measurand": "Energy.Active.Import.Register",
                    "unit_of_measure": {"unit": "Wh"},
                },
                {
                    "value": round(soc, 1),
                    "measurand": "SoC",
                    "unit_of_measure": {"unit": "Percent"},
                },
            ]
        return [{"timestamp": format_utc(self.now()), "sampled_value": values}]

    async def _transaction_event(
        self, event: str, trigger: str, id_token: str | None = None
    ) -> Any:
        self._seq_no += 1
        charging = "Charging" if self.ev.p_kw() > 0 else "SuspendedEV"
        return await self.cp.call(
            call201.TransactionEvent(
                event_type=event,
                timestamp=format_utc(self.now()),
                trigger_reason=trigger,
                seq_no=self._seq_no,
                transaction_info={
                    "transaction_id": self.ev.transaction_id,
                    "charging_state": charging,
                },
                meter_value=self._sampled(),
                evse={"id": 1, "connector_id": 1} if event == "Started" else None,
                id_token=None if id_token is None else {"id_token": id_token, "type": "ISO14443"},
            )
        )

    async def meter_values(self, trigger: str = "MeterValuePeriodic") -> None:
        """Report power, energy register and SoC now."""
        self._step()
        if self.version == "1.6":
            tx = self.ev.transaction_id
            await self.cp.call(
                call16.MeterValues(
                    connector_id=1,
                    meter_value=self._sampled(),
                    transaction_id=None if tx is None else int(tx),
                )
            )
        elif self.ev.transaction_id is not None:
            await self._transaction_event("Updated", trigger)
        else:
            await self.cp.call(call201.MeterValues(evse_id=1, meter_value=self._sampled()))

    def rate_changed(self) -> None:
        """A profile changed the rate: report at once (from the meter loop, not the handler)."""
        self._wake.set()

    def _step(self) -> None:
        mono = time.monotonic()
        self.ev.step(max(0.0, mono - self._last_step), self.now())
        self._last_step = mono

    async def _meter_loop(self) -> None:
        interval = self.settings.meter_interval_s
        next_hb = time.monotonic() + 60.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            changed = self._wake.is_set()
            self._wake.clear()
            try:
                await self.meter_values("ChargingRateChanged" if changed else "MeterValuePeriodic")
                if time.monotonic() >= next_hb:
                    await self.heartbeat()
                    next_hb = time.monotonic() + 60.0
            except TimeoutError:
                log.warning("%s: the central system did not answer", self.station_id)


@dataclass
class OcppChargePoints:
    """One simulated charge point per site, connected to one central system."""

    settings: OcppSimSettings
    points: dict[str, SimChargePoint] = field(default_factory=dict)
    _retries: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    async def start(self, site_ids: list[str]) -> None:
        """Connect a charge point for each site (and plug a vehicle in when configured).

        A station the central system does not answer yet (it starts after the simulator) keeps
        trying in the background, like a real one, every 1, 2, 4 … 10 s for `retry_s`; a
        refusal (HTTP 4xx: unknown station) is final.
        """
        assert self.settings.url is not None
        for site_id in site_ids:
            station = f"{self.settings.station_prefix}{site_id}"
            point = SimChargePoint(station, self.settings.url, self.settings.version, self.settings)
            try:
                await self._connect(site_id, point)
            except InvalidStatus as err:
                log.error("charge point %s refused: %s", station, err)
            except OSError as err:
                log.warning("charge point %s could not connect (%s): retrying", station, err)
                task = asyncio.create_task(self._retry(site_id, point), name=f"retry:{station}")
                self._retries.append(task)

    async def _connect(self, site_id: str, point: SimChargePoint) -> None:
        await point.connect()
        self.points[site_id] = point
        if self.settings.plug_in:
            await point.plug_in()

    async def _retry(self, site_id: str, point: SimChargePoint) -> None:
        deadline = time.monotonic() + self.settings.retry_s
        delay = 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                await self._connect(site_id, point)
            except InvalidStatus as err:
                log.error("charge point %s refused: %s", point.station_id, err)
                return
            except OSError:
                delay = min(delay * 2, 10.0)
                continue
            log.info("charge point %s connected", point.station_id)
            return
        log.error("charge point %s gave up after %.0f s", point.station_id, self.settings.retry_s)

    def load_kw(self, site_ids: Sequence[str]) -> npt.NDArray[np.float64]:
        """What each site's charge point draws now, kW (0 without one): part of its PCC power."""
        return np.array(
            [p.ev.p_kw() if (p := self.points.get(s)) is not None else 0.0 for s in site_ids]
        )

    async def stop(self) -> None:
        """Close every charge point."""
        for task in self._retries:
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)
        self._retries.clear()
        for point in self.points.values():
            await point.close()
        self.points.clear()
