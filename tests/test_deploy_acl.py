"""The broker ACL generated from the catalogue: who may write and read what (no broker needed)."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from derbus import acl, topics
from derbus.bus.memory import InMemoryBus
from derbus.settings import ServiceSettings
from derbus.topics import PLATFORM_SITE, TopicSpec

REPO = Path(__file__).resolve().parents[1]
ROOT = "der/v1"
SERVICES = acl.PLATFORM_SERVICES


def may(user: str, access: str, topic: str, root: str = ROOT) -> bool:
    """Evaluate the generated ACL as Mosquitto does: any matching line with the access grants it."""
    return any(
        access in rule.access and topic_matches_sub(rule.topic, topic)
        for rule in acl.user_rules(user, root)
    )


def own_or_other(spec: TopicSpec[Any], user: str) -> str:
    """A concrete topic of the spec; for platform-wide specs, on the user's own device level."""
    if acl.EVERY_SERVICE in spec.publishers:
        return spec.topic(PLATFORM_SITE, user, root=ROOT)
    if spec.own_device:
        return spec.topic("site-1", user, root=ROOT)
    return spec.topic("site-1", "battery", root=ROOT)


@pytest.mark.parametrize("user", [*SERVICES, acl.SCADA_USER])
@pytest.mark.parametrize("spec", topics.CATALOGUE, ids=lambda s: s.key)
def test_a_user_writes_exactly_the_specs_it_publishes(spec: TopicSpec[Any], user: str) -> None:
    expected = user in spec.publishers or (
        acl.EVERY_SERVICE in spec.publishers and user != acl.SCADA_USER
    )
    assert may(user, "write", own_or_other(spec, user)) is expected


@pytest.mark.parametrize("user", SERVICES)
@pytest.mark.parametrize("spec", topics.CATALOGUE, ids=lambda s: s.key)
def test_a_service_reads_exactly_the_specs_it_subscribes(spec: TopicSpec[Any], user: str) -> None:
    assert may(user, "read", own_or_other(spec, user)) is (user in spec.subscribers)


@pytest.mark.parametrize("user", SERVICES)
def test_status_and_dead_letters_only_on_the_services_own_device_level(user: str) -> None:
    other = next(s for s in SERVICES if s != user)
    for spec in (topics.SERVICE_STATUS, topics.DEAD_LETTER):
        assert may(user, "write", spec.topic(PLATFORM_SITE, user, root=ROOT))
        assert not may(user, "write", spec.topic(PLATFORM_SITE, other, root=ROOT))
        assert not may(user, "write", spec.topic("site-1", user, root=ROOT))


@pytest.mark.parametrize("spec", [s for s in topics.CATALOGUE if s.own_device], ids=str)
def test_own_device_specs_are_written_only_on_the_publishers_own_device(
    spec: TopicSpec[Any],
) -> None:
    for user in spec.publishers:
        other = next(p for p in spec.publishers if p != user)
        assert may(user, "write", spec.topic("site-1", user, root=ROOT))
        assert not may(user, "write", spec.topic("site-1", other, root=ROOT))


def mosquitto_pattern_may(site: str, access: str, topic: str) -> bool:
    """The edge pattern lines as Mosquitto applies them to user `site` (%u substituted)."""
    return any(
        access in r.access and topic_matches_sub(r.topic.replace("%u", site), topic)
        for r in acl.edge_rules(ROOT)
    )


def test_an_edge_site_writes_its_own_telemetry_and_reads_its_own_commands_only() -> None:
    for spec in (topics.METER, topics.PV, topics.BATTERY, topics.LOAD, topics.SETPOINT_ACK):
        assert mosquitto_pattern_may("site-a", "write", spec.topic("site-a", "d1", root=ROOT))
        assert not mosquitto_pattern_may("site-a", "write", spec.topic("site-b", "d1", root=ROOT))
    assert mosquitto_pattern_may("site-a", "read", topics.SETPOINT.topic("site-a", "b", root=ROOT))
    assert not mosquitto_pattern_may(
        "site-a", "read", topics.SETPOINT.topic("site-b", "b", root=ROOT)
    )
    assert not mosquitto_pattern_may(
        "site-a", "write", topics.SETPOINT.topic("site-a", "b", root=ROOT)
    )
    assert all(PLATFORM_SITE not in r.topic for r in acl.edge_rules(ROOT))


