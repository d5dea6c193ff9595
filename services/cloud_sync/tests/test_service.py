"""The service on the in-memory bus: telemetry → outbox → cloud; InfluxDB points; full outbox; API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from paho.mqtt.client import topic_matches_sub
from pydantic import SecretStr

from cloud_sync.service import build_service
from cloud_sync.settings import Settings
from cloud_sync.state import CloudSync
from derbus import acl, topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.errors import StorageError
from derbus.http import make_app
from derbus.messages import (
    BatteryTelemetry,
    DeadLetter,
    KpiReport,
    LoadTelemetry,
    MeterReading,
    PriceTelemetry,
    PvTelemetry,
    ServiceStatus,
)
from derbus.service import Service
from derbus.testing import BusRecorder, time_series, wait_for

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROOT = "test/v1"
PCC = topics.METER.topic("site-1", "pcc", ROOT)


async def started(
    settings: Settings, sink: Any
) -> tuple[Service[Settings, CloudSync], InMemoryBus]:
    broker = InMemoryBroker()
    service = build_service(settings, InMemoryBus(broker), influx=sink)
    await service.start()
    forwarder = service.state.forwarder
    # the first forwarding pass runs at start (migration): let it finish so tests are ordered
    # (a bound: 5 s was too short once at load ~25)
    await wait_for(lambda: forwarder.last_success is not None, 30, message="first pass")
    publisher = InMemoryBus(broker)
    await publisher.connect()
    return service, publisher


async def settle(service: Service[Settings, CloudSync], pub: InMemoryBus) -> None:
    """Deliver everything published, then commit the group-commit buffer now (no timer wait)."""
    await pub.drain()
    await service.state.intake.flush()


async def publish_readings(pub: InMemoryBus, minutes: range | list[int]) -> None:
    """Publish a 1 kW reading of site-1's PCC meter at each of these minutes past T0."""
    for minute in minutes:
        msg = MeterReading(ts=T0.replace(minute=minute), source="t", p_kw=1.0)
        await pub.publish(PCC, msg.to_json_bytes())


def meter_points(sink: Any) -> list[Any]:
    return [p for p in sink.points if p.measurement == "meter"]


def cloud_rows(service: Service[Settings, CloudSync]) -> dict[tuple[str, str, str], float]:
    store = service.state.store
    with store.engine.connect() as conn:
        return {
            (r.site_id, r.device_id, r.metric): r.value
            for r in conn.execute(sa.select(store.table))
        }


async def test_every_telemetry_kind_reaches_the_cloud_and_influx(
    settings: Settings, sink: Any
) -> None:
    service, pub = await started(settings, sink)
    messages = [
        (
            topics.METER,
            "pcc",
            MeterReading(ts=T0, source="t", p_kw=-1.5, q_kvar=0.25, v_l1_v=231.0),
        ),
        (topics.PV, "pv", PvTelemetry(ts=T0, source="t", generation_kw=4.0, irradiance_w_m2=800.0)),
        (topics.BATTERY, "battery", BatteryTelemetry(ts=T0, source="t", p_kw=2.0, soc_pct=55.0)),
        (
            topics.LOAD,
            "load1",
            LoadTelemetry(ts=T0, source="t", p_kw=1.2, kind="switchable", on=True),
        ),
        (topics.PRICE, "grid", PriceTelemetry(ts=T0, source="t", price_per_kwh=0.21)),
    ]
    for spec, device, msg in messages:
        await pub.publish(spec.topic("site-1", device, ROOT), msg.to_json_bytes())
    await settle(service, pub)
    assert service.state.outbox.pending_rows == 11
    await service.run_task("forward")
    got = cloud_rows(service)
    assert got[("site-1", "pcc", "meter.p_kw")] == -1.5
    assert got[("site-1", "pcc", "meter.v_l1_v")] == 231.0
    assert got[("site-1", "pv", "pv.generation_kw")] == 4.0
    assert got[("site-1", "battery", "battery.soc_pct")] == 55.0
    assert got[("site-1", "load1", "load.on")] == 1.0
    assert got[("site-1", "grid", "price.price_per_kwh")] == 0.21
    assert len(got) == 11
    assert service.state.outbox.pending_rows == 0
    by_measurement = {p.measurement: p for p in sink.points if p.measurement != "service_status"}
    assert set(by_measurement) == {"meter", "pv", "battery", "load", "price"}
    assert by_measurement["meter"].tags == {"site_id": "site-1", "device_id": "pcc"}
    assert by_measurement["meter"].fields["p_kw"] == -1.5
    await service.stop()
    assert sink.closed


