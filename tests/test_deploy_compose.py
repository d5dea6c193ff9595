"""Static checks of docker-compose.yml, the Dockerfiles, the env files and the broker config (no Docker)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from derbus import acl

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
COMPOSE_TEXT = "\n".join(  # without comment lines: compose does not interpolate them
    line
    for line in (REPO / "docker-compose.yml").read_text().splitlines()
    if not line.lstrip().startswith("#")
)
SERVICES = list(acl.PLATFORM_SERVICES)
INFRA = ["mosquitto", "influxdb", "postgres", "grafana"]
SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|_KEY$)")
VAR = re.compile(r"\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}")


def pyproject(name: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())
    return data


def meta(name: str) -> dict[str, Any]:
    table: dict[str, Any] = pyproject(name)["tool"]["derbus"]
    return table


def entry(name: str) -> dict[str, Any]:
    found: dict[str, Any] = COMPOSE["services"][name]
    return found


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / "deploy/env/.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


# --- docker-compose.yml ------------------------------------------------------------------------


def test_every_service_and_component_is_present() -> None:
    assert set(COMPOSE["services"]) == set(SERVICES) | set(INFRA)


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_built_from_the_repo_root_with_its_dockerfile(name: str) -> None:
    build = entry(name)["build"]
    assert build["context"] == "."
    assert build["dockerfile"] == f"services/{name}/Dockerfile"
    assert (REPO / build["dockerfile"]).is_file()
    assert entry(name)["image"] == f"derbus/{name}:${{DERBUS_VERSION:-latest}}"


@pytest.mark.parametrize("name", SERVICES + INFRA)
def test_healthcheck_and_restart_policy(name: str) -> None:
    service = entry(name)
    assert service["restart"] in ("unless-stopped", "always", "on-failure")
    check = service["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert len(check["test"]) > 1
    assert check["retries"] >= 3
    for key in ("interval", "timeout"):
        assert re.fullmatch(r"\d+s", check[key]), f"{name}: healthcheck {key} {check[key]!r}"


@pytest.mark.parametrize("name", SERVICES)
def test_service_healthcheck_asks_readyz_on_its_api_port(name: str) -> None:
    service = entry(name)
    # derbus.health asks /readyz on DERBUS_HEALTH_PORT, over HTTPS when the API has a certificate
    assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "derbus.health"]
    port = str(meta(name)["api_port"])
    env = service["environment"]
    assert str(env[f"{meta(name)['env_prefix']}API_PORT"]) == port
    assert str(env["DERBUS_HEALTH_PORT"]) == port
    host_var = f"{name.upper()}_HOST_PORT"
    assert f"${{{host_var}:-{port}}}:{port}" in service["ports"]


def test_every_published_port_can_be_moved_by_a_variable() -> None:
    """`<NAME>_HOST_PORT` (e.g. 127.0.0.1:8106): loopback-only publishing, or another port when
    this one is taken (make compose-check runs the stack on free loopback ports this way)."""
    for name, svc in COMPOSE["services"].items():
        for spec in svc.get("ports", []):
            assert re.fullmatch(r"\$\{[A-Z0-9_]+_HOST_PORT:-(\d+)\}:\1", spec), f"{name}: {spec}"


@pytest.mark.parametrize("name", SERVICES + INFRA)
def test_depends_on_waits_for_healthy_components(name: str) -> None:
    depends = entry(name).get("depends_on", {})
    assert isinstance(depends, dict), f"{name}: depends_on must use the long form with conditions"
    for dep, spec in depends.items():
        assert dep in COMPOSE["services"], f"{name} depends on unknown {dep}"
        assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
        assert "healthcheck" in entry(dep)
    if name in SERVICES:
        assert "mosquitto" in depends


def test_data_services_wait_for_their_databases() -> None:
    for name in ("cloud_sync", "feature_engineering", "forecaster"):
        assert "postgres" in entry(name)["depends_on"], name
    assert "influxdb" in entry("cloud_sync")["depends_on"]
    assert "influxdb" in entry("grafana")["depends_on"]


def _mounts(name: str) -> dict[str, str]:
    """target -> source of a service's volumes (short and long syntax)."""
    out = {}
    for volume in entry(name).get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = volume["source"]
        else:
            source, target = volume.split(":")[:2]
            out[target] = source
    return out


