"""`derbus up` (what `make run` calls): a broker and every service as its own process, no Docker.

The broker is a local `mosquitto` when installed, else the pure-Python `amqtt` broker. Each
service folder with a `[tool.derbus]` table and a `__main__` is started with `python -m <name>`,
its API port and data folder set through its own env prefix, its log in the run folder. The
platform supervises its children: one that exits is reported and restarted after a backoff
(1 s doubling to at most 30 s, back to 1 s once it ran a minute; never before its last will is
on the bus, see `restart_floor_s`). The broker's URL is written
to `<run root>/broker-url` (what `derbus broker-url` prints) and the children's PIDs and ports
to `<run folder>/platform.json`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from derbus import health
from derbus.errors import ConfigError
from derbus.jsonfile import write_json
from derbus.settings import MqttSettings
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
    "ev_charging",
)
DEFAULT_MQTT_PORT = 1883
DEFAULT_MODBUS_PORT = 5020
GATEWAY_DEVICES = Path("deploy/gateway/devices.local.yaml")
"""The meter gateway's devices for `make run`: the simulator's SunSpec Modbus server."""
DEMO_PV_PEAK_KW = 5.0
"""The simulated site's PV inverter capacity (edge_simulator's default SolarConfig), handed to
the forecaster's cold start as the installer would give the nameplate."""
START_FIRST = ("edge_simulator",)
"""Started alone and given up to START_FIRST_WAIT_S to answer /readyz before the others: the
chain starts from its telemetry, and on a busy 2-core machine nine interpreters starting at once
delayed its first reading by ~1.5 min."""
START_FIRST_WAIT_S = 30.0
BROKER_URL_FILE = "broker-url"
PLATFORM_FILE = "platform.json"
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
WILL_MARGIN_S = 2.0
"""Added to the MQTT 5 will delay before a restart: Mosquitto checks will delays once a second,
so a will of delay 2 s came out up to ~2.9 s after a `kill -9` (measured)."""
STABLE_AFTER_S = 60.0
"""A child that ran this long before exiting is restarted after RESTART_MIN_S again."""


@dataclass(frozen=True)
class ServiceSpec:
    """A runnable service found in the tree."""

    name: str
    env_prefix: str
    api_port: int
    path: Path
    companions: dict[str, int] = field(default_factory=dict)
    """Sub-commands started next to the service (e.g. the feeder simulation), with API ports."""
    extra_ports: dict[str, int] = field(default_factory=dict)
    """Other listening ports (setting name without prefix → default), e.g. OCPP_PORT."""


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
        extra = {str(k): int(v) for k, v in meta.get("extra_ports", {}).items()}
        found.append(
            ServiceSpec(
                name,
                meta["env_prefix"],
                int(meta["api_port"]),
                pyproject.parent,
                companions,
                extra,
            )
        )
    order = {n: i for i, n in enumerate(EMBEDDED_ORDER)}
    return sorted(found, key=lambda s: order.get(s.name, 99))


# --- ports ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortChoice:
    """A port to listen on and, when the default was taken, the one line that says so."""

    port: int
    note: str | None = None


def choose_port(requested: int | None, default: int, what: str, how_to_choose: str) -> PortChoice:
    """The requested port (ConfigError when taken), else the default, else a free one.

    Args:
        requested: the port the user asked for (None: no choice made).
        default: the usual port (1883 for MQTT).
        what: what listens there, for the messages ("MQTT").
        how_to_choose: how the user picks another port (`make run MQTT_PORT=…`).
    """
    if requested is not None:
        if requested and port_open("127.0.0.1", requested):
            raise ConfigError(
                f"{what} port {requested} is already taken on 127.0.0.1; choose another with"
                f" {how_to_choose}"
            )
        return PortChoice(requested or free_port())
    if not port_open("127.0.0.1", default):
        return PortChoice(default)
    port = free_port()
    return PortChoice(
        port,
        f"{what} port {default} is taken (another broker is running there): this platform's"
        f" broker listens on 127.0.0.1:{port}; choose the port with {how_to_choose}",
    )


def broker_url(port: int) -> str:
    """The URL of a broker on this machine."""
    return f"mqtt://127.0.0.1:{port}"


def read_broker_url(run_root: Path) -> str | None:
    """The URL written by the running (or last) `derbus up` under `run_root`, if any."""
    path = run_root / BROKER_URL_FILE
    if not path.exists():
        return None
    return path.read_text().strip() or None


