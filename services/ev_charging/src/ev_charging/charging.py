"""The service's state: stations and connectors, setpoints as charging profiles, sessions, prices.

`EvCharging` is what ev_charging remembers and decides. The OCPP side (`ev_charging.csms`) calls
its `on_*` methods with plain values and gives each connected station a `StationLink`; the bus
side hands it setpoints (it is the `SetpointReceiver` of `serve_setpoints`), meter readings,
forecasts and price series. It publishes connector telemetry, setpoint acks and sessions through
the service.

Setpoints: target `ev_limit_kw` on a connector's device (`<station>-<connector>`), one
`SetpointArbiter` per connector. The limit applied is the smaller of the live setpoint and the
session's smart-charging plan; while a transaction runs it is sent as an Absolute TxProfile that
lasts the setpoint's TTL, so the station reverts by itself even when the central system is gone,
and is cleared (ClearChargingProfile) when the TTL lapses. A command that would be in force during
a transaction is acknowledged after the station answered: `rejected` (nothing changes) when the
station refuses the profile or does not answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from prometheus_client import Counter, Gauge

from derbus import topics
from derbus.messages import (
    ChargingMode,
    ConnectorStatus,
    EvChargerTelemetry,
    EvSession,
    EvSessionKpis,
    MeterReading,
    OcppVersion,
    PriceSeries,
    SetpointAck,
    SetpointCommand,
    SetpointTarget,
    TimeSeries,
)
from derbus.service import Service
from derbus.setpoint_receiver import done
from derbus.setpoints import SetpointArbiter, TargetLimits
from derbus.tariff import PriceBook, SitePrices
from ev_charging.ocpp_model import MeterSample, clear_profile, tx_profile
from ev_charging.planner import Plan, PlanInput, SessionMeter, plan_session
from ev_charging.prices import PriceFeed, PriceSourceError, read_source
from ev_charging.settings import Settings, StationConfig

log = logging.getLogger(__name__)

NAME = "ev_charging"
TARGET: SetpointTarget = "ev_limit_kw"


class StationLink(Protocol):
    """A connected station, as the state needs it (the OCPP side implements it)."""

    @property
    def version(self) -> OcppVersion:
        """The OCPP version the station speaks."""
        ...

    async def set_charging_profile(self, request: dict[str, Any]) -> str:
        """Send SetChargingProfile (snake_case request); returns the station's status."""
        ...

    async def clear_charging_profile(self, request: dict[str, Any]) -> str:
        """Send ClearChargingProfile (snake_case request); returns the station's status."""
        ...


def device_id_of(station_id: str, connector_id: int) -> str:
    """The bus device id of a connector."""
    return f"{station_id}-{connector_id}"


@dataclass
class SessionState:
    """A running (or just ended) charging session of one connector."""

    session_id: str
    started: datetime
    mode: ChargingMode
    departure: datetime
    energy_need_kwh: float
    need_source: str
    meter: SessionMeter = field(default_factory=SessionMeter)
    plan: Plan | None = None
    plan_start: datetime | None = None
    last_e_kwh: float | None = None
    last_ts: datetime | None = None
    ended: datetime | None = None


@dataclass
class Connector:
    """One connector (1.6) / EVSE (2.0.1) of a station."""

    station_id: str
    connector_id: int
    config: StationConfig
    arbiter: SetpointArbiter
    status: ConnectorStatus = "Unavailable"
    p_kw: float = 0.0
    e_total_kwh: float | None = None
    e_start_kwh: float | None = None
    soc_pct: float | None = None
    transaction_id: str | None = None
    limit_kw: float | None = None
    """What the station accepted last (None: no profile of ours)."""
    session: SessionState | None = None
    apply_pending: bool = False
    """A transaction started: its limit goes out with the station's next message about it
    (a 1.6 station learns its transaction id only from our answer, so a profile sent at once
    could arrive before it knows the transaction)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def device_id(self) -> str:
        """The bus device id."""
        return device_id_of(self.station_id, self.connector_id)


@dataclass
class Station:
    """A station the central system knows (configured, or accepted unknown)."""

    station_id: str
    config: StationConfig
    connectors: dict[int, Connector]
    link: StationLink | None = None
    version: OcppVersion | None = None
    booted: bool = False
    vendor: str | None = None
    model: str | None = None
    last_seen: datetime | None = None


class OcppMetrics:
    """Prometheus metrics of the OCPP side, on the service's registry."""

    def __init__(self, service: Service[Any, Any]) -> None:
        registry = service.metrics.registry
        self.frames_rejected = Counter(
            "derbus_ev_charging_frames_rejected_total",
            "OCPP frames answered with a CallError (malformed, invalid payload, unknown action)",
            ["code"],
            registry=registry,
        )
        self.calls = Counter(
            "derbus_ev_charging_calls_total", "OCPP calls received", ["action"], registry=registry
        )
        self.refused = Counter(
            "derbus_ev_charging_connections_refused_total",
            "WebSocket connections refused (unknown station, protocol)",
            ["reason"],
            registry=registry,
        )
        self.connected = Gauge(
            "derbus_ev_charging_stations_connected", "Stations connected now", registry=registry
        )
        self.profiles = Counter(
            "derbus_ev_charging_profiles_total",
            "Charging profile calls sent, by answer",
            ["call", "status"],
            registry=registry,
        )


