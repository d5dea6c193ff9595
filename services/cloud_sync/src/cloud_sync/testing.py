"""cloud_sync as a process of its own for fault tests and benches: start, stall, kill, read.

`SyncProcess` runs `python -m cloud_sync` on a broker and a database with short timings (a
forwarding pass every 0.2 s, gaps asked again after 1 s), so a test or a bench can SIGSTOP it,
kill it (-9) and start it again on the same outbox and client id, and read its `/backlog`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from derbus.testing import free_port

Row = tuple[datetime, str, str, str, float]
"""(time, site_id, device_id, metric, value): one `readings` row."""


def stored_rows(url: str, sites: list[str]) -> set[Row]:
    """The `readings` rows of these sites in the cloud database."""
    with psycopg.connect(url, connect_timeout=2) as conn:
        found = conn.execute(
            "SELECT time, site_id, device_id, metric, value FROM readings WHERE site_id = ANY(%s)",
            (sites,),
        ).fetchall()
    return {(r[0].astimezone(UTC), r[1], r[2], r[3], r[4]) for r in found}


@dataclass
class SyncProcess:
    """`python -m cloud_sync` on `broker` (host:port) and `database_url`, files in `data_dir`.

    Args:
        extra_env: more settings (`SYNC_*`, `MQTT_*`), e.g. `SYNC_SHARED_GROUP` for a replica.
    """

    host: str
    port: int
    root: str
    database_url: str
    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    client_id: str = field(default_factory=lambda: f"sync-{uuid.uuid4().hex[:8]}")
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """Its stdout and stderr (appended across restarts)."""
        return self.data_dir / "cloud_sync.log"

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "INFLUXDB_", "MQTT_"))
        }
        env.update(
            MQTT_HOST=self.host, MQTT_PORT=str(self.port), MQTT_ROOT=self.root,
            MQTT_RECONNECT_MIN_DELAY_S="0.1", MQTT_RECONNECT_MAX_DELAY_S="0.5",
            SYNC_CLIENT_ID=self.client_id, SYNC_DATA_DIR=str(self.data_dir),
            SYNC_API_PORT=str(self.api_port), DATABASE_URL=self.database_url,
            SYNC_BATCH_SIZE="500", SYNC_INTERVAL_SECONDS="0.2", SYNC_KPI_INTERVAL_S="60",
            SYNC_GAP_RETRY_S="1", SYNC_LOG_LEVEL="WARNING",
        )  # fmt: skip
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the process (does not wait: see `ready`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_sync"], env=self.env(), stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def backlog(self) -> dict[str, Any] | None:
        """Its `/backlog` (None while it does not answer); raises when the process has exited."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"cloud_sync is not running: {self.log.read_text()[-2000:]}")
        try:
            got = httpx.get(f"http://127.0.0.1:{self.api_port}/backlog", timeout=2)
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

    def gaps(self) -> dict[str, float]:
        """Its sequence-gap counts (empty while it does not answer)."""
        return dict((self.backlog() or {}).get("gaps", {}))

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