def test_an_edge_gateway_writes_its_own_status_and_dead_letters_at_its_site_only() -> None:
    own = (topics.SERVICE_STATUS, topics.DEAD_LETTER)
    for spec in own:
        assert mosquitto_pattern_may("site-a", "write", spec.topic("site-a", "meter_gateway", ROOT))
        for site, device in (
            ("site-b", "meter_gateway"),
            (PLATFORM_SITE, "meter_gateway"),
            ("site-a", "peak_shaving"),
        ):
            assert not mosquitto_pattern_may("site-a", "write", spec.topic(site, device, ROOT))


def test_edge_password_variables_are_named_after_the_site() -> None:
    assert acl.edge_password_env_var("site-1") == "MQTT_PASSWORD_EDGE_SITE_1"
    assert acl.edge_sites({"MQTT_EDGE_SITES": " site-1, site-2 ,site-1"}) == ["site-1", "site-2"]
    with pytest.raises(acl.ConfigError, match="share MQTT_PASSWORD_EDGE_SITE_1"):
        acl.edge_sites({"MQTT_EDGE_SITES": "site-1,site_1"})


def test_fill_env_file_makes_a_copied_world_readable_file_private(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_TOKEN=\n")
    env_file.chmod(0o644)
    assert acl.fill_env_file(env_file, ["API_TOKEN"], {}) == ["API_TOKEN"]
    assert env_file.stat().st_mode & 0o777 == 0o600
    env_file.chmod(0o644)  # nothing to add: still made private
    assert acl.fill_env_file(env_file, ["API_TOKEN"], {}) == []
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_scada_reads_everything_and_writes_only_commands() -> None:
    for spec in topics.CATALOGUE:
        assert may("scada", "read", spec.topic("site-7", "pv", root=ROOT))
    writable = {
        s.key for s in topics.CATALOGUE if may("scada", "write", s.topic("s", "d", root=ROOT))
    }
    assert writable == {"control.set", "control.job"}


def test_healthcheck_user_reads_only_the_broker_uptime() -> None:
    assert acl.user_rules("healthcheck") == [acl.AclRule("read", "$SYS/broker/uptime")]
    assert not may("healthcheck", "read", topics.METER.topic("site-1", "pcc", root=ROOT))


def test_rules_follow_the_topic_root() -> None:
    root = "acme/der"
    rules = acl.user_rules("peak_shaving", root)
    assert rules
    assert all(r.topic.startswith(root + "/") for r in rules)
    assert may("peak_shaving", "write", topics.SETPOINT.topic("s", "battery", root=root), root)
    assert not may("peak_shaving", "write", topics.SETPOINT.topic("s", "battery", root=ROOT), root)


def test_acl_text_has_one_block_per_user_and_valid_lines() -> None:
    text = acl.acl_text("der/v1")
    users = [line.split()[1] for line in text.splitlines() if line.startswith("user ")]
    assert users == acl.broker_users()
    assert len(users) == len(set(users))
    for line in text.splitlines():
        if line and not line.startswith(("#", "user ")):
            kind, access, topic = line.split(" ")
            assert kind in ("topic", "pattern")
            assert (kind == "pattern") == ("%u" in topic)
            assert access in ("read", "write", "readwrite")
            outside = {r.topic for rules in acl.EXTERNAL_RULES.values() for r in rules}
            assert topic.startswith(("der/v1/", "$SYS/")) or topic in outside


def test_the_committed_acl_matches_the_catalogue() -> None:
    committed = (REPO / "deploy/mosquitto/acl").read_text()
    assert committed == acl.acl_text(topics.DEFAULT_ROOT), (
        "deploy/mosquitto/acl is stale: run `derbus acl --acl-only`"
    )


def test_passwords_are_collected_by_user_and_missing_ones_named() -> None:
    env = {"MQTT_PASSWORD_SCADA": "s3cret", "MQTT_PASSWORD_FORECASTER": ""}
    found, missing = acl.collect_passwords(env, ["scada", "forecaster"])
    assert found == {"scada": "s3cret"}
    assert missing == ["MQTT_PASSWORD_FORECASTER"]


def test_fill_env_file_generates_only_missing_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_TOKEN=keep-me\n")
    added = acl.fill_env_file(
        env_file, ["API_TOKEN", "MQTT_PASSWORD_SCADA", "FROM_ENV"], {"FROM_ENV": "x"}
    )
    assert added == ["MQTT_PASSWORD_SCADA"]
    values = acl.load_env(env_file)
    assert values["API_TOKEN"] == "keep-me"
    assert len(values["MQTT_PASSWORD_SCADA"] or "") >= 24
    assert acl.fill_env_file(env_file, ["API_TOKEN", "MQTT_PASSWORD_SCADA"], {}) == []


def test_password_file_holds_hashes_not_passwords(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    acl.write_password_file(path, {"scada": "plain-text-pw", "forecaster": "another-pw"})
    text = path.read_text()
    assert "plain-text-pw" not in text
    assert "another-pw" not in text
    users = [line.split(":", 1)[0] for line in text.splitlines()]
    assert users == ["scada", "forecaster"]
    assert all(line.split(":", 1)[1].startswith("$7$") for line in text.splitlines())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".passwd-")]