class EvCharging:
    """Stations, connectors, sessions and prices of the ev_charging service.

    Args:
        service: the service (settings, bus publishing, metrics).
        clock: the current time, UTC.
    """

    def __init__(self, service: Service[Settings, Any], clock: Callable[[], datetime]) -> None:
        self.service = service
        self.clock = clock
        self.metrics = OcppMetrics(service)
        self.stations: dict[str, Station] = {}
        self.frames_rejected: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.pcc_kw: dict[str, float] = {}
        self.forecasts: dict[tuple[str, str], TimeSeries] = {}
        self.prices = PriceBook()
        self.sessions_done: list[EvSession] = []
        self._tx_ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.price_feed = PriceFeed(list(self.settings.price_sources))
        self.http: httpx.AsyncClient | None = None
        self.csms: Any = None
        """The WebSocket server (`ev_charging.csms.CentralSystem`), set by build_service."""
        for station_id, config in self.settings.stations.items():
            self._add_station(station_id, config)

    @property
    def settings(self) -> Settings:
        """The current settings."""
        return self.service.settings

    @property
    def source(self) -> str:
        """Written as `source` in acks and telemetry."""
        return NAME

    def now(self) -> datetime:
        """The current time, UTC."""
        return self.clock()

    # --- stations ------------------------------------------------------------------------------
    def _add_station(self, station_id: str, config: StationConfig) -> Station:
        limits = {TARGET: TargetLimits(0.0, config.max_kw)}
        connectors = {
            n: Connector(station_id, n, config, SetpointArbiter(NAME, dict(limits)))
            for n in range(1, config.connectors + 1)
        }
        station = self.stations[station_id] = Station(station_id, config, connectors)
        return station

    def admit(self, station_id: str) -> str | None:
        """Why a station may not connect (None: it may). Unknown ones are added when accepted."""
        if station_id in self.stations:
            return None
        if not self.settings.accept_unknown:
            return f"unknown station {station_id!r}"
        try:
            topics.validate_id("station id", station_id)
        except ValueError as err:
            return str(err)
        config = StationConfig(
            site_id=self.settings.unknown_site_id,
            id_token_policy=self.settings.unknown_id_token_policy,
            id_tokens=self.settings.unknown_id_tokens
            or (("*",) if self.settings.unknown_id_token_policy == "allow_list" else ()),  # noqa: S105
        )
        self._add_station(station_id, config)
        return None

    def count_refused(self, reason: str) -> None:
        """A connection refused before OCPP (unknown station, no common protocol)."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.metrics.refused.labels(reason=reason).inc()

    def count_frame_error(self, code: str) -> None:
        """A frame answered with a CallError of `code`."""
        self.frames_rejected[code] = self.frames_rejected.get(code, 0) + 1
        self.metrics.frames_rejected.labels(code=code).inc()

    def connected(self) -> int:
        """Stations connected now."""
        return sum(1 for s in self.stations.values() if s.link is not None)

    def find_session(self, device_id: str, site_id: str | None) -> Connector | None:
        """The connector of a device id (on `site_id` if given) with a running session."""
        for conn in self._connectors(site_id):
            if conn.device_id == device_id and conn.session is not None:
                return conn
        return None

    def connector(self, station_id: str, connector_id: int) -> Connector | None:
        """A connector, None when the station or the connector is unknown."""
        station = self.stations.get(station_id)
        return station.connectors.get(connector_id) if station else None

    def _connectors(self, site_id: str | None = None) -> Iterable[Connector]:
        for station in self.stations.values():
            if site_id is None or station.config.site_id == site_id:
                yield from station.connectors.values()

    async def on_connect(self, station_id: str, link: StationLink) -> None:
        """A station's WebSocket is up (before its BootNotification)."""
        station = self.stations[station_id]
        station.link, station.version = link, link.version
        station.last_seen = self.now()
        self.metrics.connected.set(self.connected())

    async def on_disconnect(self, station_id: str, link: StationLink) -> None:
        """A station's WebSocket closed: its connectors are `Offline` until it is back."""
        station = self.stations.get(station_id)
        if station is None or station.link is not link:
            return  # a newer connection of the same station took over
        station.link, station.booted = None, False
        self.metrics.connected.set(self.connected())
        for conn in station.connectors.values():
            conn.limit_kw = None
            await self.publish_connector(conn)

    def on_boot(self, station_id: str, vendor: str, model: str) -> bool:
        """BootNotification: accepted for a known (admitted) station."""
        station = self.stations[station_id]
        station.booted, station.vendor, station.model = True, vendor, model
        station.last_seen = self.now()
        return True

    def on_heartbeat(self, station_id: str) -> datetime:
        """Heartbeat: the central system's time."""
        now = self.now()
        self.stations[station_id].last_seen = now
        return now

    def authorize(self, station_id: str, id_token: str | None) -> bool:
        """The station's id-token policy on a token (None: no token given)."""
        config = self.stations[station_id].config
        if config.id_token_policy == "accept_any":  # noqa: S105
            return True
        return id_token is not None and (id_token in config.id_tokens or "*" in config.id_tokens)

    async def on_status(self, station_id: str, connector_id: int, status: ConnectorStatus) -> None:
        """StatusNotification of a connector (connector 0, the station itself, is ignored)."""
        conn = self.connector(station_id, connector_id)
        if conn is None:
            return
        conn.status = status
        if status == "Available" and conn.transaction_id is None:
            conn.p_kw = 0.0
        self._apply_if_pending(conn)
        await self.publish_connector(conn)

    async def on_meter(
        self, station_id: str, connector_id: int, sample: MeterSample, tx_id: str | None = None
    ) -> None:
        """MeterValues (or the meter values of a TransactionEvent) of a connector."""
        conn = self.connector(station_id, connector_id)
        if conn is None:
            return
        now = self.now()
        if sample.p_kw is not None:
            conn.p_kw = sample.p_kw
        if sample.soc_pct is not None:
            conn.soc_pct = sample.soc_pct
        if sample.e_kwh is not None:
            conn.e_total_kwh = sample.e_kwh
            if conn.e_start_kwh is None and conn.transaction_id is not None:
                conn.e_start_kwh = sample.e_kwh
        self._book_energy(conn, now)
        self._apply_if_pending(conn)
        await self.publish_connector(conn)

    def _apply_if_pending(self, conn: Connector) -> None:
        if conn.apply_pending and conn.transaction_id is not None:
            conn.apply_pending = False
            self.spawn(self.apply(conn))

    def _book_energy(self, conn: Connector, now: datetime) -> None:
        session = conn.session
        if session is None or session.ended is not None:
            return
        if conn.e_total_kwh is not None and session.last_e_kwh is not None:
            delta = conn.e_total_kwh - session.last_e_kwh
        elif session.last_ts is not None:
            delta = conn.p_kw * (now - session.last_ts).total_seconds() / 3600.0
        else:
            delta = 0.0
        site = conn.config.site_id
        site_ev_kw = sum(c.p_kw for c in self._connectors(site) if c.transaction_id)
        session.meter.add(delta, self.pcc_kw.get(site), site_ev_kw, self.import_price(site, now))
        session.last_e_kwh = conn.e_total_kwh
        session.last_ts = now

    # --- transactions --------------------------------------------------------------------------
    async def start_transaction(
        self,
        station_id: str,
        connector_id: int,
        id_token: str | None,
        meter_start_kwh: float | None,
        tx_id: str | None = None,
    ) -> tuple[bool, str]:
        """A transaction starts (1.6 StartTransaction; 2.0.1 TransactionEvent Started).

        Returns:
            (the id token is accepted, the transaction id: `tx_id` for 2.0.1, ours for 1.6).
        """
        accepted = self.authorize(station_id, id_token)
        tx = tx_id if tx_id is not None else str(next(self._tx_ids))
        conn = self.connector(station_id, connector_id)
        if conn is None or not accepted:
            return False, tx
        now = self.now()
        conn.transaction_id = tx
        conn.e_start_kwh = meter_start_kwh
        if meter_start_kwh is not None:
            conn.e_total_kwh = meter_start_kwh
        mode = conn.config.mode or self.settings.default_mode
        conn.session = SessionState(
            session_id=f"{conn.device_id}-{tx}-{next(self._session_ids)}",
            started=now,
            mode=mode,
            departure=now + timedelta(hours=self.settings.default_dwell_h),
            energy_need_kwh=self.settings.default_energy_need_kwh,
            need_source="default",
            last_e_kwh=meter_start_kwh,
            last_ts=now,
        )
        self.replan(conn, now)
        await self.publish_connector(conn)
        await self.publish_session(conn)
        conn.apply_pending = True
        return True, tx

    async def stop_transaction(
        self, station_id: str, tx_id: str, meter_stop_kwh: float | None
    ) -> None:
        """A transaction ends (1.6 StopTransaction; 2.0.1 TransactionEvent Ended)."""
        station = self.stations.get(station_id)
        if station is None:
            return
        for conn in station.connectors.values():
            if conn.transaction_id != tx_id:
                continue
            if meter_stop_kwh is not None:
                conn.e_total_kwh = meter_stop_kwh
            now = self.now()
            self._book_energy(conn, now)
            if conn.session is not None:
                conn.session.ended = now
                await self.publish_session(conn)
                self.sessions_done.append(self.session_message(conn, conn.session))
                del self.sessions_done[:-200]
            conn.transaction_id, conn.session, conn.e_start_kwh = None, None, None
            conn.p_kw, conn.limit_kw, conn.apply_pending = 0.0, None, False
            await self.publish_connector(conn)

    def transaction_of(self, station_id: str, tx_id: str) -> Connector | None:
        """The connector running a transaction."""
        station = self.stations.get(station_id)
        if station is None:
            return None
        return next((c for c in station.connectors.values() if c.transaction_id == tx_id), None)

    # --- setpoints (the SetpointReceiver of serve_setpoints) -----------------------------------
    def sites(self) -> Iterable[str]:
        """The sites with stations."""
        return sorted({s.config.site_id for s in self.stations.values()})

    def devices(self, site_id: str) -> Collection[str] | None:
        """The connector device ids of a site (None: no station there)."""
        found = [c.device_id for c in self._connectors(site_id)]
        return found or None

    def by_device(self, site_id: str, device_id: str) -> Connector:
        """The connector of a device id on a site (KeyError when none)."""
        for conn in self._connectors(site_id):
            if conn.device_id == device_id:
                return conn
        raise KeyError(device_id)

    async def submit(
        self, site_id: str, device_id: str, cmd: SetpointCommand
    ) -> asyncio.Future[SetpointAck]:
        """A valid setpoint for a connector: the contract, and the station when it charges."""
        conn = self.by_device(site_id, device_id)
        async with conn.lock:
            now = self.now()
            arb = conn.arbiter
            reason = arb.check(cmd, now)
            if reason is None and arb.holder(cmd, now) is None and self._charging_link(conn):
                limit = self._combined(cmd.value, self._plan_kw(conn, now))
                status = await self._send_limit(conn, limit, cmd.expires_at, now)
                if status != "Accepted":
                    reason = f"station {conn.station_id} refused the charging profile: {status}"
            if reason is not None:
                ack = arb.reject(cmd, self.now(), reason)
                await self.publish_acks(site_id, device_id, [ack])
                return done(ack)
            acks = arb.submit(cmd, self.now())
            await self.publish_acks(site_id, device_id, acks)
            if conn.limit_kw is not None or acks[0].status == "accepted":
                await self.publish_connector(conn)
            return done(acks[0])

    async def expire(self) -> None:
        """End lapsed setpoints (acks `expired`) and apply what holds now (clear or re-limit)."""
        now = self.now()
        for conn in list(self._connectors()):
            if conn.arbiter.idle:
                continue
            next_end = conn.arbiter.next_expiry()
            if next_end is None or next_end > now:
                continue
            async with conn.lock:
                acks = conn.arbiter.expire(self.now())
                if acks:
                    await self.publish_acks(conn.config.site_id, conn.device_id, acks)
                    await self._apply_locked(conn)

    async def publish_acks(self, site_id: str, device_id: str, acks: list[SetpointAck]) -> None:
        """Publish setpoint acks of a connector."""
        for ack in acks:
            await self.service.publish(
                topics.SETPOINT_ACK, ack, site_id=site_id, device_id=device_id
            )

    # --- the limit a connector gets ------------------------------------------------------------
    @staticmethod
    def _combined(setpoint_kw: float | None, plan_kw: float | None) -> float | None:
        values = [v for v in (setpoint_kw, plan_kw) if v is not None]
        return min(values) if values else None

    def _charging_link(self, conn: Connector) -> StationLink | None:
        station = self.stations[conn.station_id]
        return station.link if conn.transaction_id is not None else None

    def _plan_kw(self, conn: Connector, now: datetime) -> float | None:
        """The session plan's limit now (None: the mode needs no limit)."""
        session = conn.session
        if session is None or session.plan is None or session.plan_start is None:
            return None
        site = conn.config.site_id
        if session.mode == "now" and site not in self.settings.site_import_limit_kw:
            return None  # as fast as allowed: only a setpoint limits it
        index = int((now - session.plan_start).total_seconds() // self.settings.plan_step_s)
        if 0 <= index < len(session.plan.p_kw):
            return session.plan.p_kw[index]
        return None

    def wanted_limit(self, conn: Connector, now: datetime) -> tuple[float | None, datetime | None]:
        """The limit a connector should have now and until when (None: no limit)."""
        active = conn.arbiter.active(TARGET, now)
        plan = self._plan_kw(conn, now)
        limit = self._combined(active.value if active else None, plan)
        until = active.expires_at if active is not None else None
        if plan is not None and conn.session is not None and conn.session.plan_start is not None:
            step = timedelta(seconds=self.settings.plan_step_s)
            index = int((now - conn.session.plan_start) / step)
            slot_end = conn.session.plan_start + (index + 1) * step
            until = slot_end if until is None else min(until, slot_end)
        return limit, until

    async def apply(self, conn: Connector) -> None:
        """Bring the station's profile of a connector in line with the setpoints and the plan."""
        async with conn.lock:
            await self._apply_locked(conn)

    async def _apply_locked(self, conn: Connector) -> None:
        if self._charging_link(conn) is None:
            return
        now = self.now()
        limit, until = self.wanted_limit(conn, now)
        if limit is None:
            if conn.limit_kw is not None:
                await self._clear(conn)
            return
        if conn.limit_kw is not None and abs(limit - conn.limit_kw) < max(
            self.settings.limit_deadband_kw, 1e-3
        ):
            return
        await self._send_limit(conn, limit, until, now)

    async def _send_limit(
        self, conn: Connector, limit_kw: float | None, until: datetime | None, now: datetime
    ) -> str:
        link = self._charging_link(conn)
        if link is None or conn.transaction_id is None or limit_kw is None:
            return "Accepted"
        duration = None if until is None else max(1.0, (until - now).total_seconds())
        request = tx_profile(
            link.version, conn.connector_id, conn.transaction_id, limit_kw, now, duration
        )
        try:
            status = await link.set_charging_profile(request)
        except TimeoutError:
            status = "no answer"
        self.metrics.profiles.labels(call="set", status=status).inc()
        if status == "Accepted":
            conn.limit_kw = limit_kw
            await self.publish_connector(conn)
        return status

    async def _clear(self, conn: Connector) -> None:
        link = self._charging_link(conn)
        if link is None:
            return
        try:
            status = await link.clear_charging_profile(
                clear_profile(link.version, conn.connector_id)
            )
        except TimeoutError:
            status = "no answer"
        self.metrics.profiles.labels(call="clear", status=status).inc()
        # Unknown means the profile is gone already (e.g. it lapsed at the station)
        if status in ("Accepted", "Unknown"):
            conn.limit_kw = None
            await self.publish_connector(conn)

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background (never inside an OCPP handler: the station waits)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ev_charging background task failed", exc_info=task.exception())

    # --- site inputs ---------------------------------------------------------------------------
    def on_meter_reading(self, site_id: str, device_id: str, msg: MeterReading) -> None:
        """A site meter: the PCC reading is kept for planning and the PV share."""
        if device_id == "pcc":
            self.pcc_kw[site_id] = msg.p_kw

    def on_forecast(self, site_id: str, target: str, series: TimeSeries) -> None:
        """A day-ahead forecast (load or pv) of a site."""
        if target in ("load", "pv"):
            self.forecasts[(site_id, target)] = series

    def on_price_series(self, site_id: str, series: PriceSeries) -> None:
        """A site's price series (ours or another publisher's)."""
        self.prices.update(site_id, series)

    def site_prices(self, site_id: str) -> SitePrices:
        """A site's prices now: the fresh series, else the configured tariff (and why)."""
        return self.prices.for_site(site_id, self.settings.tariff, self.now())

    def import_price(self, site_id: str, when: datetime) -> float:
        """Import price at `when`: the fresh series, else the configured tariff."""
        return self.site_prices(site_id).price_at(when)

    def price_status(self, site_id: str) -> str:
        """Which prices the site is planned with (`series` or `tariff (<why>)`)."""
        return self.site_prices(site_id).status

    def _net_base_kw(self, site_id: str, when: datetime) -> float:
        """Site net power without its EVs at `when`: forecasts, else the last PCC reading."""
        load = self.forecasts.get((site_id, "load"))
        pv = self.forecasts.get((site_id, "pv"))
        load_kw = load.value_at(when) if load else None
        pv_kw = pv.value_at(when) if pv else None
        if load_kw is not None and pv_kw is not None:
            return load_kw - pv_kw
        ev_kw = sum(c.p_kw for c in self._connectors(site_id) if c.transaction_id)
        return self.pcc_kw.get(site_id, 0.0) - ev_kw

    async def refresh_prices(self) -> None:
        """Read the price sources that are due; publish each zone's series to its sites.

        A failed read republishes the last good series marked stale (consumers fall back to
        their tariff) and marks the service degraded until the source reads again.
        """
        now = self.now()
        if self.http is None:
            self.http = httpx.AsyncClient()
        for cfg in self.price_feed.due(now):
            try:
                intervals = await read_source(cfg, now, self.http)
                series = self.price_feed.accept(cfg, intervals, now)
            except PriceSourceError as err:
                log.warning("price source %s failed: %s", cfg.zone, err)
                await self.service.set_degraded(f"prices:{cfg.zone}", str(err))
                stale = self.price_feed.fail(cfg, now, str(err))
                if stale is None:
                    continue
                series = stale
            else:
                await self.service.clear_degraded(f"prices:{cfg.zone}")
            for site_id in cfg.sites:
                await self.service.publish(
                    topics.PRICE_SERIES, series, site_id=site_id, device_id="grid"
                )

    async def close(self) -> None:
        """Stop background work and the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        if self.http is not None:
            await self.http.aclose()
            self.http = None

    # --- smart charging ------------------------------------------------------------------------
    def replan(self, conn: Connector, now: datetime) -> Plan | None:
        """Plan a connector's session from now to its departure (None: no session)."""
        session = conn.session
        if session is None:
            return None
        step = self.settings.plan_step_s
        epoch = now.timestamp()
        start = now - timedelta(seconds=epoch % step)
        n = max(1, math.ceil((session.departure - start).total_seconds() / step))
        times = [start + timedelta(seconds=i * step) for i in range(n)]
        site = conn.config.site_id
        others = sum(c.p_kw for c in self._connectors(site) if c is not conn and c.transaction_id)
        prices = self.site_prices(site)
        delivered = session.meter.energy_kwh
        plan = plan_session(
            PlanInput(
                step_s=step,
                net_base_kw=[self._net_base_kw(site, t) + others for t in times],
                price_per_kwh=[prices.price_at(t) for t in times],
                energy_need_kwh=max(0.0, session.energy_need_kwh - delivered),
                departure_steps=n,
                max_kw=conn.config.max_kw,
                min_kw=conn.config.min_kw,
                import_limit_kw=self.settings.site_import_limit_kw.get(site),
                mode=session.mode,
            )
        )
        session.plan, session.plan_start = plan, start
        return plan

    async def replan_all(self) -> None:
        """Re-plan every running session and apply the new limits; publish the sessions."""
        now = self.now()
        for conn in list(self._connectors()):
            if conn.session is not None:
                self.replan(conn, now)
                await self.apply(conn)
                await self.publish_session(conn)

    async def set_need(
        self,
        conn: Connector,
        departure: datetime | None,
        energy_need_kwh: float | None,
        mode: ChargingMode | None,
        source: str = "user",
    ) -> SessionState:
        """The user (or the charger) describes the session; it is re-planned at once."""
        session = conn.session
        if session is None:
            raise KeyError(conn.device_id)
        if departure is not None:
            session.departure = departure
        if energy_need_kwh is not None:
            session.energy_need_kwh = energy_need_kwh
        if mode is not None:
            session.mode = mode
        if departure is not None or energy_need_kwh is not None:
            session.need_source = source
        self.replan(conn, self.now())
        await self.apply(conn)
        await self.publish_session(conn)
        return session

    # --- messages ------------------------------------------------------------------------------
    def telemetry(self, conn: Connector) -> EvChargerTelemetry:
        """The bus reading of a connector now."""
        station = self.stations[conn.station_id]
        online = station.link is not None
        session_kwh = None
        if conn.e_total_kwh is not None and conn.e_start_kwh is not None:
            session_kwh = max(0.0, conn.e_total_kwh - conn.e_start_kwh)
        return EvChargerTelemetry(
            ts=self.now(),
            source=NAME,
            p_kw=conn.p_kw if online else 0.0,
            status=conn.status if online else "Offline",
            station_id=conn.station_id,
            connector_id=conn.connector_id,
            protocol=station.version or "1.6",
            online=online,
            limit_kw=conn.limit_kw,
            max_kw=conn.config.max_kw,
            e_session_kwh=session_kwh,
            e_total_kwh=conn.e_total_kwh,
            soc_pct=conn.soc_pct,
            transaction_id=conn.transaction_id,
        )

    async def publish_connector(self, conn: Connector) -> None:
        """Publish a connector's telemetry."""
        await self.service.publish(
            topics.EV_CHARGER,
            self.telemetry(conn),
            site_id=conn.config.site_id,
            device_id=conn.device_id,
        )

    def session_message(self, conn: Connector, session: SessionState) -> EvSession:
        """The bus message of a session (plan and measured KPIs)."""
        m = session.meter
        plan = session.plan
        kpis = EvSessionKpis(
            energy_kwh=m.energy_kwh,
            pv_kwh=m.pv_kwh,
            grid_kwh=m.grid_kwh,
            pv_share_pct=m.pv_share_pct,
            cost=m.cost,
            mean_price_per_kwh=m.cost / m.grid_kwh if m.grid_kwh > 0 else None,
        )
        return EvSession(
            ts=self.now(),
            source=NAME,
            session_id=session.session_id,
            station_id=conn.station_id,
            connector_id=conn.connector_id,
            mode=session.mode,
            started=session.started,
            ended=session.ended,
            departure=session.departure,
            energy_need_kwh=session.energy_need_kwh,
            need_source=session.need_source,  # type: ignore[arg-type]
            plan_start=session.plan_start,
            plan_step_s=self.settings.plan_step_s,
            plan_kw=[round(p, 3) for p in plan.p_kw] if plan else [],
            planned_kwh=plan.planned_kwh if plan else None,
            plan_meets_need=plan.meets_need if plan else None,
            kpis=kpis,
        )

    async def publish_session(self, conn: Connector) -> None:
        """Publish a connector's session."""
        if conn.session is None:
            return
        await self.service.publish(
            topics.EV_SESSION,
            self.session_message(conn, conn.session),
            site_id=conn.config.site_id,
            device_id=conn.device_id,
        )

    def sessions(self) -> list[EvSession]:
        """Running sessions, then recently ended ones."""
        running = [
            self.session_message(c, c.session) for c in self._connectors() if c.session is not None
        ]
        return running + list(reversed(self.sessions_done))
