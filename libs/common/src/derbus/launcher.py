"""`derbus up` (what `make run` calls): a broker and every service as its own process, no Docker.

The broker is a local `mosquitto` when installed, else the pure-Python `amqtt` broker. Each
service folder with a `[tool.derbus]` table and a `__main__` is started with `python -m <name>`,
its API port and data folder set through its own env prefix, its log in the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from derbus.testing.servers import find_binary, free_port, mosquitto_conf, port_open

EMBEDDED_ORDER = (
    "console",  # first: its URL is the first line `derbus up` prints
    "edge_simulator",
    "meter_gateway",
    "cloud_sync",
    "feature_engineering",
    "forecaster",
    "peak_shaving",
    "load_manager",
    "voltage_coordinator",
    "scada_bridge",
)


@dataclass(frozen=True)
class ServiceSpec:
    """A runnable service found in the tree."""

    name: str
    env_prefix: str
    api_port: int
    path: Path
    companions: dict[str, int] = field(default_factory=dict)
    """Sub-commands started next to the service (e.g. the feeder simulation), with API ports."""


def discover_services(repo: Path) -> list[ServiceSpec]:
    """Services under `repo/services` that have a `[tool.derbus]` table and a `__main__`."""
    found = []
    for pyproject in sorted((repo / "services").glob("*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text())
        meta = data.get("tool", {}).get("derbus")
        name = pyproject.parent.name
        if not meta or not (pyproject.parent / "src" / name / "__main__.py").exists():
            continue
        companions = {str(k): int(v) for k, v in meta.get("companions", {}).items()}
        found.append(
            ServiceSpec(
                name, meta["env_prefix"], int(meta["api_port"]), pyproject.parent, companions
            )
        )
    order = {n: i for i, n in enumerate(EMBEDDED_ORDER)}
    return sorted(found, key=lambda s: order.get(s.name, 99))


@dataclass
class Platform:
    """The processes `derbus up` started, stopped by PID on exit."""

    repo: Path
    run_dir: Path
    mqtt_port: int
    procs: dict[str, subprocess.Popen[bytes]]
    api_ports: dict[str, int]

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child (services first, broker last), then SIGKILL stragglers."""
        names = [n for n in self.procs if n != "broker"] + (
            ["broker"] if "broker" in self.procs else []
        )
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if name != "broker":
                continue
        deadline = time.monotonic() + timeout_s
        for name in names:
            proc = self.procs[name]
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def start_broker(run_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start mosquitto (or amqtt when mosquitto is missing) on 127.0.0.1:port."""
    data = run_dir / "broker"
    data.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "broker.log").open("wb")
    binary = find_binary("mosquitto")
    if binary:
        conf = data / "mosquitto.conf"
        conf.write_text(mosquitto_conf(port, data))
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        kind = "mosquitto"
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "derbus.embedded_broker", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        kind = "amqtt (embedded)"
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{kind} broker did not start; see {run_dir / 'broker.log'}")
        time.sleep(0.1)
    return proc, kind


def ready(port: int) -> bool:
    """Whether a service API on localhost:port answers /readyz with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def up(
    repo: Path,
    mqtt_port: int | None = None,
    only: list[str] | None = None,
    free_ports: bool = False,
) -> Platform:
    """Start the broker and the services; returns once they were launched (not yet ready).

    With `free_ports` every API gets a free port instead of its default (8101…), so a second
    platform (a test run next to `make run`) does not collide.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = repo / "run" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    port = mqtt_port or (1883 if not port_open("127.0.0.1", 1883) else free_port())
    broker, kind = start_broker(run_dir, port)
    print(f"broker: {kind} on 127.0.0.1:{port}  (logs in {run_dir})")
    procs: dict[str, subprocess.Popen[bytes]] = {"broker": broker}
    platform = Platform(repo, run_dir, port, procs, {})
    specs = [s for s in discover_services(repo) if not only or s.name in only]
    for spec in specs:  # every port first: a service may be told where the others listen
        platform.api_ports[spec.name] = free_port() if free_ports else spec.api_port
    urls = {name: f"http://127.0.0.1:{p}" for name, p in platform.api_ports.items()}
    for spec in specs:
        api_port = platform.api_ports[spec.name]
        env = dict(os.environ)
        env.update(
            {
                "MQTT_HOST": "127.0.0.1",
                "MQTT_PORT": str(port),
                "DERBUS_SERVICE_URLS": json.dumps(urls),
                f"{spec.env_prefix}API_PORT": str(api_port),
                f"{spec.env_prefix}DATA_DIR": str(run_dir / spec.name),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if kind != "mosquitto":
            env.setdefault("MQTT_PROTOCOL", "3.1.1")  # amqtt speaks MQTT 3.1.1 only
        # one embedded cloud database shared by cloud_sync, feature_engineering and forecaster
        env.setdefault("DATABASE_URL", f"sqlite:///{run_dir / 'cloud.db'}")
        log = (run_dir / f"{spec.name}.log").open("wb")
        procs[spec.name] = subprocess.Popen(
            [sys.executable, "-m", spec.name],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for command, default_port in spec.companions.items():
            name = f"{spec.name} {command}"
            platform.api_ports[name] = free_port() if free_ports else default_port
            log = (run_dir / f"{spec.name}-{command}.log").open("wb")
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    spec.name,
                    command,
                    "--api-port",
                    str(platform.api_ports[name]),
                ],
                cwd=repo,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    return platform


def wait_ready(platform: Platform, timeout_s: float = 30.0) -> dict[str, bool]:
    """Poll every service's /readyz until all answer or the timeout passes."""
    names = [n for n in platform.procs if n != "broker"]
    status = dict.fromkeys(names, False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(status.values()):
        for name in names:
            if not status[name]:
                status[name] = ready(platform.api_ports[name])
        time.sleep(0.25)
    return status
