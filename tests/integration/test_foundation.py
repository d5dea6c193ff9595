"""The foundation against real components: PostgreSQL fixtures, broker fixtures, a service over MQTT."""

from __future__ import annotations

import psycopg
import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.http import make_app
from derbus.messages import MeterReading, ServiceStatus, utcnow
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, PostgresServer, wait_for
from derbus.testing.example import EchoSettings, build_echo
from derbus.testing.plugin import BrokerInfo
from derbus.testing.servers import postgres_accepts

pytestmark = pytest.mark.integration


def test_postgres_fixture_is_a_real_server(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE t (x int PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1), (2) ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO t VALUES (2), (3) ON CONFLICT DO NOTHING")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None
    print(f"PostgreSQL {version[0]} at {postgres_url.rsplit('@', 1)[-1]}")


def test_restartable_postgres_stops_and_starts(restartable_postgres: PostgresServer) -> None:
    url = restartable_postgres.url
    assert postgres_accepts(url)
    restartable_postgres.stop()
    assert not postgres_accepts(url)
    restartable_postgres.start()
    assert postgres_accepts(url)


async def test_service_on_the_real_broker(
    mqtt_broker: BrokerInfo, mqtt_settings: MqttSettings
) -> None:
    print(f"broker: {mqtt_broker.origin}")
    service = build_echo(EchoSettings(mqtt=mqtt_settings), MqttBus(mqtt_settings))
    app = make_app(service)
    probe = MqttBus(mqtt_settings)
    await probe.connect()
    statuses: BusRecorder[ServiceStatus] = BusRecorder(topics.SERVICE_STATUS, mqtt_settings.root)
    await statuses.attach(probe)
    async with app.router.lifespan_context(app):
        assert service.ready
        await wait_for(lambda: any(s.state == "online" for s in statuses.values), 10)
        topic = topics.METER.topic("s1", "pcc", mqtt_settings.root)
        await probe.publish(topic, MeterReading(ts=utcnow(), source="t", p_kw=42.0).to_json_bytes())
        await wait_for(lambda: service.state.over == [("s1", "pcc", 42.0)], 10)
    await wait_for(lambda: statuses.values[-1].state == "offline", 10)
    assert statuses.values[-1].reason == "stopped"
    await probe.close()