async def test_forecasts_kpis_and_statuses_go_to_influx_only(settings: Settings, sink: Any) -> None:
    service, pub = await started(settings, sink)
    forecast = time_series(
        [1.0, 2.0],
        T0,
        source="forecaster",
        quantiles={"p10": [0.5, 1.0], "p90": [2.0, 3.0]},
        model="gbr",
    )
    await pub.publish(topics.FORECAST.topic("site-1", "load", ROOT), forecast.to_json_bytes())
    kpi = KpiReport(ts=T0, source="peak_shaving", name="shaving", values={"peak_kw": 4.5})
    await pub.publish(topics.KPI.topic("site-1", "peak_shaving", ROOT), kpi.to_json_bytes())
    await settle(service, pub)
    measurements = [p.measurement for p in sink.points]
    assert measurements.count("forecast") == 2
    assert "kpi" in measurements
    assert any(p.measurement == "service_status" for p in sink.points)  # our own "online"
    assert service.state.outbox.pending_rows == 0
    await service.stop()


async def test_malformed_telemetry_is_dead_lettered_counted_and_the_rest_flows(
    settings: Settings, sink: Any
) -> None:
    service, pub = await started(settings, sink)
    letters: BusRecorder[DeadLetter] = BusRecorder(topics.DEAD_LETTER, ROOT)
    await letters.attach(pub)
    topic = topics.METER.topic("site-1", "pcc", ROOT)
    await pub.publish(topic, b'{"ts": "2026-06-01T12:00:00Z", "source": "x", "p_kw": "lots"}')
    await pub.publish(topic, MeterReading(ts=T0, source="t", p_kw=3.0).to_json_bytes())
    long_id = topics.METER.topic("s" * 101, "pcc", ROOT)
    await pub.publish(long_id, MeterReading(ts=T0, source="t", p_kw=9.0).to_json_bytes())
    await settle(service, pub)
    assert [d.original_topic for d in letters.values] == [topic, long_id]
    invalid = service.metrics.registry.get_sample_value(
        "derbus_messages_invalid_total", {"topic": "telemetry.meter"}
    )
    assert invalid == 2
    await service.run_task("forward")
    assert cloud_rows(service) == {
        ("site-1", "pcc", "meter.p_kw"): 3.0,
        ("site-1", "pcc", "meter.q_kvar"): 0.0,
    }
    await service.stop()


