"""cloud_sync on a real broker, a real PostgreSQL and VictoriaMetrics: lossless, de-duplicated, observable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from cloud_sync.__main__ import app as cli
from cloud_sync.service import build_service
from cloud_sync.settings import Settings
from cloud_sync.state import CloudSync
from derbus import topics
from derbus.bus import MqttBus
from derbus.http import make_app
from derbus.messages import (
    BatteryTelemetry,
    DeadLetter,
    KpiReport,
    LoadTelemetry,
    Message,
    MeterReading,
    PriceTelemetry,
    PvTelemetry,
)
from derbus.service import Service
from derbus.settings import DatabaseSettings, MqttSettings
from derbus.storage import influx_points, reading_rows
from derbus.testing import BusRecorder, MosquittoServer, PostgresServer, free_port, wait_for
from derbus.testing.victoria import VictoriaMetricsServer
from derbus.topics import TopicIds, TopicSpec

pytestmark = pytest.mark.integration

Row = tuple[datetime, str, str, str, float]
Published = list[tuple[TopicSpec[Any], str, str, Message]]


def stored_rows(url: str, sites: set[str]) -> list[Row]:
    """Every row of the sites, duplicates included (a list, not a set)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            found = conn.execute(
                "SELECT time, site_id, device_id, metric, value FROM readings"
                " WHERE site_id = ANY(%s)",
                (list(sites),),
            ).fetchall()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return []  # the server is down, or the schema not there yet: nothing readable
    return [(r[0].astimezone(UTC), r[1], r[2], r[3], r[4]) for r in found]


def count_rows(url: str, sites: set[str]) -> int:
    """Rows of the sites (0 while the server is down or the schema missing)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            found = conn.execute(
                "SELECT count(*) FROM readings WHERE site_id = ANY(%s)", (list(sites),)
            ).fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return 0
    return int(found[0]) if found else 0


def expected_rows(published: Published) -> set[Row]:
    return {
        (r.time, r.site_id, r.device_id, r.metric, r.value)
        for spec, site, device, msg in published
        for r in reading_rows(spec, TopicIds(site, device), msg)
    }


def site_messages(site: str, start: datetime, count: int) -> Published:
    """`count` time steps of every telemetry kind for one site (distinct values)."""
    out: Published = []
    for i in range(count):
        ts = start + timedelta(minutes=i)
        k = float(i)
        out += [
            (
                topics.METER,
                site,
                "pcc",
                MeterReading(
                    ts=ts, source="it", p_kw=1.5 + k, q_kvar=0.1 * k, v_l1_v=230.0 + k / 10
                ),
            ),
            (
                topics.PV,
                site,
                "pv",
                PvTelemetry(
                    ts=ts, source="it", generation_kw=2.0 + k / 4, irradiance_w_m2=500.0 + k
                ),
            ),
            (
                topics.BATTERY,
                site,
                "battery",
                BatteryTelemetry(ts=ts, source="it", p_kw=-1.0 + k / 8, soc_pct=40.0 + k),
            ),
            (
                topics.LOAD,
                site,
                "load",
                LoadTelemetry(ts=ts, source="it", p_kw=0.5 + k, kind="total"),
            ),
            (
                topics.PRICE,
                site,
                "grid",
                PriceTelemetry(ts=ts, source="it", price_per_kwh=0.1 + k / 100),
            ),
        ]
    return out


async def publish_all(bus: MqttBus, root: str, published: Published) -> None:
    for spec, site, device, msg in published:
        await bus.publish(spec.topic(site, device, root), msg.to_json_bytes(), qos=1, retain=True)


def sync_settings(tmp_path: Path, mqtt: MqttSettings, db_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "sync",
        "database": DatabaseSettings(database_url=db_url),
        "mqtt": mqtt,
        "client_id": f"cloud-sync-it-{uuid.uuid4().hex[:8]}",
        "interval_s": 0.2,
        "batch_size": 50,
        "kpi_interval_s": 0.5,
        "retry_attempts": 2,
        "retry_initial_delay_s": 0.05,
        "retry_max_delay_s": 0.2,
        "db_connect_timeout_s": 2,
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def both_stores(
    tmp_path: Path,
    mqtt_settings: MqttSettings,
    postgres_url: str,
    victoria_metrics: VictoriaMetricsServer,
) -> Settings:
    """cloud_sync's settings for PostgreSQL and VictoriaMetrics (InfluxDB line protocol)."""
    return sync_settings(
        tmp_path,
        mqtt_settings,
        postgres_url,
        influxdb_url=victoria_metrics.url,
        influxdb_token="test-token",
        influx_flush_interval_ms=100,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
) -> AsyncIterator[tuple[Service[Settings, CloudSync], MqttBus]]:
    """cloud_sync in-process with its production bus set-up, and a publisher on the same root."""
    bus = MqttBus(settings.mqtt, client_id=settings.client_id, manual_ack=True)
    service = build_service(settings, bus)
    await service.start()
    publisher = MqttBus(settings.mqtt)
    await publisher.connect()
    try:
        yield service, publisher
    finally:
        await publisher.close()
        await service.stop()