@pytest.mark.parametrize("name", SERVICES)
def test_service_state_persists_in_a_named_volume(name: str) -> None:
    source = _mounts(name).get("/data")
    assert source, f"{name} has no volume on /data (outbox, models, plans)"
    assert source in COMPOSE["volumes"], f"{name}: {source} is not a declared named volume"


def test_broker_and_database_data_persist() -> None:
    for name, target in (
        ("mosquitto", "/mosquitto/data"),
        ("influxdb", "/var/lib/influxdb2"),
        ("postgres", "/var/lib/postgresql/data"),
        ("grafana", "/var/lib/grafana"),
    ):
        assert _mounts(name).get(target) in COMPOSE["volumes"], f"{name} {target}"
    assert _mounts("cloud_sync")["/data"] == "sync-outbox"
    assert _mounts("forecaster")["/data"] == "forecaster-models"


def test_mounted_repository_paths_exist() -> None:
    for name in COMPOSE["services"]:
        for target, source in _mounts(name).items():
            if source.startswith("./") and not source.endswith("/passwd"):
                assert (REPO / source).exists(), f"{name} mounts missing {source} on {target}"


def test_broker_password_file_mount_refuses_to_invent_a_folder() -> None:
    volume = next(v for v in entry("mosquitto")["volumes"] if isinstance(v, dict))
    assert volume["source"] == "./deploy/mosquitto/passwd"
    # the long syntax: a missing source fails the start (the short one would create a folder);
    # `bind.create_host_path` is not used: docker-compose 1.29 (Debian) rejects it
    assert volume["type"] == "bind"
    assert "bind" not in volume
    assert volume["read_only"] is True


def test_the_compose_file_uses_only_what_docker_compose_1_29_accepts() -> None:
    """Debian's docker-compose 1.29 refused `name:`, `env_file` entries with `path`/`required`
    and `bind.create_host_path` (found by `make compose-check`)."""
    assert "name" not in COMPOSE
    for svc in COMPOSE["services"].values():
        for item in svc.get("env_file", []):
            assert isinstance(item, str)
            assert (REPO / item).is_file()


def _variables() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2) or "", m.group(3)) for m in VAR.finditer(COMPOSE_TEXT)]


def test_no_secret_has_a_default() -> None:
    for name, op, default in _variables():
        if SECRET_NAME.search(name):
            assert op == ":?", f"${{{name}}} must be required (${{{name}:?…}}), not defaulted"
            assert default.strip(), f"${{{name}:?}} needs a message saying how to set it"
    for key, value in _environment_items():
        if SECRET_NAME.search(key):
            assert isinstance(value, str)
            assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value), f"{key}={value!r}"


def _environment_items() -> list[tuple[str, Any]]:
    items = []
    for service in COMPOSE["services"].values():
        env = service.get("environment", {})
        items += list(env.items()) if isinstance(env, dict) else []
    return items


def test_urls_embed_passwords_only_from_required_variables() -> None:
    for key, value in _environment_items():
        if isinstance(value, str) and "://" in value and "@" in value:
            userinfo = value.split("://", 1)[1].rsplit("@", 1)[0]
            parts = re.fullmatch(r"(\$\{[^}]*\}|[^:]*):(.*)", userinfo)
            assert parts, f"{key} has no user:password"
            assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", parts.group(2)), key


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_has_its_own_broker_user_and_the_api_token(name: str) -> None:
    env = entry(name)["environment"]
    assert env["MQTT_USERNAME"] == name
    assert env["MQTT_PASSWORD"].startswith(f"${{{acl.password_env_var(name)}:?")
    assert env[f"{meta(name)['env_prefix']}API_TOKEN"].startswith("${API_TOKEN:?")
    assert env["MQTT_HOST"] == "mosquitto"
    assert env["MQTT_ROOT"] == "${MQTT_ROOT:-der/v1}"


def test_no_container_gets_the_whole_secret_file() -> None:
    for name, service in COMPOSE["services"].items():
        for env_file in service.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            assert Path(path).name != ".env", f"{name} loads .env: every secret would leak into it"
    text = (REPO / "deploy/env/services.env").read_text()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert not SECRET_NAME.search(line.partition("=")[0]), line


