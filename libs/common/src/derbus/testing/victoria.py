"""A VictoriaMetrics server for tests: Debian's `victoria-metrics` on a free loopback port.

It accepts the InfluxDB v2 write API (`/api/v2/write`, what influxdb-client sends), so the
InfluxDB write path is tested against a real server; points are read back with `export`.
An InfluxDB field `f` of measurement `m` becomes the series `m_f`, tags become labels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from derbus.testing.servers import free_port, require_binary, stop_process, wait_port


@dataclass
class VictoriaMetricsServer:
    """A `victoria-metrics` process of our own (temp storage, any retention), stopped by PID."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="derbus-vm-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """http://host:port — what INFLUXDB_URL points at."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> VictoriaMetricsServer:
        """Start the server (raises ComponentUnavailableError with the reason)."""
        binary = require_binary("victoria-metrics")
        log = (self.data_dir / "victoria-metrics.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"-httpListenAddr={self.host}:{self.port}",
                f"-storageDataPath={self.data_dir / 'storage'}",
                "-retentionPeriod=100y",  # test timestamps may lie in the past
                "-search.disableCache",  # read-your-writes for export queries
                "-loggerLevel=ERROR",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_port(self.host, self.port, 20.0, "victoria-metrics", self.proc)
        return self

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:  # noqa: S310
            body: bytes = resp.read()
            return body

    def flush(self) -> None:
        """Make everything received so far visible to queries."""
        self._get("/internal/force_flush")

    def export(self, match: str) -> list[dict[str, Any]]:
        """Series matching a selector, e.g. `{__name__="meter_p_kw", site_id="s1"}`.

        Returns:
            one dict per series: `metric` (labels), `values`, `timestamps` (ms since the epoch).
        """
        self.flush()
        text = self._get("/api/v1/export", {"match[]": match}).decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and remove the storage folder."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