def url_port(url: str) -> int | None:
    """The port of an mqtt://host:port URL."""
    match = re.fullmatch(r"mqtts?://[^:/]+:(\d+)/?", url.strip())
    return int(match.group(1)) if match else None


# --- children ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when `derbus up` dies (Linux), own process group."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One supervised process: how to start it again, its process and its restart state."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    restart_at: float | None = None
    """Monotonic time of the pending restart (None: running or stopped)."""

    def start(self) -> None:
        """Start (or restart) the process, appending to its log."""
        log: IO[bytes] = self.log_path.open("ab")
        try:
            # own process group: a Ctrl-C or a group signal reaches `derbus up`, which stops
            # the children in order (services first, broker last); they die with it
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            log.close()
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int | None:
        """PID of the running process."""
        return None if self.proc is None else self.proc.pid


def exit_text(code: int) -> str:
    """`status 3` or `signal SIGKILL` for a Popen return code."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


def restart_delay_s(failures_in_a_row: int, floor_s: float = RESTART_MIN_S) -> float:
    """Backoff before restart number `failures_in_a_row` (1, 2, 4 … at most RESTART_MAX_S).

    Never below `floor_s` (see `restart_floor_s`).
    """
    backoff = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** max(failures_in_a_row - 1, 0))
    return float(max(floor_s, backoff))


def restart_floor_s(mqtt: MqttSettings) -> float:
    """The least wait before a child is restarted: past its MQTT 5 will delay.

    A child's client id (and so its session) is the same in every run. A new run that connects
    within the will delay of the old one's lost connection takes the session over, and the broker
    then publishes no will at all: the bus never sees the killed service `offline` (seen as a
    flaky platform test: a `kill -9`ed meter_gateway back in ~2 s said only `online`).
    """
    if mqtt.protocol != "5" or mqtt.will_delay_s <= 0:
        return RESTART_MIN_S
    return max(RESTART_MIN_S, mqtt.will_delay_s + WILL_MARGIN_S)


@dataclass
class Platform:
    """The processes `derbus up` started, supervised, and stopped by PID on exit."""

    repo: Path
    run_root: Path
    run_dir: Path
    mqtt_port: int
    children: dict[str, Child]
    api_ports: dict[str, int]
    broker_kind: str = "mosquitto"
    modbus_port: int | None = None
    stopping: bool = False
    restart_floor_s: float = RESTART_MIN_S
    """See `restart_floor_s()`."""

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        """The current process of each child."""
        return {n: c.proc for n, c in self.children.items() if c.proc is not None}

    @property
    def url(self) -> str:
        """The broker's URL."""
        return broker_url(self.mqtt_port)

    def write_state(self) -> None:
        """Write platform.json (PIDs, ports, broker URL) into the run folder."""
        state = {
            "broker_url": self.url,
            "broker": self.broker_kind,
            "run_dir": str(self.run_dir),
            "pid": os.getpid(),
            "modbus_port": self.modbus_port,
            "children": {
                n: {"pid": c.pid, "restarts": c.restarts, "api_port": self.api_ports.get(n)}
                for n, c in self.children.items()
            },
        }
        write_json(self.run_dir / PLATFORM_FILE, state, indent=2)

    def supervise(self, now: float | None = None) -> list[str]:
        """Check every child once: report exits, schedule and perform restarts.

        Returns:
            One line per event (an exit, a restart), for the terminal.
        """
        if self.stopping:
            return []
        now = time.monotonic() if now is None else now
        events = []
        changed = False
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    child.start()
                    changed = True
                    events.append(
                        f"{child.name}: restarted (pid {child.pid}, restart {child.restarts})"
                    )
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            ran_s = now - child.started_at
            child.failures_in_a_row = 1 if ran_s >= STABLE_AFTER_S else child.failures_in_a_row + 1
            delay = restart_delay_s(child.failures_in_a_row, self.restart_floor_s)
            child.restart_at = now + delay
            events.append(
                f"{child.name}: exited with {exit_text(child.proc.returncode)} after {ran_s:.0f} s;"
                f" restarting in {delay:.0f} s (log {child.log_path})"
            )
        if changed:
            self.write_state()
        return events

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child (services first, broker last), then SIGKILL stragglers."""
        self.stopping = True
        names = [n for n in self.children if n != "broker"]
        for group in (names, ["broker"] if "broker" in self.children else []):
            for name in group:
                proc = self.children[name].proc
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for name in group:
                proc = self.children[name].proc
                if proc is None:
                    continue
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
        url_file = self.run_root / BROKER_URL_FILE
        with contextlib.suppress(OSError):
            if url_file.read_text().strip() == self.url:
                url_file.unlink()


# --- start ---------------------------------------------------------------------------------


def broker_child(run_dir: Path, port: int) -> tuple[Child, str]:
    """The broker as a child: mosquitto (or amqtt when mosquitto is missing) on 127.0.0.1:port."""
    data = run_dir / "broker"
    data.mkdir(parents=True, exist_ok=True)
    binary = find_binary("mosquitto")
    if binary:
        conf = data / "mosquitto.conf"
        conf.write_text(mosquitto_conf(port, data))
        argv, kind = [binary, "-c", str(conf)], "mosquitto"
    else:
        argv = [sys.executable, "-m", "derbus.embedded_broker", "--port", str(port)]
        kind = "amqtt (embedded)"
    return Child("broker", argv, dict(os.environ), run_dir / "broker.log", run_dir), kind


def wait_port(child: Child, port: int, timeout_s: float = 20.0) -> None:
    """Wait until the child listens on port (RuntimeError when it exits or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while not port_open("127.0.0.1", port):
        if child.proc is None or child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not start on port {port}; see {child.log_path}")
        time.sleep(0.1)


def gateway_devices(repo: Path, run_dir: Path, modbus_port: int) -> Path:
    """The gateway's devices for `make run`, with the simulator's Modbus port filled in."""
    text = (repo / GATEWAY_DEVICES).read_text()
    rendered = re.sub(rf"\bport: {DEFAULT_MODBUS_PORT}\b", f"port: {modbus_port}", text)
    path = run_dir / "gateway-devices.yaml"
    path.write_text(rendered)
    return path


def demo_stations(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """ev_charging's `EV_CHARGING_STATIONS` for the simulator's charge point of the demo site.

    The simulator names its station `EDGE_SIMULATOR_OCPP_STATION_PREFIX` + site id and shows
    `EDGE_SIMULATOR_OCPP_ID_TOKEN`; the demo is one site (`SITE_ID`). A fleet (`EDGE_SIMULATOR_SITES` > 1) gets no
    stations here: configure `EV_CHARGING_STATIONS` for it.
    """
    if environ.get("EDGE_SIMULATOR_SITES", "1") != "1" or environ.get("EDGE_SIMULATOR_FIRST_SITE"):
        return {}
    site = environ.get("SITE_ID", "site-1")
    station = environ.get("EDGE_SIMULATOR_OCPP_STATION_PREFIX", "sim-") + site
    token = environ.get("EDGE_SIMULATOR_OCPP_ID_TOKEN", "SIM-TAG")
    return {station: {"site_id": site, "id_tokens": [token]}}


def run_defaults(
    repo: Path,
    run_dir: Path,
    modbus_port: int,
    ocpp_port: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, dict[str, str]]:
    """Per service, the environment `make run` adds unless the user's environment sets it.

    With `ocpp_port` (ev_charging runs) the simulator's charge points connect to it and
    ev_charging accepts the demo site's station.
    """
    defaults = {
        "edge_simulator": {"EDGE_SIMULATOR_MODBUS_PORT": str(modbus_port)},
        "meter_gateway": {
            "METER_GATEWAY_DEVICES_FILE": str(gateway_devices(repo, run_dir, modbus_port))
        },
        "forecaster": {"FORECASTER_COLD_START_PV_PEAK_KW": str(DEMO_PV_PEAK_KW)},
    }
    stations = demo_stations(environ)
    if ocpp_port is not None and stations:
        defaults["edge_simulator"]["EDGE_SIMULATOR_OCPP_URL"] = f"ws://127.0.0.1:{ocpp_port}"
        defaults["ev_charging"] = {"EV_CHARGING_STATIONS": json.dumps(stations)}
    return defaults


def up(
    repo: Path,
    mqtt_port: int | None = None,
    only: list[str] | None = None,
    free_ports: bool = False,
    run_root: Path | None = None,
    say: Callable[[str], None] = print,
) -> Platform:
    """Start the broker and the services; returns once they were launched (not yet ready).

    With `free_ports` every API (and the simulator's Modbus server) gets a free port instead of
    its default (8101…, 5020), so a second platform (a test run next to `make run`) does not
    collide; such a platform writes `broker-url` only into a `run_root` it was given. Raises
    ConfigError when the requested MQTT port is taken.
    """
    # a second platform on free ports (a test next to `make run`) does not take over the
    # run/broker-url of the first, unless it was given a run root of its own
    claim_url = run_root is not None or not free_ports
    run_root = run_root or repo / "run"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = run_root / stamp
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = run_root / f"{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    choice = choose_port(mqtt_port, DEFAULT_MQTT_PORT, "MQTT", "`make run MQTT_PORT=<port>`")
    if choice.note:
        say(choice.note)
    modbus = choose_port(None, DEFAULT_MODBUS_PORT, "Modbus", "EDGE_SIMULATOR_MODBUS_PORT")
    modbus_port = free_port() if free_ports else modbus.port
    broker, kind = broker_child(run_dir, choice.port)
    broker.start()
    wait_port(broker, choice.port)
    platform = Platform(
        repo, run_root, run_dir, choice.port, {"broker": broker}, {}, kind, modbus_port
    )
    mqtt = MqttSettings() if kind == "mosquitto" else MqttSettings(protocol="3.1.1")
    platform.restart_floor_s = restart_floor_s(mqtt)
    if claim_url:
        (run_root / BROKER_URL_FILE).write_text(platform.url + "\n")
    say(f"broker: {kind} at {platform.url}  (`derbus broker-url`; logs in {run_dir})")
    specs = [s for s in discover_services(repo) if not only or s.name in only]
    extra_ports: dict[str, dict[str, int]] = {}
    for spec in specs:  # every port first: a service may be told where the others listen
        platform.api_ports[spec.name] = free_port() if free_ports else spec.api_port
        extra_ports[spec.name] = {
            setting: free_port() if free_ports else default
            for setting, default in spec.extra_ports.items()
        }
    ocpp_port = extra_ports.get("ev_charging", {}).get("OCPP_PORT")
    defaults = run_defaults(repo, run_dir, modbus_port, ocpp_port)
    urls = {name: f"http://127.0.0.1:{p}" for name, p in platform.api_ports.items()}
    for spec in specs:
        api_port = platform.api_ports[spec.name]
        env = dict(os.environ)
        for key, value in defaults.get(spec.name, {}).items():
            env.setdefault(key, value)
        env.update(
            {
                "MQTT_HOST": "127.0.0.1",
                "MQTT_PORT": str(choice.port),
                "DERBUS_SERVICE_URLS": json.dumps(urls),
                f"{spec.env_prefix}API_PORT": str(api_port),
                f"{spec.env_prefix}DATA_DIR": str(run_dir / spec.name),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for setting, port in extra_ports[spec.name].items():
            env[f"{spec.env_prefix}{setting}"] = str(port)
        if kind != "mosquitto":
            env.setdefault("MQTT_PROTOCOL", "3.1.1")  # amqtt speaks MQTT 3.1.1 only
        # one embedded cloud database shared by cloud_sync, feature_engineering and forecaster
        env.setdefault("DATABASE_URL", f"sqlite:///{run_dir / 'cloud.db'}")
        argv = [sys.executable, "-m", spec.name]
        child = Child(spec.name, argv, env, run_dir / f"{spec.name}.log", repo)
        platform.children[spec.name] = child
        child.start()
        if spec.name in START_FIRST:
            wait_until_ready(api_port, child, START_FIRST_WAIT_S)
        for command, default_port in spec.companions.items():
            name = f"{spec.name} {command}"
            platform.api_ports[name] = free_port() if free_ports else default_port
            argv = [
                sys.executable,
                "-m",
                spec.name,
                command,
                "--api-port",
                str(platform.api_ports[name]),
            ]
            companion = Child(name, argv, env, run_dir / f"{spec.name}-{command}.log", repo)
            platform.children[name] = companion
            companion.start()
    platform.write_state()
    return platform


def wait_until_ready(port: int, child: Child, timeout_s: float) -> bool:
    """Poll a child's /readyz until it answers, exits, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready(port):
            return True
        if child.proc is None or child.proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def ready(port: int) -> bool:
    """Whether a service API on localhost:port answers /readyz with 200 (plain HTTP)."""
    return health.probe(port, {"DERBUS_HEALTH_SCHEME": "http"}, timeout_s=1.0) == ""


def readiness(platform: Platform) -> dict[str, bool]:
    """Which services answer /readyz now."""
    return {n: ready(platform.api_ports[n]) for n in platform.children if n != "broker"}


def wait_ready(platform: Platform, timeout_s: float = 30.0) -> dict[str, bool]:
    """Poll every service's /readyz until all answer or the timeout passes."""
    names = [n for n in platform.children if n != "broker"]
    status = dict.fromkeys(names, False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(status.values()):
        for name in names:
            if not status[name]:
                status[name] = ready(platform.api_ports[name])
        time.sleep(0.25)
    return status
