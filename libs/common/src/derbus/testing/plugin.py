"""pytest fixtures for real components: MQTT broker, PostgreSQL, a unique topic root per test.

Broker order: `MQTT_TEST_URL`; a broker already on 127.0.0.1:1883; Debian's `mosquitto` started
on a free port; testcontainers when a Docker engine answers. PostgreSQL order:
`POSTGRES_TEST_URL`; a server on 127.0.0.1:5432 (trust auth); a temporary cluster (initdb/pg_ctl).
VictoriaMetrics (InfluxDB write path): Debian's `victoria-metrics` started on a free port.
A component that cannot be had FAILS the test with the reason — it never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlparse

import pytest

from derbus.settings import MqttSettings
from derbus.testing.servers import (
    ComponentUnavailableError,
    MosquittoServer,
    NatsCluster,
    PostgresServer,
    create_database,
    drop_database,
    mqtt_test_settings,
    port_open,
    postgres_accepts,
)
from derbus.testing.victoria import VictoriaMetricsServer


@dataclass(frozen=True)
class BrokerInfo:
    """Where the test broker listens and how it was obtained."""

    host: str
    port: int
    origin: str


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return (
            subprocess.run([docker, "info"], capture_output=True, timeout=5, check=False).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _unavailable(what: str, reason: str) -> None:
    ci = " (CI=true)" if os.environ.get("CI") == "true" else ""
    pytest.fail(
        f"{what} is required by this test and could not be had{ci}: {reason}", pytrace=False
    )


class _Server(Protocol):
    def start(self) -> object: ...
    def cleanup(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _running(server: S, what: str) -> Iterator[S]:
    """`server` started for a fixture and cleaned up after it; a failed start fails the test."""
    try:
        server.start()
    except ComponentUnavailableError as err:
        server.cleanup()
        _unavailable(what, str(err))
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerInfo]:
    """A real MQTT broker for the test session."""
    url = os.environ.get("MQTT_TEST_URL")
    if url:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
        if not port_open(host, port):
            _unavailable("MQTT broker", f"MQTT_TEST_URL={url} does not answer")
        yield BrokerInfo(host, port, "MQTT_TEST_URL")
        return
    if port_open("127.0.0.1", 1883):
        yield BrokerInfo("127.0.0.1", 1883, "local broker on 127.0.0.1:1883")
        return
    server = MosquittoServer()
    try:
        server.start()
    except ComponentUnavailableError as err:
        if _docker_answers():
            yield from _broker_from_container()
            return
        _unavailable("MQTT broker", str(err))
    try:
        yield BrokerInfo(server.host, server.port, f"mosquitto started on port {server.port}")
    finally:
        server.cleanup()


def _broker_from_container() -> Iterator[BrokerInfo]:  # pragma: no cover - needs Docker
    from testcontainers.core.container import DockerContainer

    with (
        DockerContainer("eclipse-mosquitto:2")
        .with_exposed_ports(1883)
        .with_command("mosquitto -c /mosquitto-no-auth.conf") as container
    ):
        yield BrokerInfo(
            container.get_container_host_ip(),
            int(container.get_exposed_port(1883)),
            "testcontainers",
        )


@pytest.fixture
def restartable_broker() -> Iterator[MosquittoServer]:
    """A Mosquitto of this test's own, which the test may stop, kill and restart."""
    yield from _running(MosquittoServer(), "a restartable mosquitto")


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """A 3-node NATS JetStream cluster serving MQTT 3.1.1, of this test's own (nodes killable)."""
    yield from _running(NatsCluster(), "a NATS cluster (nats-server)")


@pytest.fixture
def topic_root() -> str:
    """A topic root unique to this test."""
    return f"dertest/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mqtt_settings(mqtt_broker: BrokerInfo, topic_root: str) -> MqttSettings:
    """Broker settings pointing at the test broker under this test's topic root."""
    return mqtt_test_settings(mqtt_broker.host, mqtt_broker.port, topic_root)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """URL of a real PostgreSQL server (admin database) for the session."""
    url = os.environ.get("POSTGRES_TEST_URL")
    if url:
        if not postgres_accepts(url):
            _unavailable("PostgreSQL", f"POSTGRES_TEST_URL={url} does not accept connections")
        yield url
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if port_open("127.0.0.1", 5432) and postgres_accepts(local):
        yield local
        return
    server = PostgresServer()
    try:
        server.start()
    except ComponentUnavailableError as err:
        server.cleanup()
        _unavailable("PostgreSQL", str(err))
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test (dropped afterwards)."""
    url = create_database(postgres_admin_url)
    try:
        yield url
    finally:
        drop_database(postgres_admin_url, url)


@pytest.fixture
def restartable_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test's own, which the test may stop and start."""
    yield from _running(PostgresServer(), "a restartable PostgreSQL")


@pytest.fixture(scope="session")
def victoria_metrics() -> Iterator[VictoriaMetricsServer]:
    """A real VictoriaMetrics (InfluxDB v2 write API at `.url`, read back with `.export`)."""
    yield from _running(VictoriaMetricsServer(), "VictoriaMetrics (the InfluxDB write-path server)")