async def test_full_outbox_holds_intake_loudly_and_resumes_after_forwarding(
    settings: Settings, sink: Any
) -> None:
    service, pub = await started(settings.model_copy(update={"outbox_max_rows": 4}), sink)
    statuses: BusRecorder[ServiceStatus] = BusRecorder(topics.SERVICE_STATUS, ROOT)
    await statuses.attach(pub)
    topic = topics.METER.topic("site-1", "pcc", ROOT)
    for i in range(3):  # 2 rows each: the third does not fit
        msg = MeterReading(ts=T0.replace(minute=i), source="t", p_kw=float(i))
        await pub.publish(topic, msg.to_json_bytes())
    outbox = service.state.outbox
    await wait_for(lambda: "FULL" in (service.status().reason or ""), 5, message="degraded FULL")
    assert outbox.pending_rows == 4
    await wait_for(lambda: any(s.state == "degraded" for s in statuses.values), 5, message="status")
    scrape = service.metrics.registry.get_sample_value
    assert scrape("derbus_cloud_sync_outbox_full") == 1.0
    assert scrape("derbus_cloud_sync_messages_refused_total") == 1.0
    assert scrape("derbus_cloud_sync_outbox_fill_ratio") == 1.0
    await service.run_task("forward")  # the cloud takes the backlog: the held message goes in
    await wait_for(lambda: outbox.pending_rows == 2, 5, message="held message appended")
    await service.run_task("forward")
    assert service.state.store.count() == 6
    assert scrape("derbus_cloud_sync_outbox_full") == 0.0
    await wait_for(lambda: service.status().state == "online", 5, message="online again")
    await service.stop()


async def test_group_commit_acks_only_after_the_batch_is_committed(
    settings: Settings, sink: Any
) -> None:
    service, pub = await started(
        settings.model_copy(update={"intake_batch_messages": 3, "intake_batch_ms": 60_000.0}), sink
    )
    bus = service.bus
    assert isinstance(bus, InMemoryBus)
    outbox = service.state.outbox
    append = outbox.append
    unacked_at_commit: list[int] = []

    def recording_append(batch: Any, received_at: float) -> None:
        unacked_at_commit.append(len(bus.unacknowledged))
        append(batch, received_at)

    outbox.append = recording_append
    await publish_readings(pub, range(2))
    await pub.drain()
    assert len(bus.unacknowledged) == 2  # buffered: neither durable nor acknowledged
    assert outbox.pending_rows == 0
    assert meter_points(sink) == []  # InfluxDB gets them after the commit too
    await publish_readings(pub, [2])
    await pub.drain()  # the third message fills the batch: one transaction, then three acks
    assert unacked_at_commit == [3]
    assert outbox.pending_rows == 6
    assert bus.unacknowledged == []
    assert len(meter_points(sink)) == 3
    await service.stop()


async def test_group_commit_flushes_after_the_time_limit(settings: Settings, sink: Any) -> None:
    service, pub = await started(settings.model_copy(update={"intake_batch_ms": 1.0}), sink)
    bus = service.bus
    assert isinstance(bus, InMemoryBus)
    await publish_readings(pub, [0])
    await pub.drain()
    await wait_for(lambda: service.state.outbox.pending_rows == 2, 5, message="timer commit")
    await wait_for(lambda: bus.unacknowledged == [], 5, message="acked after the commit")
    await service.stop()


async def test_a_failing_outbox_commit_acks_nothing_and_degrades(
    settings: Settings, sink: Any
) -> None:
    service, pub = await started(settings.model_copy(update={"intake_batch_ms": 1.0}), sink)
    bus = service.bus
    assert isinstance(bus, InMemoryBus)
    outbox = service.state.outbox
    append = outbox.append

    def broken(batch: Any, received_at: float) -> None:
        raise StorageError("outbox append failed: disk I/O error")

    outbox.append = broken
    await publish_readings(pub, range(3))
    await pub.drain()
    await wait_for(
        lambda: "cannot write the outbox" in (service.status().reason or ""), 5, message="degraded"
    )
    # the three readings wait unacknowledged (so may cloud_sync's own `degraded` status, which
    # it archives too: whether it is in by now depends on scheduling)
    assert [m.topic for m in bus.unacknowledged].count(PCC) == 3
    assert outbox.pending_rows == 0
    assert meter_points(sink) == []
    outbox.append = append  # the disk is back: the retry commits, then acknowledges
    await wait_for(lambda: bus.unacknowledged == [], 10, message="acked after the retry")
    assert outbox.pending_rows == 6
    await wait_for(lambda: service.status().state == "online", 5, message="online again")
    await service.stop()