# --- what the services' code really publishes and subscribes ---------------------------------------


def _spec_names_in_calls(tree: ast.AST, method: str) -> set[str]:
    """Catalogue names used as first argument of `<x>.<method>(topics.NAME, …)` calls."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == method
            and node.args
        ):
            first = node.args[0]
            if isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name):
                if first.value.id == "topics":
                    found.add(first.attr)
            elif isinstance(first, ast.Name) and isinstance(
                getattr(topics, first.id, None), TopicSpec
            ):
                found.add(first.id)
    return found


def _module_identity(tree: ast.Module, default: str) -> str:
    """The broker user a module's publishes belong to: the name of the `Service(...)` it builds
    (a literal or a module-level string constant), else the package's service."""
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "Service"
            and node.args
        ):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                return first.value
            if isinstance(first, ast.Name) and first.id in constants:
                return constants[first.id]
    return default


def _source_usage(service: str) -> dict[str, tuple[set[str], set[str]]]:
    """Per broker user found in a service package: (published or declared, subscribed) keys."""
    usage: dict[str, tuple[set[str], set[str]]] = {}
    for path in sorted((REPO / "services" / service / "src").rglob("*.py")):
        tree = ast.parse(path.read_text())
        published, subscribed = usage.setdefault(_module_identity(tree, service), (set(), set()))
        for name in _spec_names_in_calls(tree, "publish"):
            published.add(getattr(topics, name).key)
        for name in _spec_names_in_calls(tree, "on"):
            subscribed.add(getattr(topics, name).key)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "declare_publishes"
            ):
                for arg in node.args:
                    if isinstance(arg, ast.Attribute) and arg.attr in vars(topics):
                        published.add(getattr(topics, arg.attr).key)
    return usage


def _writable(service: str) -> set[str]:
    return {s.key for s in topics.CATALOGUE if may(service, "write", own_or_other(s, service))}


def _readable(service: str) -> set[str]:
    return {s.key for s in topics.CATALOGUE if may(service, "read", own_or_other(s, service))}


@pytest.mark.parametrize("service", SERVICES)
def test_service_source_publishes_only_what_its_acl_allows(service: str) -> None:
    for user, (published, subscribed) in _source_usage(service).items():
        forbidden = published - _writable(user)
        assert not forbidden, (
            f"{user} (services/{service}) publishes {sorted(forbidden)} but the catalogue does "
            "not list it as a publisher, so the broker ACL drops those messages: add it to the "
            "spec's publishers in derbus.topics"
        )
        unreadable = subscribed - _readable(user)
        assert not unreadable, (
            f"{user} (services/{service}) subscribes {sorted(unreadable)} but is not a listed "
            "subscriber, so the broker delivers nothing: add it to the spec's subscribers"
        )