async def test_readings_reach_postgres_and_victoria_metrics_with_their_values(
    both_stores: Settings,
    mqtt_settings: MqttSettings,
    postgres_url: str,
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    run = uuid.uuid4().hex[:8]
    sites = {f"it-{run}-a", f"it-{run}-b"}
    now = datetime.now(UTC).replace(microsecond=0)
    published: Published = []
    for site in sorted(sites):
        published += site_messages(site, now - timedelta(hours=2), 6)
    # one reading of an earlier month: a second partition is created on demand
    old = now.replace(day=1) - timedelta(days=10)
    published.append(
        (topics.METER, f"it-{run}-a", "pcc", MeterReading(ts=old, source="it", p_kw=7.25))
    )
    expected = expected_rows(published)
    async with running(both_stores) as (service, publisher):
        kpis: BusRecorder[KpiReport] = BusRecorder(topics.KPI, mqtt_settings.root)
        await kpis.attach(publisher, site_id=topics.PLATFORM_SITE, device_id="cloud_sync")
        await publish_all(publisher, mqtt_settings.root, published)
        await wait_for(
            lambda: count_rows(postgres_url, sites) >= len(expected),
            20,
            interval=0.1,
            message=f"{len(expected)} rows in PostgreSQL",
        )
        rows = stored_rows(postgres_url, sites)
        assert len(rows) == len(expected)
        assert set(rows) == expected

        # InfluxDB write path: every field of every point, read back from VictoriaMetrics
        points = {
            (
                f"{p.measurement}_{name}",
                p.tags["site_id"],
                p.tags["device_id"],
                int(p.time.timestamp() * 1000),
            ): value
            for spec, site, device, msg in published
            for p in influx_points(spec, TopicIds(site, device), msg)
            for name, value in p.fields.items()
        }
        selector = '{site_id=~"it-' + run + '-.*"}'

        def exported() -> dict[tuple[str, str, str, int], float]:
            got = {}
            for series in victoria_metrics.export(selector):
                labels = series["metric"]
                for ts, value in zip(series["timestamps"], series["values"], strict=True):
                    key = (labels["__name__"], labels["site_id"], labels["device_id"], ts)
                    got[key] = value
            return got

        await wait_for(
            lambda: len(exported()) >= len(points), 20, message="points in VictoriaMetrics"
        )
        assert exported() == pytest.approx(points)

        # partitions: one per month written, nothing left in the default partition
        with psycopg.connect(postgres_url) as conn:
            parts = {
                r[0]
                for r in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'readings'::regclass"
                )
            }
            in_default = conn.execute("SELECT count(*) FROM readings_default").fetchone()
        assert f"readings_y{now:%Y}m{now:%m}" in parts
        assert f"readings_y{old:%Y}m{old:%m}" in parts
        assert in_default == (0,)

        # backlog reported on the status topic and /metrics
        await wait_for(
            lambda: any(k.values["rows_out_total"] >= len(expected) for k in kpis.values),
            10,
            message="backlog KPI",
        )
        app = make_app(service, manage_lifecycle=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            metrics = (await http.get("/metrics")).text
        assert "derbus_cloud_sync_outbox_readings 0.0" in metrics
        assert "derbus_cloud_sync_influx_points_failed_total 0.0" in metrics
        assert service.status().state == "online"


async def test_malformed_telemetry_is_dead_lettered_and_counted_while_the_rest_flows(
    tmp_path: Path, mqtt_settings: MqttSettings, postgres_url: str
) -> None:
    site = f"it-{uuid.uuid4().hex[:8]}"
    good = site_messages(site, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1), 3)
    async with running(sync_settings(tmp_path, mqtt_settings, postgres_url)) as (service, pub):
        letters: BusRecorder[DeadLetter] = BusRecorder(topics.DEAD_LETTER, mqtt_settings.root)
        await letters.attach(pub)
        bad_topic = topics.BATTERY.topic(site, "battery", mqtt_settings.root)
        await publish_all(pub, mqtt_settings.root, good[:5])
        await pub.publish(
            bad_topic, b'{"ts": "2026-06-01T12:00:00Z", "source": "x", "soc_pct": 140}'
        )
        await pub.publish(bad_topic, b"\xff not json")
        await publish_all(pub, mqtt_settings.root, good[5:])
        expected = expected_rows(good)
        await wait_for(
            lambda: count_rows(postgres_url, {site}) >= len(expected),
            20,
            interval=0.1,
            message="the valid readings in PostgreSQL",
        )
        assert set(stored_rows(postgres_url, {site})) == expected
        await letters.wait(2)
        assert {d.original_topic for d in letters.values} == {bad_topic}
        assert any("soc_pct" in d.error for d in letters.values)
        invalid = service.metrics.registry.get_sample_value(
            "derbus_messages_invalid_total", {"topic": "telemetry.battery"}
        )
        assert invalid == 2


