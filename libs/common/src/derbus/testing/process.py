"""A service as a process of its own (start, stall, kill, ask); what a fresh import loads."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from derbus.testing.servers import free_port

HEADLESS_CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1280,1000",
)
"""Command-line switches of Debian's chromium run headless in a container, at one page size
(the console's browser tests and its benchmark)."""


def up_command(repo: Path, run_root: Path | str, mqtt_port: int, *args: str) -> list[str]:
    """The command line of `derbus up` from checkout `repo`, its files under `run_root`.

    Every part on a free port but the broker, on `mqtt_port`; `args` are further options.
    """
    return [
        sys.executable,
        "-m",
        "derbus.cli",
        "up",
        "--repo",
        str(repo),
        "--free-ports",
        "--run-root",
        str(run_root),
        "--mqtt-port",
        str(mqtt_port),
        *args,
    ]


def modules_loaded_by(
    module: str, candidates: tuple[str, ...], timeout_s: float = 240
) -> list[str]:
    """Which of `candidates` a fresh interpreter has loaded after `import module`.

    A bound, not a timing: a fresh interpreter once took over 60 s under a load of ~25.
    """
    code = f"import sys, {module}; print(','.join(m for m in {candidates!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=timeout_s
    )
    return [name for name in out.stdout.strip().split(",") if name]


@dataclass
class ServiceProcess:
    """`python -m <module>` with `env` (its API on `api_port`), output appended to `log`.

    Restartable on the same settings (so the same client id and files): `kill` (-9, a crash),
    `pause`/`resume` (SIGSTOP/SIGCONT, a stall), `stop` (SIGTERM, a clean stop), `start` again.
    """

    module: str
    env: dict[str, str]
    log: Path
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (does not wait: see `ready`)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> dict[str, Any] | None:
        """GET a JSON document of its API (None while it does not answer).

        Raises:
            RuntimeError: the process has exited.
        """
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.module} is not running: {self.log.read_text()[-2000:]}")
        try:
            got = httpx.get(f"http://127.0.0.1:{self.api_port}{path}", timeout=2)
        except httpx.HTTPError:
            return None
        return dict(got.json()) if got.status_code == 200 else None

    def ready(self) -> bool:
        """Whether it answers `/readyz` (connected, every subscription acknowledged)."""
        try:
            got = httpx.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        return got.status_code == 200

    def pause(self) -> None:
        """Stall it (SIGSTOP): the broker queues for it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let it run again (SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill it hard (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop it (SIGTERM; SIGKILL after `timeout_s`)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def service_env(prefix: str, host: str, port: int, root: str, **settings: str) -> dict[str, str]:
    """This process's environment for a service on the given broker.

    Without any `<prefix>*`, `MQTT_*`, `INFLUXDB_*` variable, plus the broker (quick
    reconnects) and `settings` (full variable names).
    """
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith((prefix, "MQTT_", "INFLUXDB_"))}
    env.update(
        MQTT_HOST=host,
        MQTT_PORT=str(port),
        MQTT_ROOT=root,
        MQTT_RECONNECT_MIN_DELAY_S="0.1",
        MQTT_RECONNECT_MAX_DELAY_S="0.5",
    )
    env.update(settings)
    return env
