"""Security against real components: a Mosquitto with the generated users and ACL, REST tokens."""

from __future__ import annotations

import importlib
import inspect
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from derbus import acl, topics
from derbus.bus import InMemoryBus, make_bus
from derbus.bus.base import Bus, RawMessage
from derbus.bus.mqtt import MqttBus
from derbus.errors import BusError
from derbus.http import TokenDep, make_app
from derbus.messages import MeterReading, SetpointCommand
from derbus.messages.control import Priority
from derbus.service import Service
from derbus.settings import DatabaseSettings, MqttSettings, ServiceSettings
from derbus.testing import (
    ComponentUnavailableError,
    MosquittoServer,
    free_port,
    setpoint_command,
    time_series,
    wait_for,
)
from derbus.testing.example import EchoSettings, build_echo
from derbus.topics import TopicSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EDGE_SITE_USERS = ("site-a", "site-b")  # per-site edge credentials (user name = site id)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass
class SecuredBroker:
    """A broker with anonymous access off, the generated password file and ACL for `root`."""

    server: MosquittoServer
    root: str
    passwords: dict[str, str]

    def settings(self, user: str | None, password: str | None = None) -> MqttSettings:
        return MqttSettings(
            host=self.server.host,
            port=self.server.port,
            root=self.root,
            username=user,
            password=password if password is not None else self.passwords.get(user or ""),
            connect_retries=0,
        )

    def bus(self, user: str | None, password: str | None = None) -> MqttBus:
        return MqttBus(self.settings(user, password))


def _start_broker(extra_conf: str, what: str) -> MosquittoServer:
    """A Mosquitto with anonymous access off and `extra_conf`; the test fails when it cannot."""
    server = MosquittoServer(allow_anonymous=False, extra_conf=extra_conf)
    try:
        server.start()
    except ComponentUnavailableError as err:
        server.cleanup()
        pytest.fail(f"{what}: {err}", pytrace=False)
    return server


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[SecuredBroker]:
    root = f"dertest/{uuid.uuid4().hex[:12]}"
    passwords = {user: acl.new_secret() for user in [*acl.broker_users(), *EDGE_SITE_USERS]}
    acl_file = tmp_path / "acl"
    acl_file.write_text(acl.acl_text(root))
    passwd = tmp_path / "passwd"
    acl.write_password_file(passwd, passwords)
    server = _start_broker(
        f"password_file {passwd}\nacl_file {acl_file}\nsys_interval 1\n",
        "mosquitto is required for the security tests",
    )
    try:
        yield SecuredBroker(server, root, passwords)
    finally:
        server.cleanup()


@pytest.fixture
async def clients(secured_broker: SecuredBroker) -> AsyncIterator[dict[str, MqttBus]]:
    """One connected bus per platform service and the SCADA, each with its own credentials."""
    buses = {u: secured_broker.bus(u) for u in [*acl.PLATFORM_SERVICES, acl.SCADA_USER]}
    for bus in buses.values():
        await bus.connect()
    try:
        yield buses
    finally:
        for bus in buses.values():
            await bus.close()


class Inbox:
    """Everything a bus receives on one filter."""

    def __init__(self) -> None:
        self.messages: list[RawMessage] = []

    @classmethod
    async def on(cls, bus: Bus, topic_filter: str) -> Inbox:
        """A new inbox of what `bus` receives on `topic_filter` (QoS 1), once subscribed."""
        inbox = cls()
        await bus.subscribe(topic_filter, 1, inbox)
        return inbox

    async def __call__(self, message: RawMessage) -> None:
        self.messages.append(message)

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]


def setpoint(value_kw: float = 2.0) -> bytes:
    return setpoint_command(
        value_kw, datetime.now(UTC), priority=Priority.SITE_OPTIMISER
    ).to_json_bytes()


def schedule() -> bytes:
    return time_series([1.0, 0.0], T0, kind="schedule", quantity="battery_p_kw").to_json_bytes()


def meter(p_kw: float) -> bytes:
    return MeterReading(ts=T0, source="test", p_kw=p_kw).to_json_bytes()


