"""cloud_sync as a process of its own for fault tests and benches: start, stall, kill, read.

`sync_process` runs `python -m cloud_sync` on a broker and a database with short timings (a
forwarding pass every 0.2 s, gaps asked again after 1 s), so a test or a bench can SIGSTOP it,
kill it (-9) and start it again on the same outbox and client id, and read its `/backlog`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from derbus.testing import free_port
from derbus.testing.process import ServiceProcess, service_env

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


class SyncProcess(ServiceProcess):
    """`python -m cloud_sync` on broker `host:port` and `database_url`, files in `data_dir`.

    Args:
        extra_env: more settings (`CLOUD_SYNC_*`, `MQTT_*`), e.g. `CLOUD_SYNC_SHARED_GROUP` for a replica.
    """

    def __init__(
        self,
        host: str,
        port: int,
        root: str,
        database_url: str,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        api_port = free_port()
        settings = {
            "CLOUD_SYNC_CLIENT_ID": f"sync-{uuid.uuid4().hex[:8]}",
            "CLOUD_SYNC_DATA_DIR": str(data_dir),
            "CLOUD_SYNC_API_PORT": str(api_port),
            "DATABASE_URL": database_url,
            "CLOUD_SYNC_BATCH_SIZE": "500",
            "CLOUD_SYNC_INTERVAL_S": "0.2",
            "CLOUD_SYNC_KPI_INTERVAL_S": "60",
            "CLOUD_SYNC_GAP_RETRY_S": "1",
            "CLOUD_SYNC_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        env = service_env("CLOUD_SYNC_", host, port, root, **settings)
        env.pop("SUPABASE_URL", None)
        super().__init__("cloud_sync", env, data_dir / "cloud_sync.log", api_port)

    def backlog(self) -> dict[str, Any] | None:
        """Its `/backlog` (None while it does not answer)."""
        return self.get("/backlog")

    def gaps(self) -> dict[str, float]:
        """Its sequence-gap counts (empty while it does not answer)."""
        found = (self.backlog() or {}).get("gaps", {})
        return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else {}
