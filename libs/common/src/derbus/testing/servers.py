"""Real servers for tests: Mosquitto and PostgreSQL started on free loopback ports, stopped by PID."""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derbus.settings import MqttSettings

MOSQUITTO_CONF = """\
# derbus broker: explicit queue limits (the default 1000 silently drops bursts); sessions and
# retained messages kept across a restart, saved every second (a kill -9 loses at most 1 s)
listener {port} 127.0.0.1
allow_anonymous {anonymous}
persistence true
persistence_location {data}/
autosave_interval 1
persistent_client_expiration 2d
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 0
set_tcp_nodelay true
user {user}
log_dest file {data}/mosquitto.log
log_type error
log_type warning
log_type notice
"""


def mosquitto_conf(port: int, data_dir: Path, allow_anonymous: bool = True) -> str:
    """A broker config on 127.0.0.1:port keeping its files in `data_dir` (as the current user).

    With `allow_anonymous=False` a client must log in (add `password_file`/`acl_file` lines).
    """
    return MOSQUITTO_CONF.format(
        port=port,
        data=data_dir,
        user=getpass.getuser(),
        anonymous="true" if allow_anonymous else "false",
    )


class ComponentUnavailableError(RuntimeError):
    """A real component (broker, database, server) cannot be found or started here."""


_LISTEN_PORTS_LOW = 10000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (outgoing connections take ports from it)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free TCP port on 127.0.0.1, outside the ephemeral range, never the same twice here.

    A port from `bind(0)` lies in the ephemeral range: between our check and the server's
    bind any outgoing connection on the machine may take it (a server then exits with
    "address already in use"). Ports below that range are only ever taken by explicit binds.
    """
    high = _ephemeral_low()
    if high - _LISTEN_PORTS_LOW >= 1000:
        if len(_handed_out) > (high - _LISTEN_PORTS_LOW) // 2:
            _handed_out.clear()
        for _ in range(200):
            port = random.randrange(_LISTEN_PORTS_LOW, high)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_binary(name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """Locate an executable on PATH or in `extra_dirs` (e.g. /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for d in (*extra_dirs, "/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_binary(name: str) -> str:
    """Where executable `name` is; ComponentUnavailableError saying how to install it if nowhere.

    The Debian package has the executable's name (mosquitto, nats-server, victoria-metrics).
    """
    binary = find_binary(name)
    if binary is None:
        raise ComponentUnavailableError(
            f"{name} is not installed (the Makefile installs it: `make deps` / "
            f"apt-get install {name})"
        )
    return binary


def wait_port(
    host: str, port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None
) -> None:
    """Wait until `host:port` accepts connections.

    Raises:
        ComponentUnavailableError: `proc` (the server, when given) exited, or nothing listened
            within `timeout` seconds; the message names `what`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise ComponentUnavailableError(
                f"{what} exited with status {proc.returncode} at start-up"
            )
        time.sleep(0.05)
    raise ComponentUnavailableError(
        f"{what} did not listen on {host}:{port} within {timeout:.0f} s"
    )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Stop a server process started here: SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclass
class MosquittoServer:
    """A Mosquitto broker process of our own on a free port, with persistence (restartable)."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="derbus-mosq-")))
    extra_conf: str = ""
    allow_anonymous: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt://host:port."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> MosquittoServer:
        """Start the broker (raises ComponentUnavailableError with the reason)."""
        binary = require_binary("mosquitto")
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(
            mosquitto_conf(self.port, self.data_dir, self.allow_anonymous) + self.extra_conf
        )
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_port(self.host, self.port, 10.0, "mosquitto", self.proc)
        return self

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file first)."""
        stop_process(self.proc)
        self.proc = None

    def saved_since(self, since: float) -> bool:
        """Whether the broker wrote its persistence file at or after `since` (`time.time()`).

        Mosquitto saves its sessions every `autosave_interval` (1 s here and in the shipped
        config): a session younger than the last save does not survive a SIGKILL (measured: lost
        when killed 1.2 s after the subscription, kept at 2.5 s).
        """
        db = self.data_dir / "mosquitto.db"
        return db.exists() and db.stat().st_mtime >= since

    def kill(self) -> None:
        """Kill the broker hard (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        deadline = time.monotonic() + 10
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def mqtt_test_settings(host: str, port: int, root: str, **fields: Any) -> MqttSettings:
    """Settings for a test broker under `root`: 3 connect retries, a 0.2-1 s reconnect backoff.

    `fields` set any other setting, or override those three.
    """
    quick: dict[str, Any] = {
        "connect_retries": 3,
        "reconnect_min_delay_s": 0.2,
        "reconnect_max_delay_s": 1.0,
    }
    return MqttSettings(host=host, port=port, root=root, **(quick | fields))


def _pg_bin_dir() -> Path | None:
    for pg_ctl in (
        shutil.which("pg_ctl"),
        *sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True),
    ):
        if pg_ctl and Path(pg_ctl).exists():
            real = Path(pg_ctl).resolve()
            if (real.parent / "initdb").exists():
                return real.parent
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "initdb").exists():
            return cand
    return None