async def test_warns_at_the_configured_fill_level(settings: Settings, sink: Any) -> None:
    service, pub = await started(
        settings.model_copy(update={"outbox_max_rows": 10, "outbox_warn_pct": 50.0}), sink
    )
    await publish_readings(pub, range(3))
    await settle(service, pub)
    assert "above 50 %" in (service.status().reason or "")
    await service.stop()


async def test_kpis_are_published_and_api_shows_the_backlog(settings: Settings, sink: Any) -> None:
    service, pub = await started(settings, sink)
    kpis: BusRecorder[KpiReport] = BusRecorder(topics.KPI, ROOT)
    await kpis.attach(pub, site_id=topics.PLATFORM_SITE, device_id="cloud_sync")
    topic = topics.PV.topic("site-1", "pv", ROOT)
    await pub.publish(topic, PvTelemetry(ts=T0, source="t", generation_kw=1.0).to_json_bytes())
    await settle(service, pub)
    await service.run_task("report")
    await settle(service, pub)
    report = kpis.values[-1]
    assert report.name == "backlog"
    assert report.values["pending_rows"] == 1.0
    assert report.values["rows_in_total"] == 1.0
    app = make_app(service, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        backlog = (await http.get("/backlog")).json()
        assert backlog["pending_rows"] == 1
        assert backlog["target"].startswith("sqlite:///")
        metrics = (await http.get("/metrics")).text
        assert "derbus_cloud_sync_outbox_readings 1.0" in metrics
        assert "derbus_cloud_sync_outbox_oldest_age_seconds" in metrics
        assert "derbus_cloud_sync_readings_out_per_second" in metrics
        done = (await http.post("/sync")).json()
        assert done["rows"] == 1
        assert done["pending_rows"] == 0
    await service.stop()


async def test_sync_endpoint_needs_the_token_when_one_is_set(settings: Settings, sink: Any) -> None:
    service, _ = await started(settings.model_copy(update={"api_token": SecretStr("s3cret")}), sink)
    app = make_app(service, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        assert (await http.post("/sync")).status_code == 401
        ok = await http.post("/sync", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    await service.stop()


def test_every_subscription_is_readable_under_the_generated_broker_acl(
    settings: Settings, sink: Any
) -> None:
    service = build_service(settings, InMemoryBus(), influx=sink)
    rules = acl.user_rules("cloud_sync", ROOT)
    keys = {s["key"] for s in service.subscriptions()}
    assert {"status.kpi", "status.service", "status.dead_letter", "telemetry.meter"} <= keys
    for key in keys:
        topic = topics.by_key(key).topic(topics.PLATFORM_SITE, "peak_shaving", ROOT)
        assert any(
            "read" in rule.access and topic_matches_sub(rule.topic, topic) for rule in rules
        ), f"the broker ACL does not let cloud_sync read {key}"


async def test_observers_see_each_committed_message_once_after_its_ack(
    settings: Settings, sink: Any
) -> None:
    # the slot a per-device sequence-gap detector plugs into
    service, pub = await started(settings, sink)
    bus = service.bus
    assert isinstance(bus, InMemoryBus)
    seen: list[tuple[str, str, int, int]] = []

    def observe(entries: Any) -> None:
        assert bus.unacknowledged == []  # durable and acknowledged before anyone is told
        seen.extend((e.site_id, e.device_id, e.decoded.time_us, e.rows) for e in entries)

    service.state.intake.observers.append(observe)
    for i in range(3):
        msg = MeterReading(ts=T0.replace(minute=i), source="t", p_kw=1.0, v_l1_v=230.0)
        await pub.publish(topics.METER.topic("site-1", f"pcc{i % 2}", ROOT), msg.to_json_bytes())
    await settle(service, pub)
    t0_us = int(T0.timestamp()) * 1_000_000
    assert seen == [("site-1", f"pcc{i % 2}", t0_us + i * 60_000_000, 3) for i in range(3)]
    await service.stop()