async def assert_dropped(
    publisher: MqttBus, seen: Inbox, forbidden: tuple[str, bytes], allowed: tuple[str, bytes]
) -> None:
    """`forbidden` never reaches `seen`: with MQTT 3.1.1 the broker drops it silently, so
    `allowed`, published after it on the same connection, arriving proves it was processed."""
    for topic, payload in (forbidden, allowed):
        await publisher.publish(topic, payload, qos=1)
    await wait_for(lambda: allowed[0] in seen.topics(), 10, message=f"the allowed {allowed[0]}")
    assert forbidden[0] not in seen.topics()


# --- MQTT: authentication -------------------------------------------------------------------------


async def test_anonymous_clients_are_refused(secured_broker: SecuredBroker) -> None:
    with pytest.raises(BusError, match=r"refused the connection.*[Nn]ot authori"):
        await secured_broker.bus(None).connect()


async def test_a_wrong_password_is_refused_and_never_echoed(
    secured_broker: SecuredBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + acl.new_secret()
    with pytest.raises(BusError, match="refused") as err:
        await secured_broker.bus("peak_shaving", wrong).connect()
    assert wrong not in str(err.value)
    assert wrong not in caplog.text
    assert "peak_shaving" in str(err.value)


async def test_each_service_logs_in_with_its_own_password(secured_broker: SecuredBroker) -> None:
    other = secured_broker.passwords["forecaster"]
    with pytest.raises(BusError, match="refused"):
        await secured_broker.bus("peak_shaving", other).connect()
    bus = secured_broker.bus("peak_shaving")
    await bus.connect()
    assert bus.connected
    await bus.close()


# --- MQTT: authorisation ----------------------------------------------------------------------------


async def test_a_service_publishes_its_own_topics_but_not_another_services_setpoints(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    seen = await Inbox.on(clients["scada"], topics.all_topics_filter(root))
    forbidden = topics.SETPOINT.topic("site-1", "battery", root)
    allowed = topics.FORECAST.topic("site-1", "load", root)
    # forecaster may not command a battery
    await assert_dropped(
        clients["forecaster"], seen, (forbidden, setpoint()), (allowed, schedule())
    )
    # The same setpoint from a listed publisher goes through.
    await clients["peak_shaving"].publish(forbidden, setpoint(), qos=1)
    await wait_for(lambda: forbidden in seen.topics(), 10, message="peak_shaving's setpoint")


async def test_a_service_cannot_impersonate_another_services_status(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    seen = await Inbox.on(clients["scada"], topics.SERVICE_STATUS.filter(root=root))
    theirs = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "peak_shaving", root)
    mine = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "load_manager", root)
    await assert_dropped(
        clients["load_manager"], seen, (theirs, b'{"forged": true}'), (mine, b'{"own": true}')
    )


async def test_a_service_reads_only_what_it_subscribes(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    cloud = Inbox()
    # cloud_sync may read battery schedules but not setpoints: the subscription is granted,
    # the broker just never delivers.
    await clients["cloud_sync"].subscribe(topics.SETPOINT.filter(root=root), 1, cloud)
    await clients["cloud_sync"].subscribe(topics.BATTERY_SCHEDULE.filter(root=root), 1, cloud)
    edge = await Inbox.on(clients["edge_simulator"], topics.SETPOINT.filter(root=root))
    set_topic = topics.SETPOINT.topic("site-1", "battery", root)
    schedule_topic = topics.BATTERY_SCHEDULE.topic("site-1", "battery", root)
    await clients["peak_shaving"].publish(set_topic, setpoint(), qos=1)
    await clients["peak_shaving"].publish(schedule_topic, schedule(), qos=1)
    await wait_for(lambda: schedule_topic in cloud.topics(), 10, message="schedule at cloud_sync")
    await wait_for(lambda: set_topic in edge.topics(), 10, message="setpoint at the simulator")
    assert set_topic not in cloud.topics()


async def test_scada_reads_everything_commands_devices_but_cannot_forge_telemetry(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    edge = await Inbox.on(clients["edge_simulator"], topics.SETPOINT.filter(root=root))
    seen = await Inbox.on(clients["scada"], topics.all_topics_filter(root))
    peak = await Inbox.on(clients["peak_shaving"], topics.METER.filter(root=root))
    forged = topics.METER.topic("site-1", "pcc", root)
    command = topics.SETPOINT.topic("site-1", "battery", root)
    await clients["scada"].publish(forged, meter(99.0), qos=1)
    await clients["scada"].publish(command, setpoint(-1.0), qos=1)
    await wait_for(lambda: command in edge.topics(), 10, message="the SCADA setpoint")
    await clients["edge_simulator"].publish(forged, meter(1.5), qos=1)
    await wait_for(lambda: forged in seen.topics(), 10, message="the simulator's reading at SCADA")
    await wait_for(lambda: forged in peak.topics(), 10, message="the simulator's reading")
    assert [MeterReading.model_validate_json(m.payload).p_kw for m in peak.messages] == [1.5]


async def test_a_service_status_and_last_will_pass_the_acl(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    seen = await Inbox.on(clients["scada"], topics.SERVICE_STATUS.filter(root=root))
    settings = EchoSettings(mqtt=secured_broker.settings("peak_shaving"))
    bus = MqttBus(settings.mqtt)
    service = Service("peak_shaving", settings, bus)
    await service.start()
    status_topic = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "peak_shaving", root)

    def states() -> list[str]:
        return [
            topics.SERVICE_STATUS.model.model_validate_json(m.payload).state
            for m in seen.messages
            if m.topic == status_topic
        ]

    await wait_for(lambda: "online" in states(), 10, message="online status")
    await bus.abort()  # as a crash: the broker publishes the last will with the user's rights
    await wait_for(lambda: states()[-1] == "offline", 15, message="the last will")


def test_the_compose_healthcheck_user_reads_the_broker_uptime(
    secured_broker: SecuredBroker,
) -> None:
    server = secured_broker.server
    cmd = [
        "mosquitto_sub",
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-u",
        "healthcheck",
        "-t",
        "$SYS/broker/uptime",
        "-C",
        "1",
        "-W",
        "5",
    ]
    ok = subprocess.run(
        [*cmd, "-P", secured_broker.passwords["healthcheck"]],
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert b"seconds" in ok.stdout
    refused = subprocess.run([*cmd, "-P", "wrong"], capture_output=True, timeout=15, check=False)
    assert refused.returncode != 0


async def test_the_shipped_broker_config_starts_with_auth_and_the_acl(tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto.conf as shipped, only its container paths and port moved."""
    import getpass

    from derbus.testing.servers import require_binary, stop_process, wait_port

    root = topics.DEFAULT_ROOT
    passwords = {u: acl.new_secret() for u in acl.broker_users()}
    config_dir, data_dir = tmp_path / "config", tmp_path / "data"
    config_dir.mkdir()
    data_dir.mkdir()
    (config_dir / "acl").write_text((REPO / "deploy/mosquitto/acl").read_text())
    acl.write_password_file(config_dir / "passwd", passwords)
    port = free_port()
    text = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    assert "\nlistener 1883\n" in text
    text = text.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    text = text.replace("/mosquitto/config/", f"{config_dir}/").replace(
        "/mosquitto/data/", f"{data_dir}/"
    )
    text += f"user {getpass.getuser()}\n"  # the container runs as `mosquitto`; here as ourselves
    (config_dir / "mosquitto.conf").write_text(text)
    proc = subprocess.Popen(
        [require_binary("mosquitto"), "-c", str(config_dir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port("127.0.0.1", port, 10.0, "mosquitto with the shipped config", proc)
        base = MqttSettings(host="127.0.0.1", port=port, root=root, connect_retries=0)

        def login(user: str) -> MqttSettings:
            return MqttSettings(
                host="127.0.0.1",
                port=port,
                root=root,
                connect_retries=0,
                username=user,
                password=passwords[user],
            )

        with pytest.raises(BusError, match="refused"):
            await MqttBus(base).connect()
        scada = MqttBus(login("scada"))
        await scada.connect()
        seen = await Inbox.on(scada, topics.all_topics_filter(root))
        gateway = MqttBus(login("meter_gateway"))
        await gateway.connect()
        forbidden = topics.PRICE.topic("site-1", "grid", root)  # only the simulator prices
        allowed = topics.METER.topic("site-1", "pcc", root)
        await gateway.publish(forbidden, meter(1.0), qos=1)
        await gateway.publish(allowed, meter(2.0), qos=1)
        await wait_for(lambda: allowed in seen.topics(), 10, message="the gateway's reading")
        assert forbidden not in seen.topics()
        await gateway.close()
        await scada.close()
    finally:
        stop_process(proc)


# --- MQTT over TLS ----------------------------------------------------------------------------------


def _make_certs(folder: Path, clients: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """The CA, server certificate and key that `derbus certs` writes (ca, cert, key)."""
    from typer.testing import CliRunner

    from derbus.cli import app

    args = ["certs", "--out-dir", str(folder), "--host", "127.0.0.1", "--host", "localhost"]
    for name in clients:
        args += ["--client", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


def _tls_listener(conf: Path, port: int, ca: Path, cert: Path, key: Path) -> str:
    """The shipped config's commented TLS listener block, uncommented and pointed at test files."""
    lines = conf.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#listener 8883"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#") or line.startswith("# "):
            break
        block.append(line[1:])
    text = "\n".join(block) + "\n"
    for old, new in (
        ("8883", f"{port} 127.0.0.1"),
        ("/mosquitto/config/certs/ca.crt", str(ca)),
        ("/mosquitto/config/certs/server.crt", str(cert)),
        ("/mosquitto/config/certs/server.key", str(key)),
    ):
        assert old in text, f"the shipped TLS listener lacks {old}"
        text = text.replace(old, new)
    return text


async def test_the_tls_listener_option_accepts_service_credentials(tmp_path: Path) -> None:
    ca, cert, key = _make_certs(tmp_path)
    root = f"dertest/{uuid.uuid4().hex[:12]}"
    passwords = {"scada": acl.new_secret()}
    (tmp_path / "acl").write_text(acl.acl_text(root))
    acl.write_password_file(tmp_path / "passwd", passwords)
    tls_port = free_port()
    listener = _tls_listener(REPO / "deploy/mosquitto/mosquitto.conf", tls_port, ca, cert, key)
    server = _start_broker(
        f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n{listener}",
        "mosquitto with TLS could not start",
    )
    try:
        settings = MqttSettings(
            host="127.0.0.1",
            port=tls_port,
            root=root,
            tls=True,
            ca_file=str(ca),
            username="scada",
            password=passwords["scada"],
            connect_retries=0,
        )
        bus = MqttBus(settings)
        await bus.connect()
        inbox = await Inbox.on(bus, topics.SETPOINT.filter(root=root))
        topic = topics.SETPOINT.topic("site-1", "battery", root)
        await bus.publish(topic, setpoint(), qos=1)
        await wait_for(lambda: topic in inbox.topics(), 10, message="a setpoint over TLS")
        await bus.close()
        with pytest.raises(BusError):
            await MqttBus(settings.model_copy(update={"ca_file": None})).connect()
    finally:
        server.cleanup()


# --- REST: bearer tokens on state-changing endpoints, secrets never shown --------------------------

TOKEN = "rest-token-" + uuid.uuid4().hex
BROKER_PW = "broker-pw-" + uuid.uuid4().hex
DB_PW = "db-pw-" + uuid.uuid4().hex


@pytest.fixture
def echo_client() -> Iterator[TestClient]:
    settings = EchoSettings(api_token=TOKEN, mqtt=MqttSettings(username="echo", password=BROKER_PW))
    service = build_echo(settings, InMemoryBus())
    router = APIRouter()

    @router.post("/setpoints", status_code=202)
    def post_setpoint(command: SetpointCommand, _auth: TokenDep) -> dict[str, str]:
        return {"accepted": command.setpoint_id}

    service.include_router(router)
    with TestClient(make_app(service)) as client:
        yield client


def _setpoint_json() -> dict[str, Any]:
    return {
        "ts": datetime.now(UTC).isoformat(),
        "source": "scada",
        "target": "battery_p_kw",
        "value": 1.0,
        "unit": "kW",
        "ttl_s": 60,
    }


def test_setpoint_needs_the_bearer_token(echo_client: TestClient) -> None:
    missing = echo_client.post("/setpoints", json=_setpoint_json())
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = echo_client.post(
        "/setpoints", json=_setpoint_json(), headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403
    basic = echo_client.post(
        "/setpoints", json=_setpoint_json(), headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert basic.status_code in (401, 403)
    right = echo_client.post(
        "/setpoints", json=_setpoint_json(), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert right.status_code == 202
    assert right.json()["accepted"]


def test_config_change_needs_the_token_health_stays_open(echo_client: TestClient) -> None:
    assert echo_client.put("/config", json={"limit_kw": 6}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert echo_client.put("/config", json={"limit_kw": 6}, headers=auth).status_code == 200
    assert echo_client.get("/healthz").status_code == 200
    assert echo_client.get("/readyz").status_code == 200


def test_config_and_errors_never_show_secrets(
    echo_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = echo_client.get("/config").text
    assert "echo" in body
    for secret in (TOKEN, BROKER_PW):
        assert secret not in body
    refused = echo_client.put(
        "/config", json={"api_token": "new-" + TOKEN}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert refused.status_code == 422
    assert TOKEN not in refused.text
    wrong = echo_client.post(
        "/setpoints", json=_setpoint_json(), headers={"Authorization": f"Bearer {TOKEN}x"}
    )
    assert TOKEN not in wrong.text
    for secret in (TOKEN, BROKER_PW):
        assert secret not in caplog.text


def test_database_url_password_is_redacted() -> None:
    class DbSettings(EchoSettings):
        database: DatabaseSettings

    settings = DbSettings(
        api_token=TOKEN,
        database=DatabaseSettings(database_url=f"postgresql://derbus:{DB_PW}@db:5432/derbus"),
    )
    service = build_echo(settings, InMemoryBus())
    with TestClient(make_app(service, manage_lifecycle=False)) as client:
        body = client.get("/config").text
    assert DB_PW not in body
    assert TOKEN not in body


# Every committed service: each state-changing route refuses a missing or wrong token.


def _build(name: str, tmp_path: Path) -> Service[Any, Any]:
    if not (REPO / "services" / name / "src" / name / "service.py").exists():
        pytest.fail(f"services/{name} has no service.py yet: its REST security cannot be checked")
    module = importlib.import_module(f"{name}.service")
    settings_module = importlib.import_module(f"{name}.settings")
    cls = next(
        c
        for _, c in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c.__module__ == settings_module.__name__
    )
    settings = cls(
        data_dir=tmp_path, api_token=TOKEN, mqtt=MqttSettings(username=name, password=BROKER_PW)
    )
    service: Service[Any, Any] = module.build_service(settings, InMemoryBus())
    return service


@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
def test_every_state_changing_route_of_a_service_needs_the_token(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = _build(name, tmp_path)
    app = make_app(service, manage_lifecycle=False)
    routes = [
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods - {"GET", "HEAD", "OPTIONS"}
    ]
    assert ("PUT", "/config") in routes
    with TestClient(app) as client:
        for method, path in routes:
            url = path.replace("{", "").replace("}", "")  # path parameters become literals
            missing = client.request(method, url, json={})
            assert missing.status_code == 401, f"{name}: {method} {path} without a token"
            wrong = client.request(method, url, json={}, headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 403, f"{name}: {method} {path} with a wrong token"
        body = client.get("/config").text
    assert TOKEN not in body
    assert BROKER_PW not in body
    assert TOKEN not in caplog.text
    assert BROKER_PW not in caplog.text


# Every committed service runs under its own broker user and ACL.


@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
async def test_each_service_runs_under_its_own_user_and_acl(
    name: str, secured_broker: SecuredBroker, tmp_path: Path
) -> None:
    if not (REPO / "services" / name / "src" / name / "service.py").exists():
        pytest.fail(f"services/{name} has no service.py yet: it cannot run under the ACL")
    root = secured_broker.root
    scada = secured_broker.bus("scada")
    await scada.connect()
    seen = await Inbox.on(scada, topics.all_topics_filter(root))
    module = importlib.import_module(f"{name}.service")
    settings_module = importlib.import_module(f"{name}.settings")
    cls = next(
        c
        for _, c in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c.__module__ == settings_module.__name__
    )
    settings = cls(data_dir=tmp_path, mqtt=secured_broker.settings(name))
    service: Service[Any, Any] = module.build_service(settings, MqttBus(settings.mqtt))
    status = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, name, root)
    await service.start()
    try:
        assert service.ready
        await wait_for(lambda: status in seen.topics(), 15, message=f"{name}'s online status")
    finally:
        await service.stop()
        await scada.close()


# --- Secure by default: every forbidden publish, tried with a real client -------------------------

# (user, topic kind, site, device): each must be dropped by the broker. Sites `site-a`/`site-b`
# log in with their per-site edge credentials (pattern lines with %u).
FORBIDDEN: list[tuple[str, TopicSpec[Any], str, str]] = [
    ("cloud_sync", topics.KPI, "site-1", "peak_shaving"),  # another controller's KPI
    ("peak_shaving", topics.KPI, "site-1", "load_manager"),
    ("load_manager", topics.KPI, topics.PLATFORM_SITE, "cloud_sync"),
    ("forecaster", topics.KPI, "site-1", "forecaster"),  # not a KPI publisher at all
    ("load_manager", topics.SERVICE_STATUS, topics.PLATFORM_SITE, "peak_shaving"),
    ("forecaster", topics.SETPOINT, "site-1", "battery"),
    ("cloud_sync", topics.METER, "site-1", "pcc"),
    ("scada", topics.METER, "site-1", "pcc"),
    ("site-a", topics.METER, "site-b", "pcc"),  # another site's telemetry
    ("site-a", topics.PV, "site-b", "pv"),
    ("site-a", topics.SETPOINT_ACK, "site-b", "battery"),
    ("site-a", topics.SETPOINT, "site-a", "battery"),  # commands are read, never written
    ("site-a", topics.PRICE, "site-a", "grid"),  # only the simulator prices
    ("site-a", topics.SERVICE_STATUS, topics.PLATFORM_SITE, "meter_gateway"),
    ("site-a", topics.KPI, "site-a", "peak_shaving"),
]


def _forbidden_id(case: tuple[str, TopicSpec[Any], str, str]) -> str:
    user, spec, site, device = case
    return f"{user}->{site}/{spec.key}/{device}"


@pytest.mark.parametrize("case", FORBIDDEN, ids=_forbidden_id)
async def test_each_forbidden_publish_is_dropped_by_the_broker(
    case: tuple[str, TopicSpec[Any], str, str], secured_broker: SecuredBroker
) -> None:
    user, spec, site, device = case
    root = secured_broker.root
    scada = secured_broker.bus("scada")
    client = secured_broker.bus(user)
    await scada.connect()
    await client.connect()
    try:
        seen = await Inbox.on(scada, topics.all_topics_filter(root))
        forbidden = spec.topic(site, device, root)
        # A publish this user may make, sent after the forbidden one on the same connection: once
        # it arrives, the broker has handled (and dropped) the forbidden one.
        marker = (
            topics.METER.topic(user, "pcc", root)
            if user in EDGE_SITE_USERS
            else topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, user, root)
        )
        if user == "scada":
            marker = topics.SETPOINT.topic("site-1", "marker", root)
        await client.publish(forbidden, meter(1.0), qos=1)
        await client.publish(marker, meter(2.0), qos=1)
        await wait_for(lambda: marker in seen.topics(), 10, message=f"{user}'s allowed publish")
        assert forbidden not in seen.topics()
    finally:
        await client.close()
        await scada.close()


async def test_a_controller_publishes_its_own_kpi(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    seen = await Inbox.on(clients["scada"], topics.KPI.filter(root=root))
    for name in ("cloud_sync", "peak_shaving", "load_manager", "voltage_coordinator"):
        site = topics.PLATFORM_SITE if name == "cloud_sync" else "site-1"
        topic = topics.KPI.topic(site, name, root)
        await clients[name].publish(topic, b"{}", qos=1)
        await wait_for(lambda t=topic: t in seen.topics(), 10, message=f"{name}'s own KPI")


async def test_a_site_publishes_its_own_telemetry_and_reads_only_its_own_commands(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    root = secured_broker.root
    site_a = secured_broker.bus("site-a")
    await site_a.connect()
    try:
        seen = await Inbox.on(clients["scada"], topics.all_topics_filter(root))
        # every site's commands asked for; only site-a's may be delivered
        commands = await Inbox.on(site_a, topics.SETPOINT.filter(root=root))
        own = [
            topics.METER.topic("site-a", "pcc", root),
            topics.BATTERY.topic("site-a", "battery", root),
            topics.SETPOINT_ACK.topic("site-a", "battery", root),
            topics.DEVICE_STATUS.topic("site-a", "meter1", root),
        ]
        for topic in own:
            await site_a.publish(topic, meter(1.0), qos=1)
        await wait_for(lambda: set(own) <= set(seen.topics()), 10, message="site-a's telemetry")
        theirs = topics.SETPOINT.topic("site-b", "battery", root)
        mine = topics.SETPOINT.topic("site-a", "battery", root)
        await clients["peak_shaving"].publish(theirs, setpoint(), qos=1)
        await clients["peak_shaving"].publish(mine, setpoint(), qos=1)
        await wait_for(lambda: mine in commands.topics(), 10, message="site-a's own command")
        await wait_for(lambda: theirs in seen.topics(), 10, message="site-b's command published")
        assert theirs not in commands.topics()
    finally:
        await site_a.close()


async def test_an_edge_gateway_on_its_sites_credentials_reports_its_status_at_its_site(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus]
) -> None:
    """`MQTT_STATUS_SITE=<site>`: status, dead letters and the last will of a gateway logged in
    as its site pass the ACL at that site's level; another site's or the platform's do not."""
    root = secured_broker.root
    seen = await Inbox.on(clients["scada"], topics.all_topics_filter(root))
    mqtt = secured_broker.settings("site-a").model_copy(update={"status_site": "site-a"})
    bus = MqttBus(mqtt)
    service = Service("meter_gateway", EchoSettings(mqtt=mqtt), bus)
    await service.start()
    status_topic = topics.SERVICE_STATUS.topic("site-a", "meter_gateway", root)

    def states() -> list[str]:
        return [
            topics.SERVICE_STATUS.model.model_validate_json(m.payload).state
            for m in seen.messages
            if m.topic == status_topic
        ]

    try:
        await wait_for(lambda: "online" in states(), 10, message="the edge gateway's status")
        raw = RawMessage(topics.METER.topic("site-a", "pcc", root), b"{not json", 1, False)
        await service.dead_letter(raw, topics.METER, "not JSON")
        letter = topics.DEAD_LETTER.topic("site-a", "meter_gateway", root)
        await wait_for(lambda: letter in seen.topics(), 10, message="its dead letter")
        forged = [
            topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "meter_gateway", root),
            topics.SERVICE_STATUS.topic("site-b", "meter_gateway", root),
            topics.SERVICE_STATUS.topic("site-a", "peak_shaving", root),
            topics.DEAD_LETTER.topic(topics.PLATFORM_SITE, "meter_gateway", root),
        ]
        offline = service.status().model_copy(update={"state": "offline"}).to_json_bytes()
        for topic in forged:
            await bus.publish(topic, offline, qos=1)
        marker = topics.METER.topic("site-a", "pcc", root)
        await bus.publish(marker, meter(2.0), qos=1)  # after the forged ones, on one connection
        await wait_for(lambda: marker in seen.topics(), 10, message="site-a's reading")
        assert not set(forged) & set(seen.topics())
        await bus.abort()  # a crash: the broker publishes the will with site-a's rights
        await wait_for(lambda: states()[-1] == "offline", 15, message="the last will at site-a")
    finally:
        await service.stop()


def test_derbus_acl_writes_edge_site_passwords_and_a_private_env_file(tmp_path: Path) -> None:
    """The documented flow: a copied (0644) .env.example, then `derbus acl --generate-missing`."""
    from typer.testing import CliRunner

    from derbus.cli import app

    env_file = tmp_path / ".env"
    env_file.write_text((REPO / "deploy/env/.env.example").read_text() + "MQTT_EDGE_SITES=site-a\n")
    env_file.chmod(0o644)
    result = CliRunner().invoke(
        app,
        ["acl", "--env-file", str(env_file), "--out-dir", str(tmp_path), "--generate-missing"],
        env={"MQTT_EDGE_SITES": None},
    )
    assert result.exit_code == 0, result.output
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "MQTT_PASSWORD_EDGE_SITE_A" in result.output
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert "site-a" in users
    assert "scada" in users


def test_a_site_named_like_a_broker_user_is_refused() -> None:
    from derbus.errors import ConfigError

    with pytest.raises(ConfigError, match=r"MQTT_EDGE_SITES.*cloud_sync"):
        acl.edge_sites({"MQTT_EDGE_SITES": "site-1,cloud_sync"})


async def test_client_certificates_from_derbus_certs_log_in_as_their_user(tmp_path: Path) -> None:
    """The shipped TLS block with require_certificate and use_identity_as_username switched on."""
    ca, cert, key = _make_certs(tmp_path, clients=("scada",))
    root = f"dertest/{uuid.uuid4().hex[:12]}"
    (tmp_path / "acl").write_text(acl.acl_text(root))
    acl.write_password_file(tmp_path / "passwd", {"healthcheck": acl.new_secret()})
    tls_port = free_port()
    listener = _tls_listener(REPO / "deploy/mosquitto/mosquitto.conf", tls_port, ca, cert, key)
    for off, on in (
        ("require_certificate false", "require_certificate true"),
        ("use_identity_as_username false", "use_identity_as_username true"),
    ):
        assert off in listener, f"the shipped TLS listener lacks `{off}`"
        listener = listener.replace(off, on)
    server = _start_broker(
        f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n{listener}",
        "mosquitto with TLS could not start",
    )
    try:
        base = MqttSettings(
            host="127.0.0.1", port=tls_port, root=root, tls=True, ca_file=str(ca), connect_retries=0
        )
        with pytest.raises(BusError):  # no client certificate: the handshake fails
            await MqttBus(base).connect()
        for client in ("paho", "gmqtt"):
            settings = base.model_copy(
                update={
                    "cert_file": str(tmp_path / "scada.crt"),
                    "key_file": str(tmp_path / "scada.key"),
                    "client": client,
                    "client_id": f"scada-{client}",
                }
            )
            bus = make_bus(settings, "scada")
            await bus.connect()
            inbox = await Inbox.on(bus, topics.SETPOINT.filter(root=root))
            topic = topics.SETPOINT.topic("site-1", client, root)
            await bus.publish(topic, setpoint(), qos=1)  # scada's right, by its certificate
            await wait_for(lambda t=topic, i=inbox: t in i.topics(), 10, message=f"{client} mTLS")
            await bus.close()
    finally:
        server.cleanup()
    assert (tmp_path / "scada.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600


# --- REST: TLS, and no open API on a network address -----------------------------------------------


async def test_a_service_api_serves_https_with_the_derbus_certs_certificate(
    tmp_path: Path,
) -> None:
    import http.client
    import ssl
    import threading
    import urllib.error
    import urllib.request

    import uvicorn

    ca, cert, key = _make_certs(tmp_path)
    port = free_port()
    settings = EchoSettings(api_port=port, api_tls_cert_file=cert, api_tls_key_file=key)
    service = build_echo(settings, InMemoryBus())
    config = uvicorn.Config(
        make_app(service),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        ssl_certfile=settings.api_tls_cert_file,
        ssl_keyfile=settings.api_tls_key_file,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        await wait_for(lambda: server.started, 20, message="the HTTPS API")
        context = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context) as rsp:
            assert rsp.status == 200
        # plain HTTP is not served on that port: the server drops the connection
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", timeout=5, context=ssl.create_default_context()
            )
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_a_non_loopback_api_without_a_token_refuses_to_start(host: str) -> None:
    from derbus.errors import ConfigError
    from derbus.settings import load_settings

    with pytest.raises(ConfigError, match=r"api_token.*not loopback.*API_ALLOW_OPEN"):
        load_settings(EchoSettings, api_host=host)
    assert EchoSettings(api_host=host, api_token="t").api_host == host
    assert EchoSettings(api_host=host, api_allow_open=True).api_token is None
    assert EchoSettings(api_host="127.0.0.1").api_token is None


# The SCADA bridge under its own user: Sparkplug and Home Assistant topics pass the ACL.


async def test_the_scada_bridge_births_and_discovery_reach_the_scada_through_the_acl(
    secured_broker: SecuredBroker, clients: dict[str, MqttBus], tmp_path: Path
) -> None:
    from scada_bridge.__main__ import link_settings
    from scada_bridge.service import build_service as build_bridge
    from scada_bridge.settings import Settings as BridgeSettings

    settings = BridgeSettings(
        data_dir=tmp_path, mqtt=secured_broker.settings("scada_bridge"), link_check_s=0.1
    )
    seen = await Inbox.on(clients["scada"], "spBv1.0/#")
    await clients["scada"].subscribe(f"{settings.ha_discovery_prefix}/#", 1, seen)
    bridge = build_bridge(
        settings, MqttBus(settings.mqtt), make_link=lambda: MqttBus(link_settings(settings))
    )
    nbirth = f"spBv1.0/{settings.group_id}/NBIRTH/{settings.edge_node_id}"
    await bridge.start()
    try:
        await wait_for(lambda: nbirth in seen.topics(), 15, message="the bridge's NBIRTH")
        reading = topics.METER.topic("site-1", "pcc", secured_broker.root)
        await clients["edge_simulator"].publish(reading, meter(1.5), qos=1)
        await wait_for(
            lambda: any(t.endswith("/config") for t in seen.topics()),
            15,
            message="a Home Assistant discovery config",
        )
    finally:
        await bridge.stop()
