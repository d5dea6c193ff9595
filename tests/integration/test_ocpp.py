"""OCPP end to end on loopback: the simulator's charge points, the central system, the real broker.

For OCPP 1.6J and 2.0.1 each: a station connects over a real WebSocket and boots; a vehicle
plugs in, the id token is checked, the transaction starts; MeterValues become `telemetry.ev_charger`
on the bus; an `ev_limit_kw` setpoint becomes a TxProfile the charger follows (MeterValues show
it) and is acknowledged after the station accepted it; when its TTL lapses the profile is cleared
and the charger is back at full power. Unknown stations and unknown id tokens are refused;
malformed frames get the protocol's CALLERROR, are counted, and the connection goes on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import EvChargerTelemetry, EvSession, Priority, SetpointAck
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, setpoint_command, wait_for
from edge_simulator.ocpp_cp import OcppSimSettings, SimChargePoint, Version
from edge_simulator.service import build_service as build_simulator
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.testing import ManualClock
from ev_charging.charging import EvCharging
from ev_charging.service import build_service
from ev_charging.settings import Settings, StationConfig

pytestmark = pytest.mark.integration

SITE = "site-0"
STATION = "cp1"
DEVICE = "cp1-1"
START = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)
TAG = "TAG-OK"


@pytest.fixture(params=["1.6", "2.0.1"])
def version(request: pytest.FixtureRequest) -> Version:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def csms(mqtt_settings: MqttSettings) -> AsyncIterator[Service[Settings, EvCharging]]:
    settings = Settings(
        mqtt=mqtt_settings,
        api_port=0,
        ocpp_port=0,
        expire_check_s=0.05,
        replan_s=3600,
        stations={STATION: StationConfig(site_id=SITE, max_kw=11.0, id_tokens=(TAG,))},
    )
    service = build_service(settings, MqttBus(mqtt_settings))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def url(service: Service[Settings, EvCharging]) -> str:
    return f"ws://127.0.0.1:{service.state.csms.port}"


def charge_point(
    service: Service[Settings, EvCharging], version: Version, station: str = STATION
) -> SimChargePoint:
    sim = OcppSimSettings(
        url=url(service),
        version=version,
        meter_interval_s=0.5,
        plug_in=False,
        id_token=TAG,
        max_kw=11.0,
        ev_max_kw=11.0,
    )
    return SimChargePoint(station, url(service), version, sim)


def latest(rec: BusRecorder[EvChargerTelemetry]) -> EvChargerTelemetry | None:
    return rec.values[-1] if rec.values else None


def setpoint(sid: str, value_kw: float, ttl_s: float) -> bytes:
    return setpoint_command(
        value_kw,
        datetime.now(UTC),
        target="ev_limit_kw",
        ttl_s=ttl_s,
        source="scada",
        setpoint_id=sid,
        priority=Priority.GRID_OPERATOR,
    ).to_json_bytes()


async def test_charger_follows_setpoint_and_reverts_after_ttl(
    csms: Service[Settings, EvCharging],
    probe: MqttBus,
    mqtt_settings: MqttSettings,
    version: Version,
) -> None:
    root = mqtt_settings.root
    telemetry: BusRecorder[EvChargerTelemetry] = BusRecorder(topics.EV_CHARGER, root)
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
    sessions: BusRecorder[EvSession] = BusRecorder(topics.EV_SESSION, root)
    for rec in (telemetry, acks, sessions):
        await rec.attach(probe)  # type: ignore[attr-defined]
    cp = charge_point(csms, version)
    await cp.connect()
    try:
        await wait_for(lambda: cp.booted.is_set(), message="boot accepted")
        station = csms.state.stations[STATION]
        assert station.booted
        assert station.version == version

        # a vehicle plugs in: transaction, full power in MeterValues → bus telemetry
        assert await cp.plug_in(TAG, soc_pct=20.0)
        await wait_for(
            lambda: (
                (t := latest(telemetry)) is not None
                and t.transaction_id is not None
                and t.p_kw > 10.9
                and t.status == "Charging"
            ),
            message="charging at 11 kW on the bus",
        )
        reading = latest(telemetry)
        assert reading is not None
        assert reading.protocol == version
        assert reading.online
        assert reading.limit_kw is None
        assert reading.soc_pct is not None

        # a grid-operator limit: TxProfile → the charger follows → ack after the station accepted
        await probe.publish(topics.SETPOINT.topic(SITE, DEVICE, root), setpoint("lim-1", 4.0, 60))
        first = await acks.first(lambda a: a.setpoint_id == "lim-1", message="ack")
        assert first.status == "accepted"
        assert first.applied_value == 4.0
        assert cp.profiles
        assert cp.profiles[-1].call == "set"
        assert cp.profiles[-1].limit_kw == 4.0
        assert cp.ev.limit_kw == 4.0
        await wait_for(
            lambda: (
                (t := latest(telemetry)) is not None
                and abs(t.p_kw - 4.0) < 1e-6
                and t.limit_kw == 4.0
            ),
            message="MeterValues show 4 kW",
        )

        # a short one replaces it; when its TTL lapses the profile is cleared: full power again
        await probe.publish(topics.SETPOINT.topic(SITE, DEVICE, root), setpoint("lim-2", 2.5, 4.0))
        # TTL 4 s: with 1 s the command, the station's answer and the ack together took longer
        # than its life once (load ~23), and no `accepted` came
        await wait_for(
            lambda: (
                [a.status for a in acks.values if a.setpoint_id == "lim-2"]
                == ["accepted", "expired"]
            ),
            20,
            message="lim-2 accepted then expired",
        )
        assert [a.status for a in acks.values if a.setpoint_id == "lim-1"] == [
            "accepted",
            "superseded",
        ]
        assert 2.5 in [p.limit_kw for p in cp.profiles if p.call == "set"]
        await wait_for(lambda: cp.profiles[-1].call == "clear", message="profile cleared")
        await wait_for(
            lambda: (t := latest(telemetry)) is not None and t.p_kw > 10.9 and t.limit_kw is None,
            message="back at 11 kW without a limit",
        )
        assert cp.ev.limit_kw is None

        # the vehicle leaves: the session ends with its energy on the bus
        await cp.unplug()
        await wait_for(
            lambda: any(s.ended is not None for s in sessions.values), message="session ended"
        )
        ended = next(s for s in sessions.values if s.ended is not None)
        assert ended.kpis.energy_kwh > 0
        assert ended.kpis.grid_kwh == pytest.approx(ended.kpis.energy_kwh)  # no PCC: all grid
    finally:
        await cp.close()


async def test_setpoint_while_idle_applies_at_transaction_start(
    csms: Service[Settings, EvCharging],
    probe: MqttBus,
    mqtt_settings: MqttSettings,
    version: Version,
) -> None:
    root = mqtt_settings.root
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
    await acks.attach(probe)
    cp = charge_point(csms, version)
    await cp.connect()
    try:
        await probe.publish(topics.SETPOINT.topic(SITE, DEVICE, root), setpoint("idle", 6.0, 60))
        await wait_for(lambda: bool(acks.values), message="ack")
        assert acks.values[0].status == "accepted"
        assert cp.profiles == []  # no transaction yet: nothing to send
        assert await cp.plug_in(TAG)
        await wait_for(lambda: cp.ev.limit_kw == 6.0, message="profile at start")
        # out of the connector's range: rejected, the station keeps its limit
        await probe.publish(topics.SETPOINT.topic(SITE, DEVICE, root), setpoint("big", 50.0, 60))
        big = await acks.first(lambda a: a.setpoint_id == "big", message="ack")
        assert big.status == "rejected"
        assert "outside the allowed range" in (big.reason or "")
        assert cp.ev.limit_kw == 6.0
    finally:
        await cp.close()


async def test_unknown_station_and_id_token_are_refused(
    csms: Service[Settings, EvCharging], version: Version
) -> None:
    stranger = charge_point(csms, version, station="not-configured")
    with pytest.raises(InvalidStatus):
        await stranger.connect()
    assert stranger.refused == "HTTP 404"
    assert csms.state.refused == {"unknown_station": 1}
    assert "not-configured" not in csms.state.stations

    cp = charge_point(csms, version)
    await cp.connect()
    try:
        assert not await cp.plug_in("STOLEN-TAG")
        assert cp.ev.transaction_id is None
        assert csms.state.stations[STATION].connectors[1].transaction_id is None
        assert await cp.plug_in(TAG)  # the listed one still works
    finally:
        await cp.close()


async def test_malformed_frames_get_call_errors_and_are_counted(
    csms: Service[Settings, EvCharging], version: Version
) -> None:
    subprotocol = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    async with connect(f"{url(csms)}/{STATION}", subprotocols=[subprotocol]) as ws:  # type: ignore[list-item]
        await ws.send("this is not json")
        bad_json = json.loads(await ws.recv())
        await ws.send(json.dumps({"not": "an array"}))
        not_array = json.loads(await ws.recv())
        await ws.send(json.dumps([7, "m-1", "Heartbeat", {}]))
        bad_type = json.loads(await ws.recv())
        await ws.send(json.dumps([2, "m-2", "BootNotification", {"reason": 5}]))
        bad_payload = json.loads(await ws.recv())
        # the connection is still served
        await ws.send(json.dumps([2, "m-3", "Heartbeat", {}]))
        heartbeat = json.loads(await ws.recv())
    assert bad_json[:2] == [4, "-1"]
    assert not_array[:2] == [4, "-1"]
    assert bad_type[:2] == [4, "m-1"]
    assert bad_payload[:2] == [4, "m-2"]
    assert heartbeat[:2] == [3, "m-3"]
    assert "currentTime" in heartbeat[2]
    codes = [bad_json[2], not_array[2], bad_type[2], bad_payload[2]]
    if version == "1.6":
        assert codes[:3] == ["FormationViolation", "FormationViolation", "ProtocolError"]
    else:
        assert codes[:3] == ["RpcFrameworkError", "RpcFrameworkError", "MessageTypeNotSupported"]
    assert codes[3] in (
        "FormationViolation",
        "FormatViolation",
        "TypeConstraintViolation",
        "OccurenceConstraintViolation",
        "OccurrenceConstraintViolation",
    )
    assert sum(csms.state.frames_rejected.values()) == 4
    registry = csms.metrics.registry
    counted = sum(
        registry.get_sample_value("derbus_ev_charging_frames_rejected_total", {"code": c}) or 0.0
        for c in set(codes)
    )
    assert counted == 4


async def test_simulator_sites_as_charge_points(
    mqtt_settings: MqttSettings, probe: MqttBus, version: Version
) -> None:
    """The edge simulator with `EDGE_SIMULATOR_OCPP_URL`: one station per site, vehicles charging."""
    root = mqtt_settings.root
    stations = {
        f"sim-site-{i:04d}": StationConfig(site_id=f"site-{i:04d}", id_tokens=("SIM-TAG",))
        for i in (1, 2)
    }
    cs_settings = Settings(mqtt=mqtt_settings, api_port=0, ocpp_port=0, stations=stations)
    csms = build_service(cs_settings, MqttBus(mqtt_settings))
    await csms.start()
    telemetry: BusRecorder[EvChargerTelemetry] = BusRecorder(topics.EV_CHARGER, root)
    await telemetry.attach(probe)
    sim_settings = SimSettings(
        mqtt=mqtt_settings,
        api_port=0,
        interval_s=3600,
        sites=2,
        ocpp=OcppSimSettings(url=url(csms), version=version, meter_interval_s=0.5),
    )
    simulator = build_simulator(sim_settings, MqttBus(mqtt_settings), clock=ManualClock(START))
    await simulator.start()
    try:
        await wait_for(
            lambda: {t.station_id for t in telemetry.values if t.p_kw > 10.9} == set(stations),
            message="both sites' vehicles charging",
        )
        assert csms.state.connected() == 2
        assert set(simulator.state.ocpp.points) == {"site-0001", "site-0002"}
        assert {t.protocol for t in telemetry.values} == {version}
    finally:
        await simulator.stop()
        await csms.stop()