async def every_surface(
    service: Service[Settings, CloudSync], kpis: BusRecorder[KpiReport]
) -> dict[str, Any]:
    """What `/healthz`, `/backlog`, the latest KPI report and `cloud-sync --status` say now."""
    app = make_app(service, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        health = (await http.get("/healthz")).json()
        backlog = (await http.get("/backlog")).json()
    status = CliRunner().invoke(
        cli, ["--data-dir", str(service.settings.data_dir), "--status"], catch_exceptions=False
    )
    return {
        "healthz": health,
        "backlog": backlog,
        "kpi": kpis.values[-1].values if kpis.values else {},
        "status": status.output,
    }


async def test_postgres_outage_loses_and_doubles_nothing(
    tmp_path: Path, mqtt_settings: MqttSettings, restartable_postgres: PostgresServer
) -> None:
    pg = restartable_postgres
    site = f"it-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    before, during = (
        site_messages(site, start, 4),
        site_messages(site, start + timedelta(hours=1), 6),
    )
    async with running(sync_settings(tmp_path, mqtt_settings, pg.url)) as (service, pub):
        forwarder = service.state.forwarder
        kpis: BusRecorder[KpiReport] = BusRecorder(topics.KPI, mqtt_settings.root)
        await kpis.attach(pub, site_id=topics.PLATFORM_SITE, device_id="cloud_sync")
        await publish_all(pub, mqtt_settings.root, before)
        first = expected_rows(before)
        await wait_for(
            lambda: count_rows(pg.url, {site}) >= len(first), 20, interval=0.1, message="first rows"
        )

        pg.stop()
        await publish_all(pub, mqtt_settings.root, during[:15])
        await wait_for(
            lambda: "cloud_db" in (service.status().reason or ""), 20, message="degraded: cloud_db"
        )
        await publish_all(pub, mqtt_settings.root, during[15:])  # intake goes on meanwhile
        outage = expected_rows(during)
        await wait_for(
            lambda: forwarder.outbox.pending_rows == len(outage),
            20,
            message="every outage row in the outbox",
        )
        assert forwarder.last_error is not None

        # every status surface says the same during the outage: degraded, because of cloud_db
        n_kpis = len(kpis.values)
        await wait_for(lambda: len(kpis.values) > n_kpis, 10, message="a KPI report in the outage")
        said = await every_surface(service, kpis)
        assert said["healthz"]["status"] == "degraded"
        assert "cloud_db" in said["healthz"]["reason"]
        assert said["backlog"]["state"] == "degraded"
        assert set(said["backlog"]["reasons"]) == {"cloud_db"}
        assert said["backlog"]["reasons"]["cloud_db"] in said["healthz"]["reason"]
        assert (said["kpi"]["state_code"], said["kpi"]["cloud_db_failing"]) == (1.0, 1.0)
        assert "degraded (cloud_db:" in said["status"]

        pg.start()
        everything = first | outage
        await wait_for(
            lambda: count_rows(pg.url, {site}) >= len(everything),
            30,
            interval=0.1,
            message="all rows",
        )
        rows = stored_rows(pg.url, {site})
        assert len(rows) == len(everything)  # nothing doubled
        assert set(rows) == everything  # nothing lost, every value right
        await wait_for(lambda: forwarder.outbox.pending_rows == 0, 10, message="outbox empty")
        await wait_for(lambda: service.status().state == "online", 10, message="online again")

        # … and all say so once it is over
        n_kpis = len(kpis.values)
        await wait_for(lambda: len(kpis.values) > n_kpis, 10, message="a KPI report after")
        said = await every_surface(service, kpis)
        assert said["healthz"]["status"] == "online"
        assert (said["backlog"]["state"], said["backlog"]["reasons"]) == ("online", {})
        assert (said["kpi"]["state_code"], said["kpi"]["cloud_db_failing"]) == (2.0, 0.0)
        assert "| online" in said["status"]