@dataclass
class PostgresServer:
    """A temporary PostgreSQL cluster of our own on a free port (initdb + pg_ctl), restartable.

    As root it runs as the `postgres` system user (PostgreSQL refuses to run as root).
    """

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="derbus-pg-")))
    started: bool = False

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def url(self) -> str:
        """postgresql://postgres@host:port/postgres."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _run(self, args: list[str], timeout: float = 120) -> None:
        cmd = args
        if os.geteuid() == 0:
            runuser = find_binary("runuser")
            if runuser is None:
                raise ComponentUnavailableError(
                    "running as root and no `runuser` to drop to postgres"
                )
            cmd = [runuser, "-u", "postgres", "--", *args]
        result = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise ComponentUnavailableError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()[-500:]}"
            )

    def start(self) -> PostgresServer:
        """Create the cluster with initdb (the first time) and start the server."""
        bin_dir = _pg_bin_dir()
        if bin_dir is None:
            raise ComponentUnavailableError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found; the Makefile installs postgresql"
            )
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, user="postgres", group="postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        opts = f"-c listen_addresses={self.host} -c port={self.port} -c unix_socket_directories={self.base_dir} -c fsync=off"
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-o",
                opts,
                "-l",
                str(self.base_dir / "pg.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self.started = True
        wait_port(self.host, self.port, 30.0, "postgres", None)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast` or `immediate`)."""
        if not self.started:
            return
        bin_dir = _pg_bin_dir()
        assert bin_dir is not None
        self._run([str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])
        self.started = False

    def cleanup(self) -> None:
        """Stop and remove the cluster."""
        with contextlib.suppress(ComponentUnavailableError):
            self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def create_database(admin_url: str, prefix: str = "derbus_test") -> str:
    """Create a fresh database on a server and return its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(admin_url: str, url: str) -> None:
    """Drop a database created by `create_database` (terminating its connections)."""
    import psycopg

    name = url.rpartition("/")[2].split("?")[0]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_accepts(url: str) -> bool:
    """Whether a PostgreSQL server at `url` accepts a connection."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def mqtt_connack(host: str, port: int, timeout_s: float = 5.0) -> int | None:
    """The CONNACK return code of a clean MQTT 3.1.1 session (None: no answer)."""
    client_id = f"derbus-probe-{uuid.uuid4().hex[:8]}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(client_id).to_bytes(2, "big") + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = sock.recv(4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return None
    if len(answer) < 4 or answer[0] != 0x20:
        return None
    return answer[3]


NATS_NODE_CONF = """\
# derbus test cluster node: NATS JetStream serving MQTT 3.1.1, sessions replicated on 3 nodes
server_name: {name}
listen: 127.0.0.1:{client_port}
jetstream {{ store_dir: "{data}", max_memory_store: 64MB, max_file_store: 512MB }}
cluster {{
  name: derbus
  listen: 127.0.0.1:{cluster_port}
  routes: [{routes}]
}}
mqtt {{ listen: 127.0.0.1:{mqtt_port}, stream_replicas: {replicas} }}
"""