def _built_service(service: str, tmp_path: Path, **extra: Any) -> Any:
    module = importlib.import_module(f"{service}.service")
    settings_module = importlib.import_module(f"{service}.settings")
    settings_cls = next(
        c
        for _, c in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c.__module__ == settings_module.__name__
    )
    settings = settings_cls(data_dir=tmp_path)
    return module.build_service(settings, InMemoryBus(), **extra)


@pytest.mark.parametrize("service", SERVICES)
def test_service_declared_publishes_are_allowed(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (REPO / "services" / service / "src" / service / "service.py").exists():
        pytest.fail(f"services/{service} has no service.py yet (the ACL cannot be checked)")
    for key in [k for k in os.environ if k.startswith(("MQTT_", "SITE_"))]:
        monkeypatch.delenv(key)
    built = _built_service(service, tmp_path)
    forbidden = built.published_specs - _writable(service)
    assert not forbidden, f"{service} declares publishes {sorted(forbidden)} its ACL forbids"
    unreadable = {s["key"] for s in built.subscriptions()} - _readable(service)
    assert not unreadable, f"{service} subscribes {sorted(unreadable)} its ACL cannot deliver"


# Built with optional parts on, where a service subscribes more with them: cloud_sync writes the
# dashboards' specs to InfluxDB only when it has a sink (none is contacted while building).
class _IdleSink:
    """An InfluxDB sink that is never written to (only the subscriptions are read)."""

    points_written = points_failed = 0
    last_error: str | None = None

    def write(self, points: Any) -> None:
        raise AssertionError("not written while checking subscriptions")


BUILD_EXTRAS: dict[str, dict[str, Any]] = {"cloud_sync": {"influx": _IdleSink()}}


def _code_usage(tmp_path: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per broker user, the spec keys its code publishes and subscribes: the source scan (every
    `Service` a package builds) united with what each built service declares."""
    published: dict[str, set[str]] = {}
    subscribed: dict[str, set[str]] = {}
    for service in SERVICES:
        for user, (pub, sub) in _source_usage(service).items():
            published.setdefault(user, set()).update(pub)
            subscribed.setdefault(user, set()).update(sub)
        built = _built_service(service, tmp_path / service, **BUILD_EXTRAS.get(service, {}))
        published.setdefault(built.name, set()).update(built.published_specs)
        subscribed.setdefault(built.name, set()).update(s["key"] for s in built.subscriptions())
    return published, subscribed


def test_catalogue_publishers_and_subscribers_are_exactly_what_the_code_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalogue (and the ACL generated from it) grants no right the code does not use.

    `scada` is the operator's external user (not in the code); `*` (every service: status and
    dead letters) is published by the service runtime itself.
    """
    for key in [k for k in os.environ if k.startswith(("MQTT_", "SITE_"))]:
        monkeypatch.delenv(key)
    published, subscribed = _code_usage(tmp_path)
    external = {acl.SCADA_USER, acl.EVERY_SERVICE}
    drift = []
    for spec in topics.CATALOGUE:
        code_pub = {u for u, keys in published.items() if spec.key in keys}
        if acl.EVERY_SERVICE in spec.publishers:
            code_pub -= set(SERVICES)
        code_sub = {u for u, keys in subscribed.items() if spec.key in keys}
        for what, listed, code in (
            ("publishers", spec.publishers, code_pub),
            ("subscribers", spec.subscribers, code_sub),
        ):
            unused, missing = set(listed) - external - code, code - set(listed)
            if unused or missing:
                drift.append(
                    f"{spec.key} {what}: listed, unused {sorted(unused)}; "
                    f"used, unlisted {sorted(missing)}"
                )
    assert not drift, "catalogue drift (fix derbus.topics, then `make -s topics`):\n" + "\n".join(
        drift
    )


def test_the_source_scan_sees_publish_and_subscribe_calls() -> None:
    tree = ast.parse(
        "@service.on(topics.METER)\n"
        "async def h(msg, ctx):\n"
        "    await ctx.publish(topics.SETPOINT, cmd, device_id='battery')\n"
        "    await service.publish(PV_CURTAILMENT, m, site_id='f', device_id='c')\n"
    )
    assert _spec_names_in_calls(tree, "publish") == {"SETPOINT", "PV_CURTAILMENT"}
    assert _spec_names_in_calls(tree, "on") == {"METER"}
    assert "grid.pv_curtailment" not in _writable("forecaster")


def test_a_module_building_its_own_service_is_its_own_broker_user() -> None:
    tree = ast.parse('NAME = "feeder_sim"\ndef build(s, bus):\n    return Service(NAME, s, bus)\n')
    assert _module_identity(tree, "voltage_coordinator") == "feeder_sim"
    assert _module_identity(ast.parse("x = 1\n"), "voltage_coordinator") == "voltage_coordinator"


def test_derbus_acl_command_writes_acl_passwd_and_fills_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from derbus.cli import app

    for key in [k for k in os.environ if k.startswith(("MQTT_", "API_TOKEN"))]:
        monkeypatch.delenv(key)
    env_file = tmp_path / ".env"
    out = tmp_path / "mosquitto"
    runner = CliRunner()
    refused = runner.invoke(app, ["acl", "--out-dir", str(out), "--env-file", str(env_file)])
    assert refused.exit_code == 2
    assert "MQTT_PASSWORD_SCADA" in refused.output
    assert not (out / "passwd").exists()
    args = ["acl", "--out-dir", str(out), "--env-file", str(env_file), "--root", "acme/der"]
    done = runner.invoke(app, [*args, "--generate-missing"])
    assert done.exit_code == 0, done.output
    values = acl.load_env(env_file)
    for name in (*acl.required_password_vars(), *acl.DEPLOYMENT_SECRETS):
        secret = values[name]
        assert secret
        assert secret not in done.output
    assert (out / "acl").read_text() == acl.acl_text("acme/der")
    users = [line.split(":", 1)[0] for line in (out / "passwd").read_text().splitlines()]
    assert users == acl.broker_users()
    assert env_file.stat().st_mode & 0o077 == 0


def test_the_scada_bridge_speaks_sparkplug_and_home_assistant_under_the_acl() -> None:
    """The bridge's own topic builders, at their defaults, against the generated ACL."""
    from scada_bridge import ha_discovery as ha
    from scada_bridge import sparkplug as sp
    from scada_bridge.settings import Settings as BridgeSettings

    bridge, scada = "scada_bridge", acl.SCADA_USER
    s = BridgeSettings()
    group, node = s.group_id, s.edge_node_id
    published = [
        sp.topic(group, "NBIRTH", node),
        sp.topic(group, "NDEATH", node),
        sp.topic(group, "DBIRTH", node, "site-1"),
        sp.topic(group, "DDATA", node, "site-1"),
        sp.topic(group, "DDEATH", node, "site-1"),
        ha.discovery_topic(s.ha_discovery_prefix, "sensor", "site-1", "pv_power"),
        ha.discovery_topic(s.ha_discovery_prefix, "number", "site-1", "battery_setpoint"),
        ha.setpoint_state_topic(s.ha_command_prefix, "site-1", "battery"),
    ]
    commands = [
        sp.topic(group, "NCMD", node),
        sp.topic(group, "DCMD", node, "site-1"),
        ha.setpoint_command_topic(s.ha_command_prefix, "site-1", "battery"),
        ha.birth_topic(s.ha_discovery_prefix),
        sp.state_topic("ignition"),
    ]
    for topic in published:
        assert may(bridge, "write", topic), topic
        assert may(scada, "read", topic), topic
        assert not may(scada, "write", topic), f"the SCADA could forge {topic}"
    for topic in commands:
        assert may(bridge, "read", topic), topic
        assert may(scada, "write", topic), topic
    for user in SERVICES:
        if user != bridge:
            assert not may(user, "write", published[0]), f"{user} could write {published[0]}"