@pytest.fixture
def sync_process_env(
    tmp_path: Path, restartable_broker: MosquittoServer, postgres_url: str, topic_root: str
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLOUD_SYNC_", "INFLUXDB_", "MQTT_"))
    }
    env.pop("SUPABASE_URL", None)
    env.update(
        MQTT_HOST=restartable_broker.host,
        MQTT_PORT=str(restartable_broker.port),
        MQTT_ROOT=topic_root,
        CLOUD_SYNC_CLIENT_ID=f"cloud-sync-kill-{uuid.uuid4().hex[:8]}",
        CLOUD_SYNC_DATA_DIR=str(tmp_path / "sync"),
        CLOUD_SYNC_API_PORT=str(free_port()),
        DATABASE_URL=postgres_url,
        CLOUD_SYNC_BATCH_SIZE="40",
        CLOUD_SYNC_INTERVAL_S="0.05",
        CLOUD_SYNC_KPI_INTERVAL_S="60",
        CLOUD_SYNC_LOG_LEVEL="WARNING",
    )
    return env


def start_sync(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cloud_sync"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_ready(env: dict[str, str], proc: subprocess.Popen[bytes], log: Path) -> None:
    url = f"http://127.0.0.1:{env['CLOUD_SYNC_API_PORT']}/readyz"

    async def ready() -> bool:
        assert proc.poll() is None, f"cloud_sync exited: {log.read_text()[-2000:]}"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(url, timeout=1)).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(ready, 30, interval=0.1, message="cloud_sync /readyz")