@dataclass
class NatsNode:
    """One node of a `NatsCluster`: its ports, folder and process."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """host:port of its MQTT listener."""
        return f"127.0.0.1:{self.mqtt_port}"


@dataclass
class NatsCluster:
    """A NATS JetStream cluster of `size` nodes on free loopback ports, each serving MQTT 3.1.1.

    Debian's `nats-server` (2.9): MQTT sessions, QoS 1 messages and retained messages live in
    JetStream streams replicated on every node, so a client that fails over to another node
    keeps its session. No MQTT 5 (no message expiry, no shared subscriptions).
    """

    size: int = 3
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="derbus-nats-")))
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def brokers(self) -> str:
        """The MQTT endpoints as `MqttSettings.brokers` takes them."""
        return ",".join(n.endpoint for n in self.nodes)

    def start(self) -> NatsCluster:
        """Start every node and wait until each accepts MQTT connections."""
        require_binary("nats-server")  # before any node: the error says how to install it
        if not self.nodes:
            for i in range(self.size):
                self.nodes.append(
                    NatsNode(
                        f"n{i + 1}",
                        free_port(),
                        free_port(),
                        free_port(),
                        self.base_dir / f"n{i + 1}",
                    )
                )
        for node in self.nodes:
            self.start_node(node, wait=False)
        for node in self.nodes:
            self._wait_listening(node)
        for node in self.nodes:
            self.wait_ready(node)
        return self

    def wait_ready(self, node: NatsNode, timeout_s: float = 60.0) -> None:
        """Wait until the node accepts an MQTT session (JetStream has elected its leaders).

        Its first session creates the MQTT streams with 3 replicas: that needs every node, so
        a node that died at start-up (say on a port taken meanwhile) fails this at once, with
        that node's own last error, instead of a 60 s "not ready".
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for other in self.nodes:
                if other.proc is not None and other.proc.poll() is not None:
                    raise ComponentUnavailableError(
                        f"nats-server {other.name} exited with status {other.proc.returncode} "
                        f"at start-up: {self.last_error(other)}"
                    )
            if mqtt_connack("127.0.0.1", node.mqtt_port) == 0:
                return
            time.sleep(0.2)
        raise ComponentUnavailableError(
            f"nats-server {node.name} did not accept MQTT sessions within {timeout_s:.0f} s: "
            f"{self.last_error(node)}"
        )

    def last_error(self, node: NatsNode) -> str:
        """The node's last fatal or error log line (or a note that it logged none)."""
        log = self.base_dir / f"{node.name}.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return f"no log at {log}"
        errors = [line for line in lines if "[FTL]" in line or "[ERR]" in line]
        return errors[-1].strip() if errors else f"no error in {log}"

    def start_node(self, node: NatsNode, wait: bool = True) -> None:
        """(Re)start one node on its ports and folder."""
        binary = require_binary("nats-server")
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.base_dir / f"{node.name}.conf"
        conf.write_text(
            NATS_NODE_CONF.format(
                name=node.name,
                client_port=node.client_port,
                cluster_port=node.cluster_port,
                mqtt_port=node.mqtt_port,
                data=node.data_dir,
                routes=routes,
                replicas=min(3, len(self.nodes)),
            )
        )
        node.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-l", str(self.base_dir / f"{node.name}.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            self._wait_listening(node)

    def _wait_listening(self, node: NatsNode) -> None:
        try:
            wait_port("127.0.0.1", node.mqtt_port, 30.0, f"nats-server {node.name}", node.proc)
        except ComponentUnavailableError as err:
            raise ComponentUnavailableError(f"{err}: {self.last_error(node)}") from None

    def node_at(self, endpoint: str) -> NatsNode:
        """The node whose MQTT listener is `endpoint` (host:port)."""
        return next(n for n in self.nodes if n.endpoint == endpoint)

    def kill_node(self, node: NatsNode) -> None:
        """Kill one node hard (SIGKILL), as a crash would."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)
        node.proc = None

    def stop(self) -> None:
        """Stop every node (SIGTERM)."""
        for node in self.nodes:
            stop_process(node.proc)
            node.proc = None

    def cleanup(self) -> None:
        """Stop and remove the folders."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