def test_every_required_variable_is_documented_and_generated() -> None:
    documented = env_example()
    generated = set(acl.required_password_vars()) | set(acl.DEPLOYMENT_SECRETS)
    for name, op, _ in _variables():
        assert name in documented, f"${{{name}}} is not in deploy/env/.env.example"
        if op == ":?":
            assert name in generated, f"derbus acl --generate-missing does not fill {name}"
            assert documented[name] == "", f".env.example must not carry a value for {name}"
    for name in generated:
        assert name in documented, f"{name} is not in deploy/env/.env.example"


def test_env_example_defaults_match_the_compose_defaults() -> None:
    documented = env_example()
    for name, op, default in _variables():
        if op == ":-":
            assert documented[name] == default, f"{name}: .env.example {documented[name]!r}"


def test_generated_env_fills_the_example_in_place(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / "deploy/env/.env.example").read_text())
    added = acl.fill_env_file(
        env_file, [*acl.required_password_vars(), *acl.DEPLOYMENT_SECRETS], {}
    )
    assert set(added) == set(acl.required_password_vars()) | set(acl.DEPLOYMENT_SECRETS)
    values = acl.load_env(env_file)
    assert all(values[n] for n in added)
    keys = [line.partition("=")[0] for line in env_file.read_text().splitlines() if "=" in line]
    assert len(keys) == len(set(keys)), "a variable is defined twice"
    assert "generated by" not in env_file.read_text()


def test_grafana_gets_only_what_its_datasource_needs() -> None:
    env = entry("grafana")["environment"]
    assert env["INFLUXDB_TOKEN"].startswith("${INFLUXDB_TOKEN:?")
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert not [k for k in env if k.startswith(("MQTT_", "POSTGRES_"))]


# --- the broker config -------------------------------------------------------------------------


def _conf_lines() -> list[str]:
    text = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_shipped_broker_config_requires_login_and_the_generated_acl() -> None:
    lines = _conf_lines()
    assert "allow_anonymous false" in lines
    assert "allow_anonymous true" not in lines
    mounted = {target for target in _mounts("mosquitto")}
    for key, path in (
        ("password_file", "/mosquitto/config/passwd"),
        ("acl_file", "/mosquitto/config/acl"),
    ):
        assert f"{key} {path}" in lines
        assert path in mounted


def test_shipped_broker_config_sets_queue_limits_and_nodelay() -> None:
    lines = _conf_lines()
    assert any(re.fullmatch(r"max_queued_messages \d+", line) for line in lines)
    assert "max_queued_bytes 0" in lines
    assert "set_tcp_nodelay true" in lines
    assert "persistence true" in lines
    assert "persistence_location /mosquitto/data/" in lines


def test_shipped_broker_config_offers_a_tls_listener() -> None:
    text = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    for line in (
        "#listener 8883",
        "#cafile /mosquitto/config/certs/ca.crt",
        "#certfile /mosquitto/config/certs/server.crt",
        "#keyfile /mosquitto/config/certs/server.key",
    ):
        assert line in text


# --- Dockerfiles -------------------------------------------------------------------------------


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str


def dockerfile(name: str) -> list[Instruction]:
    """The instructions of a Dockerfile (continuations joined, comments dropped), by stage."""
    text = (REPO / "services" / name / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    stage = -1
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword.upper(), args.strip()))
    return out