async def test_sigkill_mid_batch_then_restart_loses_and_doubles_nothing(
    tmp_path: Path, sync_process_env: dict[str, str], postgres_url: str
) -> None:
    env = sync_process_env
    site = f"it-{uuid.uuid4().hex[:8]}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)
    published = [
        (
            topics.METER,
            site,
            "pcc",
            MeterReading(
                ts=start + timedelta(seconds=i),
                source="it",
                p_kw=i / 10,
                q_kvar=-i / 100,
                v_l1_v=220 + i / 1000,
            ),
        )
        for i in range(900)
    ]
    expected = expected_rows(published)  # type: ignore[arg-type]
    log = tmp_path / "cloud_sync.log"
    proc = start_sync(env, log)
    try:
        await wait_ready(env, proc, log)
        mqtt = MqttSettings(
            host=env["MQTT_HOST"], port=int(env["MQTT_PORT"]), root=env["MQTT_ROOT"]
        )
        publisher = MqttBus(mqtt)
        await publisher.connect()

        async def publish_paced(part: list[Any]) -> None:
            for n in range(0, len(part), 30):
                await publish_all(publisher, mqtt.root, part[n : n + 30])
                await asyncio.sleep(0.02)

        # the first half, until forwarding is under way; the kill comes as the second half starts
        # (killing at "300 rows stored" while all 900 were being sent once came after cloud_sync
        # had stored everything: nothing left to lose)
        half = len(published) // 2
        await publish_paced(published[:half])
        await wait_for(
            lambda: count_rows(postgres_url, {site}) >= 300, 30, interval=0.1, message="forwarding"
        )
        feeding = asyncio.create_task(publish_paced(published[half:]))
        await asyncio.sleep(0)  # its first messages are on their way
        proc.kill()  # SIGKILL while messages arrive and batches are being forwarded
        proc.wait(10)
        at_kill = count_rows(postgres_url, {site})
        await feeding
        assert at_kill < len(expected), "the kill came after everything was stored"

        proc = start_sync(env, log)
        await wait_ready(env, proc, log)
        await wait_for(
            lambda: count_rows(postgres_url, {site}) >= len(expected),
            40,
            interval=0.1,
            message=f"{len(expected)} rows after the restart",
        )
        async with httpx.AsyncClient() as http:
            port = env["CLOUD_SYNC_API_PORT"]

            async def drained() -> bool:
                backlog = (await http.get(f"http://127.0.0.1:{port}/backlog")).json()
                return bool(backlog["pending_rows"] == 0)

            await wait_for(drained, 10, message="outbox empty")
        rows = stored_rows(postgres_url, {site})
        assert len(rows) == len(expected)  # nothing doubled
        assert set(rows) == expected  # nothing lost
        await publisher.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)


async def test_edge_simulator_readings_reach_both_stores(
    both_stores: Settings,
    mqtt_settings: MqttSettings,
    postgres_url: str,
    victoria_metrics: VictoriaMetricsServer,
) -> None:
    from edge_simulator.service import SimClock
    from edge_simulator.service import build_service as build_simulator
    from edge_simulator.settings import Settings as SimSettings

    root = mqtt_settings.root
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    async with running(both_stores) as (_, probe):
        recorders = [BusRecorder(spec, root) for spec in topics.TELEMETRY]
        for rec in recorders:
            await rec.attach(probe)
        sim_settings = SimSettings(mqtt=mqtt_settings, api_port=0, sites=2, interval_s=0.05)
        simulator = build_simulator(
            sim_settings, MqttBus(mqtt_settings), clock=SimClock(start, speed=60)
        )
        await simulator.start()
        await wait_for(lambda: len(recorders[0].messages) >= 10, 20, message="simulated meters")
        await simulator.stop()

        def published_now() -> Published:
            out: Published = []
            for rec in recorders:
                for topic, msg in rec.messages:
                    ids = rec.spec.parse(topic, root)
                    assert ids is not None
                    out.append((rec.spec, ids.site_id, ids.device_id, msg))
            return out

        sites = {site for _, site, _, _ in published_now()}
        assert len(sites) == 2
        # The probe and cloud_sync receive the simulator's last messages independently: wait until
        # both have them all, then every stored row must be exactly one published reading.
        await wait_for(
            lambda: set(stored_rows(postgres_url, sites)) == expected_rows(published_now()),
            20,
            interval=0.2,
            message="every simulated reading in PostgreSQL, nothing else",
        )
        published = published_now()
        expected = expected_rows(published)
        rows = stored_rows(postgres_url, sites)
        assert len(rows) == len(expected), "no reading stored twice"
        meter = {
            (site, int(msg.ts.timestamp() * 1000)): msg.p_kw  # type: ignore[attr-defined]
            for spec, site, _, msg in published
            if spec is topics.METER
        }
        series = '{__name__="meter_p_kw", site_id=~"' + "|".join(sorted(sites)) + '"}'

        def exported() -> dict[tuple[str, int], float]:
            return {
                (s["metric"]["site_id"], ts): v
                for s in victoria_metrics.export(series)
                for ts, v in zip(s["timestamps"], s["values"], strict=True)
            }

        # site ids of the simulator are not unique to this test: check ours are all there
        await wait_for(lambda: meter.keys() <= exported().keys(), 20, message="meter_p_kw in VM")
        got = exported()
        assert {k: got[k] for k in meter} == pytest.approx(meter)
