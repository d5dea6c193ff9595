"""Edge simulator + peak_shaving on the real broker: an import peak is shaved within two readings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import KpiReport, MeterReading, SetpointAck, SetpointCommand
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, ServiceStack, wait_for
from edge_simulator.service import SimClock
from edge_simulator.service import build_service as build_simulator
from edge_simulator.settings import Settings as SimSettings
from edge_simulator.testing import steady_site
from peak_shaving.service import build_service as build_peak_shaving
from peak_shaving.settings import Settings as PsSettings

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 12, 19, 0, tzinfo=UTC)  # a winter evening: no PV
SITE = "site-1"
LIMIT_KW = 10.0
BASE_LOAD_KW = 20.0


async def test_import_peak_is_shaved_to_the_limit_within_two_readings(
    mqtt_settings: MqttSettings, probe: MqttBus
) -> None:
    root = mqtt_settings.root
    meter: BusRecorder[MeterReading] = BusRecorder(topics.METER, root)
    setpoints: BusRecorder[SetpointCommand] = BusRecorder(topics.SETPOINT, root)
    acks: BusRecorder[SetpointAck] = BusRecorder(topics.SETPOINT_ACK, root)
    kpis: BusRecorder[KpiReport] = BusRecorder(topics.KPI, root)
    await meter.attach(probe, SITE, "pcc")
    await setpoints.attach(probe, SITE, "battery")
    await acks.attach(probe, SITE, "battery")
    await kpis.attach(probe, SITE, "peak_shaving")

    simulator = build_simulator(
        SimSettings(mqtt=mqtt_settings, api_port=0, interval_s=0.5),
        MqttBus(mqtt_settings),
        clock=SimClock(START, speed=1.0),
        config=steady_site(BASE_LOAD_KW, battery_kw=50.0, capacity_kwh=100.0),
    )
    async with ServiceStack(simulator) as services:
        # the peak, before any controller runs
        await meter.wait(2)
        assert all(r.p_kw > LIMIT_KW + 5 for r in meter.values), meter.values

        ps_settings = PsSettings(
            mqtt=mqtt_settings,
            api_port=0,
            import_limit_kw=LIMIT_KW,
            export_limit_kw=-10.0,
            margin_kw=0.5,
            kpi_interval_s=0.5,
            battery_capacity_kwh=100.0,
            battery_max_charge_kw=50.0,
            battery_max_discharge_kw=50.0,  # steady_site's battery
        )
        peak_shaving = build_peak_shaving(ps_settings, MqttBus(mqtt_settings))
        await services.start(peak_shaving)

        first = (await setpoints.wait(1, timeout=15))[0]
        assert first.source == "peak_shaving"
        assert first.priority == "site_optimiser"
        assert first.value == pytest.approx(LIMIT_KW - 0.5 - BASE_LOAD_KW, abs=0.5)
        ack = await acks.first(
            lambda a: a.setpoint_id == first.setpoint_id,
            10,
            message="the simulator's ack of the first setpoint",
        )
        assert ack.status == "accepted", ack

        # the reading the PMA answered, and the readings after it
        answered = first.ts

        def after() -> list[MeterReading]:
            return [r for r in meter.values if r.ts > answered]

        await wait_for(lambda: len(after()) >= 4, 15, message="four readings after the setpoint")
        shaved = [r.p_kw for r in after()]
        print(f"PCC before: {[r.p_kw for r in meter.values if r.ts <= answered]}, after: {shaved}")
        assert min(shaved[:2]) <= LIMIT_KW, shaved  # within two readings
        assert all(p <= LIMIT_KW for p in shaved[2:4]), shaved  # and held there
        assert max(r.p_kw for r in meter.values if r.ts <= answered) > LIMIT_KW  # it was a peak

        # operators see the time on limit (KPIs on the bus)
        await wait_for(
            lambda: any(k.values.get("time_on_limit_s", 0) > 0 for k in kpis.values),
            10,
            message="a KPI report with time on limit",
        )
        assert kpis.values[-1].values["unfixed_violation_kwh"] == 0.0

        # the PMA answers readings with setpoints, yet the simulator re-steps the site at most
        # once between two regular steps (no step → setpoint → step storm)
        sim = simulator.state
        assert sim.immediate_steps >= 1  # the first setpoint was stepped at once
        assert sim.immediate_steps <= sim.steps - sim.immediate_steps
