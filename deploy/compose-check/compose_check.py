"""`make compose-check`: build every image and run `docker compose up` for real, then check it.

1. A Docker engine: the one that answers (`docker info`), else a private `dockerd` (overlay2
   storage, or $DERBUS_CHECK_STORAGE, e.g. vfs where overlay mounts are refused; no bridge, no
   iptables) with its data root, exec root, pid file and socket under
   $DERBUS_CHECK_DIR (default /var/tmp/derbus-compose-check), stopped at the end.
2. Base images under their real tags, built here when the engine lacks them (no registry is
   reachable): a Debian bookworm root filesystem from `debootstrap`, then stand-ins for
   python:3.11-slim-bookworm, the uv image (from the uv wheel on PyPI), eclipse-mosquitto,
   postgres and influxdb (VictoriaMetrics, saying so) from `standins/`. Grafana is skipped.
3. Every service image from its unmodified Dockerfile (`docker build --network host`).
4. The stack from the unmodified docker-compose.yml on its own network, with a fresh .env (from
   deploy/env/.env.example, secrets from `derbus acl --generate-missing`, every
   `<NAME>_HOST_PORT` a free port on 127.0.0.1) and a generated override that only skips
   Grafana, mounts the broker password file from the temporary folder and serves one
   service's API (HTTPS_SERVICE) over HTTPS with a `derbus certs` certificate, so that the
   images' healthcheck (`python -m derbus.health`) is seen to follow it. (Bridge networks and
   published ports work with `--bridge=none --iptables=false`; host networking is not needed,
   and docker-compose 1.29 refuses `network_mode: host` next to published ports.)
5. Waits for every healthcheck, then checks: readings reach PostgreSQL, a setpoint over REST is
   acknowledged on MQTT, every /readyz answers 200, the broker refuses an anonymous client.
6. Prints a table (image, build s, size MB, healthy, first-ready s) and removes what it started
   (containers, volumes, network, the private engine).

Exit status 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from derbus.testing.servers import free_port, mqtt_connack

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
WORK = Path(os.environ.get("DERBUS_CHECK_DIR", "/var/tmp/derbus-compose-check"))  # noqa: S108
DEBIAN_BASE = "derbus-standin/debian:bookworm"
# overlay2 stores each layer as a difference; vfs copies the whole image for every layer: the
# eleven service images took 55 GB on vfs (and filled this machine's disk), a few GB on overlay2
STORAGE = os.environ.get("DERBUS_CHECK_STORAGE", "overlay2")
DEBIAN_MIRROR = os.environ.get("DERBUS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
INFRA = ("mosquitto", "postgres", "influxdb")
SKIPPED = {
    "grafana": "Grafana skipped: it cannot be installed here (no registry, no Debian package)"
}
STANDIN_DIRS = {
    "python": "python",
    "eclipse-mosquitto": "mosquitto",
    "postgres": "postgres",
    "influxdb": "influxdb",
}
# each service's API prefix (its settings' env_prefix) and extra ports
PREFIX_RE = re.compile(r"^([A-Z]+_)API_PORT$")
HTTPS_SERVICE = "feature_engineering"
"""Served over HTTPS in the check (no other service calls its API)."""


def log(msg: str) -> None:
    print(f"[compose-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CheckError(RuntimeError):
    """A step of the check failed (the message says which and why)."""


def run(
    cmd: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    quiet: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise CheckError(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} …") from err
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise CheckError(f"failed ({proc.returncode}): {' '.join(cmd[:6])}\n" + "\n".join(tail))
    if not quiet and proc.stdout.strip():
        pass
    return proc


# --- the engine --------------------------------------------------------------------------------


@dataclass
class Engine:
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return run(["docker", *args], timeout, env=self.env, check=check).stdout

    def build(self, *args: str, timeout: float = 1800) -> str:
        """`docker build --network host` with BuildKit: the legacy builder starts a container
        per instruction, and on the vfs storage driver each one copies the whole image."""
        client = buildkit_client()
        env = {**self.env, "DOCKER_BUILDKIT": "1", "BUILDKIT_PROGRESS": "plain"}
        proc = run([client, "build", "--network", "host", *args], timeout, env=env)
        return proc.stdout + proc.stderr

    def stop(self) -> None:
        if self.proc is None:
            return
        log(f"stopping the private dockerd (pid {self.proc.pid})")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def buildkit_client() -> str:
    """A docker client that builds with BuildKit: one with the buildx plugin, else a 20.10
    client (Debian's docker.io), whose BuildKit is built in."""
    for client in dict.fromkeys([shutil.which("docker") or "docker", "/usr/bin/docker"]):
        if not Path(client).exists() and shutil.which(client) is None:
            continue
        if (
            subprocess.run(
                [client, "buildx", "version"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return client
        version = subprocess.run(
            [client, "--version"], capture_output=True, text=True, check=False
        ).stdout
        m = re.search(r"version (\d+)\.", version)
        if m and int(m.group(1)) < 23:
            return client
    raise CheckError("no docker client builds with BuildKit: install docker.io (or docker-buildx)")


def engine_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        raise CheckError("no docker client: apt-get install docker.io")
    probe = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def start_engine() -> Engine:
    env = dict(os.environ)
    if engine_answers(env):
        log("using the Docker engine that answers")
        return Engine(env)
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise CheckError(
            "no Docker engine answers and dockerd is missing: apt-get install docker.io"
        )
    if os.geteuid() != 0:
        raise CheckError("no Docker engine answers; a private dockerd needs root")
    root = WORK / f"engine-{STORAGE}"
    for sub in ("data", "exec"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    env["DOCKER_HOST"] = f"unix://{sock}"
    if engine_answers(env):  # a private engine left by an interrupted run: reuse, then stop it
        pid = int((root / "docker.pid").read_text())
        log(f"a private dockerd from an earlier run answers (pid {pid}); it is stopped at the end")
        engine = Engine(env)
        engine.proc = None
        _adopted.append(pid)
        return engine
    cmd = [
        dockerd,
        "--storage-driver",
        STORAGE,
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "-H",
        env["DOCKER_HOST"],
    ]
    logfile = (root / "dockerd.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT)
    log(f"started a private dockerd (pid {proc.pid}, data root {root / 'data'})")
    deadline = time.monotonic() + 60
    while not engine_answers(env):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CheckError(f"the private dockerd did not answer; see {root / 'dockerd.log'}")
        time.sleep(0.5)
    return Engine(env, proc)


_adopted: list[int] = []


# --- base images -----------------------------------------------------------------------------


def has_image(engine: Engine, tag: str) -> bool:
    return bool(engine.docker("images", "-q", tag).strip())


def debian_base(engine: Engine) -> None:
    if has_image(engine, DEBIAN_BASE):
        return
    rootfs = WORK / "rootfs"
    if not (rootfs / "usr/bin/apt-get").exists():
        if shutil.which("debootstrap") is None:
            raise CheckError("debootstrap is missing: apt-get install debootstrap")
        tmp = WORK / "rootfs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        log("debootstrap bookworm (minbase) — a few minutes")
        run(["debootstrap", "--variant=minbase", "bookworm", str(tmp), DEBIAN_MIRROR], 1800)
        shutil.rmtree(rootfs, ignore_errors=True)
        tmp.rename(rootfs)
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imp = subprocess.run(
        [
            "docker",
            "import",
            "-c",
            'CMD ["bash"]',
            "-c",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "-",
            DEBIAN_BASE,
        ],
        stdin=tar.stdout,
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tar.wait(timeout=60)
    if imp.returncode != 0:
        raise CheckError(f"docker import of the bookworm root filesystem failed: {imp.stderr}")


def uv_standin(engine: Engine, tag: str, workdir: Path) -> None:
    version = tag.rsplit(":", 1)[1]
    wheels = workdir / "uv-wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"uv=={version}.*" if version.count(".") < 2 else f"uv=={version}"
    pip = next(
        (
            p
            for p in (sys.executable, shutil.which("python3") or "python3")
            if subprocess.run(
                [p, "-m", "pip", "--version"], capture_output=True, check=False
            ).returncode
            == 0
        ),
        None,
    )
    if pip is None:
        raise CheckError("pip is needed to fetch the uv wheel: apt-get install python3-pip")
    run(
        [
            pip,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--platform",
            "manylinux_2_17_x86_64",
            "--python-version",
            "3.11",
            "-d",
            str(wheels),
            spec,
        ],
        600,
    )
    wheel = sorted(wheels.glob("uv-*.whl"))[-1]
    ctx = workdir / "uv-context"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir()
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if re.search(r"\.data/scripts/(uv|uvx)$", name):
                target = ctx / Path(name).name
                target.write_bytes(zf.read(name))
                target.chmod(0o755)
    shutil.copy(STANDINS / "uv/Dockerfile", ctx / "Dockerfile")
    log(f"{tag}: stand-in from {wheel.name}")
    engine.build("-q", "-t", tag, str(ctx), timeout=600)


def base_tags() -> list[str]:
    """Every image tag the Dockerfiles and the compose file start FROM / run."""
    tags: set[str] = set()
    for dockerfile in sorted(REPO.glob("services/*/Dockerfile")):
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"^\s*FROM\s+(\S+)", line) or re.search(r"COPY\s+--from=(\S+:\S+)", line)
            if m and ":" in m.group(1):
                tags.add(m.group(1))
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name in INFRA:
        tags.add(compose["services"][name]["image"])
    return sorted(tags)


def base_images(engine: Engine, workdir: Path, rebuild: bool) -> list[str]:
    notes = []
    if rebuild:
        for tag in base_tags():
            engine.docker("rmi", "-f", tag, check=False)
    for tag in base_tags():
        if has_image(engine, tag):
            continue
        repo = tag.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        if repo == "uv":
            uv_standin(engine, tag, workdir)
            notes.append(f"{tag}: stand-in, the uv binary from its PyPI wheel")
            continue
        folder = STANDIN_DIRS.get(repo)
        if folder is None:
            raise CheckError(f"no stand-in for base image {tag} (and the engine lacks it)")
        debian_base(engine)
        log(f"{tag}: building the stand-in from standins/{folder} (Debian packages)")
        started = time.monotonic()
        ctx = workdir / f"standin-{folder}"
        shutil.copytree(STANDINS / folder, ctx, dirs_exist_ok=True)
        extra = ctx / "extra-ca"
        extra.mkdir(exist_ok=True)
        for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(cert, extra / cert.name)
        engine.build("-q", "-t", tag, str(ctx), timeout=1500)
        log(f"{tag}: built in {time.monotonic() - started:.0f} s")
    for tag in base_tags():
        label = engine.docker(
            "image", "inspect", "--format", '{{index .Config.Labels "org.derbus.standin"}}', tag
        ).strip()
        notes.append(f"{tag}: {label if label and label != '<no value>' else 'the real image'}")
    return notes


# --- service images ------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    image: str
    build_s: float | None = None
    size_mb: float | None = None
    healthy: str = "-"
    ready_s: float | None = None
    note: str = ""


def build_services(engine: Engine, compose: dict[str, Any], rows: dict[str, Row]) -> None:
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        image = svc["image"].replace("${DERBUS_VERSION:-latest}", "latest")
        dockerfile = svc["build"]["dockerfile"]
        log(f"building {image} from {dockerfile}")
        started = time.monotonic()
        output = engine.build(
            "-f", str(REPO / dockerfile), "-t", image, str(REPO / svc["build"].get("context", "."))
        )
        (WORK / f"build-{name}.log").write_text(output)
        rows[name] = Row(name, image, build_s=time.monotonic() - started)
        size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", image).strip())
        rows[name].size_mb = size / 1e6
        log(f"{image}: {rows[name].build_s:.0f} s, {rows[name].size_mb:.0f} MB")


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    project: str
    env_file: Path
    override: Path
    ports: dict[str, int] = field(default_factory=dict)
    api_ports: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    https: dict[str, Path] = field(default_factory=dict)
    """Services whose API serves HTTPS, with the CA that signed its certificate."""

    def compose(
        self, engine: Engine, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = compose_command()
        return run(
            [
                *cmd,
                "-p",
                self.project,
                "--env-file",
                str(self.env_file),
                "-f",
                str(REPO / "docker-compose.yml"),
                "-f",
                str(self.override),
                *args,
            ],
            timeout,
            env=engine.env,
            check=check,
        )


def compose_command() -> list[str]:
    if (
        subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CheckError("neither `docker compose` nor docker-compose: apt-get install docker-compose")


HOST_PORT = re.compile(r"^\$\{([A-Z0-9_]+_HOST_PORT):-(\d+)\}:(\d+)$")


def make_stack(compose: dict[str, Any], workdir: Path) -> Stack:
    """A fresh .env (free loopback host ports) and password file, and the override (Grafana
    skipped, the broker's password file from the temporary folder)."""
    from dotenv import dotenv_values

    env_file = workdir / ".env"
    shutil.copy(REPO / "deploy/env/.env.example", env_file)
    broker_dir = workdir / "mosquitto"
    run(
        [
            str(REPO / ".venv/bin/derbus"),
            "acl",
            "--env-file",
            str(env_file),
            "--out-dir",
            str(broker_dir),
            "--generate-missing",
        ],
        120,
    )
    (broker_dir / "passwd").chmod(0o644)  # the broker container reads it as its own user
    stack = Stack(f"derbuscheck{uuid.uuid4().hex[:6]}", env_file, workdir / "override.yml")
    # every published port of the compose file is `${<NAME>_HOST_PORT:-N}:N`: a free port on
    # 127.0.0.1 for each, so nothing collides with what this machine already runs
    lines = []
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            m = HOST_PORT.match(str(spec))
            if m is None:
                raise CheckError(f"{name}: port {spec!r} is not `${{<NAME>_HOST_PORT:-N}}:N`")
            port = free_port()
            lines.append(f"{m.group(1)}=127.0.0.1:{port}")
            stack.ports[f"{name}:{m.group(3)}"] = port
            if name in compose["services"] and "build" in svc and m.group(2) == m.group(3):
                api = next((k for k in svc["environment"] if PREFIX_RE.match(k)), None)
                if api and str(svc["environment"][api]) == m.group(3):
                    stack.api_ports[name] = port
    with env_file.open("a") as handle:
        handle.write("# compose-check: free loopback host ports\n" + "\n".join(lines) + "\n")
    stack.env = {k: v or "" for k, v in dotenv_values(env_file).items()}
    certs = workdir / "certs"
    run([str(REPO / ".venv/bin/derbus"), "certs", "--out-dir", str(certs)], 120)
    (certs / "server.key").chmod(0o644)  # read by the container's own user; a temporary folder
    prefix = next(
        m.group(1)
        for k in compose["services"][HTTPS_SERVICE]["environment"]
        if (m := PREFIX_RE.match(k))
    )
    stack.https[HTTPS_SERVICE] = certs / "ca.crt"
    override: dict[str, Any] = {
        "services": {
            "mosquitto": {
                "volumes": [
                    {
                        "type": "bind",
                        "source": str(broker_dir / "passwd"),
                        "target": "/mosquitto/config/passwd",
                        "read_only": True,
                    }
                ]
            },
            HTTPS_SERVICE: {
                "volumes": [
                    {"type": "bind", "source": str(certs), "target": "/certs", "read_only": True}
                ],
                "environment": {
                    f"{prefix}API_TLS_CERT_FILE": "/certs/server.crt",
                    f"{prefix}API_TLS_KEY_FILE": "/certs/server.key",
                },
            },
            **{name: {"profiles": ["skipped-by-compose-check"]} for name in SKIPPED},
        }
    }
    stack.override.write_text(yaml.safe_dump(override, sort_keys=False))
    return stack


def container_ids(engine: Engine, stack: Stack) -> dict[str, str]:
    out = engine.docker(
        "ps",
        "-a",
        "--filter",
        f"label=com.docker.compose.project={stack.project}",
        "--format",
        '{{.ID}} {{.Label "com.docker.compose.service"}}',
    )
    return dict(reversed(line.split()) for line in out.splitlines() if line.strip())  # type: ignore[misc]


def wait_healthy(
    engine: Engine,
    stack: Stack,
    rows: dict[str, Row],
    started: float,
    timeout_s: float,
    up: subprocess.Popen[str],
) -> None:
    deadline = time.monotonic() + timeout_s
    pending: set[str] = set()
    while time.monotonic() < deadline:
        ids = container_ids(engine, stack)
        pending = set()
        found = (
            json.loads(engine.docker("inspect", *ids.values(), check=False) or "[]") if ids else []
        )
        by_id = {info["Id"][:12]: info["State"] for info in found}
        for name, cid in ids.items():
            row = rows.setdefault(name, Row(name, "-"))
            state = by_id.get(cid[:12], {})
            health = (state.get("Health") or {}).get("Status", "none")
            if state.get("Status") != "running" or health != "healthy":
                pending.add(name)
                row.healthy = health if state.get("Status") == "running" else state.get("Status")
            elif row.ready_s is None:
                row.healthy, row.ready_s = "yes", time.monotonic() - started
                log(f"{name}: healthy after {row.ready_s:.0f} s")
        if ids and not pending and up.poll() is not None:
            return
        if up.poll() not in (None, 0):
            return  # `up` failed: its output says why
        time.sleep(1)
    raise CheckError(f"not healthy within {timeout_s:.0f} s: {', '.join(sorted(pending))}")


# --- the checks ----------------------------------------------------------------------------------


def check_readyz(stack: Stack) -> str:
    import ssl

    for name, port in stack.api_ports.items():
        ca = stack.https.get(name)
        url = f"{'https' if ca else 'http'}://127.0.0.1:{port}/readyz"
        context = ssl.create_default_context(cafile=str(ca)) if ca else None
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as rsp:  # noqa: S310
                if rsp.status != 200:
                    raise CheckError(f"{name} /readyz answered {rsp.status}")
        except urllib.error.URLError as err:
            raise CheckError(f"{name} {url}: {err}") from err
    https = ", ".join(f"{n} over HTTPS (certificate verified)" for n in stack.https)
    return f"/readyz 200 on all {len(stack.api_ports)} services ({https})"


def check_anonymous_refused(stack: Stack) -> str:
    code = mqtt_connack("127.0.0.1", stack.ports["mosquitto:1883"])
    if code in (None, 0):
        raise CheckError(f"the broker answered an anonymous CONNECT with {code!r} (want a refusal)")
    return f"the broker refuses an anonymous client (CONNACK {code})"


def check_readings(stack: Stack, timeout_s: float) -> str:
    import psycopg

    env = stack.env
    dsn = (
        f"host=127.0.0.1 port={stack.ports['postgres:5432']} user={env['POSTGRES_USER']} "
        f"password={env['POSTGRES_PASSWORD']} dbname={env['POSTGRES_DB']}"
    )
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM readings").fetchone()
            count = int(row[0]) if row else 0
            if count > 0:
                return f"{count} readings in PostgreSQL"
        time.sleep(2)
    raise CheckError(f"no reading reached PostgreSQL within {timeout_s:.0f} s")


def check_setpoint(stack: Stack, timeout_s: float) -> str:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    env = stack.env
    site = env.get("SITE_ID") or "site-1"
    root = env.get("MQTT_ROOT") or "der/v1"
    acks: list[dict[str, Any]] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"check-{uuid.uuid4().hex[:6]}")
    client.username_pw_set("scada", env["MQTT_PASSWORD_SCADA"])
    client.on_message = lambda _c, _u, msg: acks.append(json.loads(msg.payload))
    client.connect("127.0.0.1", stack.ports["mosquitto:1883"])
    client.loop_start()
    try:
        client.subscribe(f"{root}/{site}/control/battery/ack", qos=1)
        setpoint_id = f"compose-check-{uuid.uuid4().hex[:8]}"
        body = json.dumps(
            {"target": "battery_p_kw", "value": 1.5, "ttl_s": 120, "setpoint_id": setpoint_id}
        ).encode()
        port = stack.api_ports["edge_simulator"]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/devices/battery/setpoints?site_id={site}",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {env['API_TOKEN']}",
            },
        )
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline and status is None:  # subscribed before the POST
            try:
                with urllib.request.urlopen(req, timeout=15) as rsp:  # noqa: S310 (http only)
                    status = rsp.status
            except urllib.error.HTTPError as err:
                raise CheckError(f"POST setpoint: HTTP {err.code} {err.read()[:300]!r}") from err
            except urllib.error.URLError:
                time.sleep(1)
        while time.monotonic() < deadline:
            mine = [a for a in acks if a.get("setpoint_id") == setpoint_id]
            if mine:
                return f"REST setpoint {status}, acknowledged on MQTT: {mine[0].get('status')}"
            time.sleep(0.2)
        raise CheckError(f"no MQTT acknowledgement of the REST setpoint (HTTP {status})")
    finally:
        client.loop_stop()
        client.disconnect()


# --- report ------------------------------------------------------------------------------------


def table(rows: dict[str, Row]) -> str:
    lines = [
        "| image | build s | size MB | healthy | first-ready s |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for row in rows.values():
        b = f"{row.build_s:.0f}" if row.build_s is not None else "stand-in"
        s = f"{row.size_mb:.0f}" if row.size_mb is not None else "-"
        r = f"{row.ready_s:.0f}" if row.ready_s is not None else "-"
        lines.append(f"| {row.image} | {b} | {s} | {row.healthy} | {r} |")
    return "\n".join(lines)


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    WORK.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--health-timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the stack and files (debug)")
    parser.add_argument("--images-only", action="store_true", help="build, do not start")
    parser.add_argument(
        "--rebuild-base",
        action="store_true",
        help="remove the base images (stand-ins) first and build them again",
    )
    args = parser.parse_args()
    t0 = time.monotonic()
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    rows: dict[str, Row] = {}
    failures: list[str] = []
    stack: Stack | None = None
    engine = start_engine()
    with workspace(args.keep) as workdir:
        try:
            for note in base_images(engine, workdir, args.rebuild_base):
                log(note)
            for name, why in SKIPPED.items():
                log(why)
                rows[name] = Row(name, compose["services"][name]["image"], healthy="skipped")
            for name in INFRA:
                rows[name] = Row(name, compose["services"][name]["image"])
                size = engine.docker("image", "inspect", "--format", "{{.Size}}", rows[name].image)
                rows[name].size_mb = int(size.strip()) / 1e6
            build_services(engine, compose, rows)
            if args.images_only:
                print(table(rows))
                return 0
            stack = make_stack(compose, workdir)
            log(f"docker compose up (project {stack.project}, free loopback host ports)")
            up_at = time.monotonic()
            # `up -d` itself waits for the healthchecks `depends_on` names: poll meanwhile, so
            # first-ready is when each container turned healthy, not when `up` returned
            up = subprocess.Popen(
                [
                    *compose_command(),
                    "-p",
                    stack.project,
                    "--env-file",
                    str(stack.env_file),
                    "-f",
                    str(REPO / "docker-compose.yml"),
                    "-f",
                    str(stack.override),
                    "up",
                    "-d",
                    "--no-build",
                ],
                env=engine.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            wait_healthy(engine, stack, rows, up_at, args.health_timeout, up)
            out, _ = up.communicate(timeout=600)
            if up.returncode != 0:
                raise CheckError(f"docker compose up failed ({up.returncode}):\n{out[-3000:]}")
            checks: list[Callable[[], str]] = [
                lambda: check_readyz(stack),
                lambda: check_anonymous_refused(stack),
                lambda: check_readings(stack, 180),
                lambda: check_setpoint(stack, 60),
            ]
            for check in checks:
                try:
                    log("ok: " + check())
                except CheckError as err:
                    failures.append(str(err))
                    log(f"FAILED: {err}")
        except CheckError as err:
            failures.append(str(err))
            log(f"FAILED: {err}")
        finally:
            if stack is not None:
                logs = stack.compose(
                    engine, "logs", "--no-color", "--tail", "30", check=False, timeout=120
                )
                (WORK / "last-run-logs.txt").write_text(logs.stdout + logs.stderr)
                if failures:
                    log(f"container logs (last 30 lines each): {WORK / 'last-run-logs.txt'}")
                if not args.keep:
                    log("docker compose down -v (containers, network, volumes)")
                    stack.compose(
                        engine, "down", "-v", "--remove-orphans", check=False, timeout=300
                    )
            if not args.keep:
                engine.stop()
                for pid in _adopted:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
    print()
    print(table(rows))
    total = time.monotonic() - t0
    print(f"\ncompose-check: {'FAILED' if failures else 'passed'} in {total:.0f} s")
    for failure in failures:
        print(f"  - {failure.splitlines()[0]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