def _uv_lock_packages() -> set[str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {p["name"] for p in lock["package"]}


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_syncs_a_workspace_package_frozen(name: str) -> None:
    steps = dockerfile(name)
    runs = [i.args for i in steps if i.keyword == "RUN" and "uv sync" in i.args]
    assert len(runs) == 2, "dependencies first (--no-install-workspace), then the sources"
    for run in runs:
        args = shlex.split(run)
        assert "--frozen" in args
        assert "--no-dev" in args
        package = args[args.index("--package") + 1]
        assert package == pyproject(name)["project"]["name"]
        assert package in _uv_lock_packages(), f"{package} is not in uv.lock"
    assert "--no-install-workspace" in runs[0]
    # layer order: only the lock and project files before the dependency install
    first = next(i for i, s in enumerate(steps) if s.keyword == "RUN" and "uv sync" in s.args)
    copied = [
        s.args.split()[0] for s in steps[:first] if s.keyword == "COPY" and "--from" not in s.args
    ]
    assert copied == [
        "pyproject.toml",
        "libs/common/pyproject.toml",
        f"services/{name}/pyproject.toml",
    ]


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_runs_the_services_module(name: str) -> None:
    cmds = [i for i in dockerfile(name) if i.keyword == "CMD"]
    assert len(cmds) == 1
    argv = json.loads(cmds[0].args)
    assert argv[:2] == ["python", "-m"]
    module = argv[2]
    main = REPO / "services" / name / "src" / module / "__main__.py"
    assert main.is_file(), f"CMD runs {module} but {main.relative_to(REPO)} does not exist"


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_healthcheck_asks_the_services_own_port_with_derbus_health(name: str) -> None:
    """`python -m derbus.health` speaks HTTPS when the API has a certificate (plain `urllib` on
    http:// reported every HTTPS API unhealthy); the module is in the image's core library."""
    prefix, port = meta(name)["env_prefix"], meta(name)["api_port"]
    checks = [i.args for i in dockerfile(name) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert checks[0].endswith(f"CMD python -m derbus.health ${{{prefix}API_PORT:-{port}}}")
    assert (REPO / "libs/common/src/derbus/health.py").is_file()


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_is_multi_stage_non_root_and_pinned(name: str) -> None:
    instructions = dockerfile(name)
    froms = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: build with uv, run without it"
    for image in froms:
        assert ":" in image
        assert not image.endswith(":latest")
    last = max(i.stage for i in instructions)
    users = [i.args for i in instructions if i.keyword == "USER" and i.stage == last]
    assert users, "the runtime stage must switch to a non-root user"
    assert users[-1] not in ("root", "0")
    final_copies = [i.args for i in instructions if i.keyword == "COPY" and i.stage == last]
    assert not [c for c in final_copies if "uv" in c.split()[-1] and "--from=ghcr" in c]


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_listens_on_all_interfaces_and_keeps_state_in_data(name: str) -> None:
    prefix, port = meta(name)["env_prefix"], meta(name)["api_port"]
    env = " ".join(i.args for i in dockerfile(name) if i.keyword == "ENV")
    assert f"{prefix}API_HOST=0.0.0.0" in env
    assert f"{prefix}DATA_DIR=/data" in env
    exposed = [i.args for i in dockerfile(name) if i.keyword == "EXPOSE"]
    assert str(port) in " ".join(exposed)


@pytest.mark.parametrize("name", SERVICES)
def test_dockerfile_copies_only_what_exists(name: str) -> None:
    for instruction in dockerfile(name):
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        parts = [p for p in shlex.split(instruction.args) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"{name}: COPY {source} does not exist"


def test_docker_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for entry_ in (".venv", ".git", ".env", "deploy/mosquitto/passwd"):
        assert entry_ in ignored


def _image_packages(name: str) -> set[str]:
    """The distributions `uv sync --package <service> --no-dev` installs (what its image holds)."""
    import shutil
    import subprocess

    # as the Makefile finds it: `uv` on PATH, else the uv module of the system python
    uv = [shutil.which("uv")] if shutil.which("uv") else ["python3", "-m", "uv"]
    out = subprocess.run(
        [
            *uv,
            "export",
            "--frozen",
            "--no-dev",
            "--no-hashes",
            "--no-emit-workspace",
            "--package",
            pyproject(name)["project"]["name"],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return {
        re.split(r"[=<>\[; ]", line, maxsplit=1)[0].lower()
        for line in out.splitlines()
        if line and not line.startswith(("#", " ", "-"))
    }


@pytest.mark.parametrize("name", SERVICES)
def test_an_image_holds_only_what_its_service_needs(name: str) -> None:
    packages = _image_packages(name)
    assert {"pydantic", "fastapi", "gmqtt", "paho-mqtt"} <= packages
    assert not {"pytest", "amqtt", "mypy", "ruff"} & packages, name
    wants_features = "derbus[features]" in pyproject(name)["project"]["dependencies"]
    own = " ".join(pyproject(name)["project"]["dependencies"])
    if not wants_features and "pandas" not in own and "pvlib" not in own:
        assert "pandas" not in packages, name
        assert "pvlib" not in packages, name
