"""The optimisers limit the EV, end to end on loopback (real WebSockets, real Mosquitto).

The edge simulator's site draws 8 kW with a 2 kW battery; its OCPP charge point (the same
simulator) connects to ev_charging, a vehicle plugs in and charges at 11 kW, and that power is
part of the site's PCC reading. peak_shaving then sees 17 kW against a 12 kW import limit with the
battery at its discharge limit: it sends an `ev_limit_kw` setpoint to the charger it learnt from
`telemetry.ev_charger`; ev_charging turns it into a TxProfile (SetChargingProfile), the charge
point follows, MeterValues and the PCC show the lower power. For OCPP 1.6J and 2.0.1.

The load manager's job scheduler treats a charging session submitted as a job on a charger as
a flexible load: the charger is held at 0 kW until the planned start (the PV step), then charges
at the job's power.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import (
    EvChargerTelemetry,
    MeterReading,
    SetpointAck,
    SetpointCommand,
    utcnow,
)
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, ServiceStack, job_request, wait_for
from derbus.testing.servers import free_port
from edge_simulator.ocpp_cp import OcppSimSettings, SimChargePoint, Version
from edge_simulator.service import SimClock
from edge_simulator.service import build_service as build_simulator
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.testing import steady_site
from ev_charging.service import build_service as build_ev_charging
from ev_charging.settings import Settings as EvSettings
from ev_charging.settings import StationConfig
from load_manager.service import build_service as build_load_manager
from load_manager.settings import Settings as LmSettings
from load_manager.testing import pv_spike, step_start
from peak_shaving.service import build_service as build_peak_shaving
from peak_shaving.settings import Settings as PsSettings

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 12, 19, 0, tzinfo=UTC)  # a winter evening: no PV
SITE = "site-1"
STATION = "sim-site-1"  # the simulator's station id: prefix + site id
CHARGER = "sim-site-1-1"  # its connector on the bus
TAG = "SIM-TAG"
LOAD_KW, EV_KW, BATTERY_KW, LIMIT_KW, MARGIN_KW = 8.0, 11.0, 2.0, 12.0, 0.5


@pytest.fixture(params=["1.6", "2.0.1"])
def version(request: pytest.FixtureRequest) -> Version:
    return request.param  # type: ignore[no-any-return]


def central_system(mqtt_settings: MqttSettings, ocpp_port: int) -> Service[Any, Any]:
    return build_ev_charging(
        EvSettings(
            mqtt=mqtt_settings,
            api_port=0,
            ocpp_port=ocpp_port,
            expire_check_s=0.05,
            replan_s=3600,
            stations={STATION: StationConfig(site_id=SITE, max_kw=EV_KW, id_tokens=(TAG,))},
        ),
        MqttBus(mqtt_settings),
    )


async def test_the_simulators_station_connects_once_the_central_system_is_up(
    mqtt_settings: MqttSettings, probe: MqttBus
) -> None:
    """`make run` starts the simulator first: its charge point keeps trying, like a real one."""
    root = mqtt_settings.root
    ev: BusRecorder[EvChargerTelemetry] = BusRecorder(topics.EV_CHARGER, root)
    await ev.attach(probe, SITE, CHARGER)
    port = free_port()
    ocpp = OcppSimSettings(url=f"ws://127.0.0.1:{port}", id_token=TAG, meter_interval_s=0.5)
    simulator = build_simulator(
        SimSettings(mqtt=mqtt_settings, api_port=0, interval_s=0.5, ocpp=ocpp),
        MqttBus(mqtt_settings),
        clock=SimClock(START, speed=1.0),
        config=steady_site(LOAD_KW, BATTERY_KW, capacity_kwh=50.0),
    )
    async with ServiceStack() as services:
        await services.start(simulator)  # nobody listens on `port` yet
        assert ev.values == []
        await services.start(central_system(mqtt_settings, ocpp_port=port))
        await wait_for(
            lambda: bool(ev.values) and ev.values[-1].online and ev.values[-1].p_kw > 0,
            20,
            message="the simulator's station connected and charging",
        )


async def test_peak_shaving_limits_the_ev_and_the_charger_follows(
    mqtt_settings: MqttSettings, probe: MqttBus, version: Version
) -> None:
    root = mqtt_settings.root
    meter: BusRecorder[MeterReading] = BusRecorder(topics.METER, root)
    ev: BusRecorder[EvChargerTelemetry] = BusRecorder(topics.EV_CHARGER, root)
    ev_setpoints: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, root)
    battery_setpoints: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, root)
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
    await meter.attach(probe, SITE, "pcc")
    await ev.attach(probe, SITE, CHARGER)
    await ev_setpoints.attach(probe, SITE, CHARGER)
    await battery_setpoints.attach(probe, SITE, "battery")
    await acks.attach(probe, SITE, CHARGER)

    async with ServiceStack() as services:
        csms = await services.start(central_system(mqtt_settings, ocpp_port=0))
        ocpp = OcppSimSettings(
            url=f"ws://127.0.0.1:{csms.state.csms.port}",
            version=version,
            id_token=TAG,
            meter_interval_s=0.5,
            max_kw=EV_KW,
            ev_max_kw=EV_KW,
        )
        simulator = build_simulator(
            SimSettings(mqtt=mqtt_settings, api_port=0, interval_s=0.5, ocpp=ocpp),
            MqttBus(mqtt_settings),
            clock=SimClock(START, speed=1.0),
            config=steady_site(LOAD_KW, BATTERY_KW, capacity_kwh=50.0),
        )
        await services.start(simulator)

        # the vehicle charges at full power, and the PCC carries it: above the limit
        await wait_for(
            lambda: (
                bool(ev.values)
                and ev.values[-1].p_kw > EV_KW - 0.1
                and ev.values[-1].status == "Charging"
            ),
            20,
            message="the simulator's EV charging at 11 kW over OCPP",
        )
        await wait_for(
            lambda: bool(meter.values) and meter.values[-1].p_kw > LOAD_KW + EV_KW - 0.5,
            20,
            message="the PCC reading carrying the EV",
        )

        peak_shaving = build_peak_shaving(
            PsSettings(
                mqtt=mqtt_settings,
                api_port=0,
                import_limit_kw=LIMIT_KW,
                export_limit_kw=-10.0,
                margin_kw=MARGIN_KW,
                battery_capacity_kwh=50.0,
                battery_max_charge_kw=BATTERY_KW,
                battery_max_discharge_kw=BATTERY_KW,
                ev_settle_s=2.0,
                ev_limit_ttl_s=60.0,
            ),
            MqttBus(mqtt_settings),
        )
        await services.start(peak_shaving)

        # the battery goes first (at its limit), then the EV gets the rest of the excess. The
        # first limit may be lower: a PCC reading from before the battery's discharge can meet
        # battery telemetry already at its limit (seen 1 in ~6 runs under load: 3.5 kW); the
        # limit is raised again as the readings show the room (a known transient, noted)
        expected = LIMIT_KW - MARGIN_KW - LOAD_KW + BATTERY_KW  # 5.5 kW
        await wait_for(
            lambda: any(s.value == pytest.approx(expected, abs=0.3) for s in ev_setpoints.values),
            30,
            message="the EV limit at the excess the battery cannot take",
        )
        first = next(s for s in ev_setpoints.values if s.value == pytest.approx(expected, abs=0.3))
        assert first.source == "peak_shaving"
        assert first.target == "ev_limit_kw"
        assert first.priority == "site_optimiser"
        assert first.ttl_s == 60.0
        assert any(s.value == pytest.approx(-BATTERY_KW) for s in battery_setpoints.values)

        # ev_charging accepted it after the station took the TxProfile; the charger follows
        ack = await acks.first(
            lambda a: a.setpoint_id == first.setpoint_id, 15, message="ack of the EV limit"
        )
        assert ack.status == "accepted", ack
        await wait_for(
            lambda: (
                (t := ev.values[-1]).limit_kw == first.value and abs(t.p_kw - first.value) < 1e-6
            ),
            15,
            message="MeterValues show the limited power",
        )

        # and the site is back inside its import limit
        seen = len(meter.values)
        await wait_for(lambda: len(meter.values) >= seen + 4, 15, message="four more readings")
        held = [r.p_kw for r in meter.values[seen + 1 :]]
        assert all(p <= LIMIT_KW for p in held), held
        # the limit held steady once found: no chatter, no undershoot, never a pause
        values = [s.value for s in ev_setpoints.values]
        settled = values[values.index(first.value) :]
        assert min(settled) >= expected - 0.6, values
        assert min(values) >= peak_shaving.settings.ev_min_kw, values
        # operators see it in the KPIs
        ps = peak_shaving.state
        assert ps.ev.kpis(SITE)["ev_limited"] == 1.0


async def test_the_job_scheduler_holds_the_ev_until_its_planned_start(
    mqtt_settings: MqttSettings, probe: MqttBus, version: Version, tmp_path: Path
) -> None:
    root = mqtt_settings.root
    ev: BusRecorder[EvChargerTelemetry] = BusRecorder(topics.EV_CHARGER, root)
    commands: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, root)
    await ev.attach(probe, SITE, CHARGER)
    await commands.attach(probe, SITE, CHARGER)
    step_s = 2  # an accelerated plan: 2-second steps, a 2-minute horizon
    async with ServiceStack() as services:
        csms = await services.start(central_system(mqtt_settings, ocpp_port=0))
        url = f"ws://127.0.0.1:{csms.state.csms.port}"
        sim = OcppSimSettings(
            url=url,
            version=version,
            id_token=TAG,
            meter_interval_s=0.5,
            plug_in=False,
            max_kw=EV_KW,
            ev_max_kw=EV_KW,
        )
        cp = SimChargePoint(STATION, url, version, sim)
        try:
            lm_settings = LmSettings(
                mqtt=mqtt_settings,
                data_dir=tmp_path,
                net_balancing_enabled=False,
                plan_step_s=step_s,
                plan_horizon_steps=60,
                dispatch_interval_s=0.1,
                api_port=0,
            )
            load_manager = build_load_manager(lm_settings, MqttBus(mqtt_settings))
            await services.start(load_manager)
            await cp.connect()
            assert await cp.plug_in(TAG)
            await wait_for(
                lambda: bool(ev.values) and ev.values[-1].p_kw > EV_KW - 0.1,
                20,
                message="charging at 11 kW",
            )
            jobs = load_manager.state.jobs
            await wait_for(
                lambda: (SITE, CHARGER) in jobs.ev_chargers, 10, message="charger learnt"
            )

            # PV only in the step 12 s ahead: the session is planned there
            forecast = pv_spike(utcnow(), step_s, at_step=6)
            grid_start = forecast.start
            await probe.publish(
                topics.FORECAST.topic(SITE, "pv", root),
                forecast.to_json_bytes(),
                qos=1,
                retain=True,
            )
            await wait_for(lambda: (SITE, "pv") in jobs.forecasts, 10, message="forecast in")
            job = job_request(
                [4.0],
                utcnow(),
                grid_start + timedelta(seconds=40),
                job_id="ev-1",
                house_id=SITE,
                device_id=CHARGER,
                step_s=step_s,
            )
            await probe.publish(topics.JOB_REQUEST.topic(SITE, CHARGER, root), job.to_json_bytes())

            # held at 0 kW until the planned start: the charger follows, MeterValues show it
            await wait_for(lambda: bool(commands.values), 15, message="the hold")
            hold = commands.values[0]
            assert (hold.source, hold.target, hold.value) == ("load_manager", "ev_limit_kw", 0.0)
            planned = jobs.book.entries["ev-1"].planned_start
            assert planned == step_start(forecast, 6), "placed on the PV step"
            await wait_for(
                lambda: ev.values[-1].p_kw == 0.0 and ev.values[-1].limit_kw == 0.0,
                15,
                message="held at 0 kW",
            )
            assert hold.ts < planned
            assert hold.ttl_s <= (planned - hold.ts).total_seconds() + 1e-6  # lapses by the start
            # at the planned start: the job's power for its duration
            await wait_for(
                lambda: any(c.value == 4.0 for c in commands.values), 30, message="the start"
            )
            start = next(c for c in commands.values if c.value == 4.0)
            assert start.ts >= planned
            assert start.ttl_s == step_s
            await wait_for(
                lambda: abs(ev.values[-1].p_kw - 4.0) < 1e-6, 15, message="charging at 4 kW"
            )
        finally:
            await probe.publish(topics.FORECAST.topic(SITE, "pv", root), b"", retain=True)
            await cp.close()
