"""Prices as data on the real broker: CSV and HTTP JSON sources published, consumed, marked stale.

The HTTP source is a real HTTP server on 127.0.0.1 started by the test; when it starts failing
the service republishes the last good series marked stale (reason included), says so in its
status, and its own smart charging falls back to the configured tariff.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from derbus import topics
from derbus.bus import MqttBus
from derbus.messages import PriceSeries
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, wait_for
from ev_charging.service import build_service
from ev_charging.settings import PriceSourceConfig, Settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 6, 22, 0, 0, tzinfo=UTC)


class PriceServer:
    """A day-ahead price API stand-in: JSON at /prices, or HTTP 500 when `failing`."""

    def __init__(self) -> None:
        self.failing = False
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                if owner.failing or self.path != "/prices":
                    self.send_response(500)
                    self.end_headers()
                    return
                rows = [
                    {"start": (T0 + timedelta(hours=h)).isoformat(), "price": 100.0 + 10 * h}
                    for h in range(24)
                ]
                body = json.dumps({"result": {"rows": rows}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/prices"


@pytest.fixture
def price_server() -> Iterator[PriceServer]:
    server = PriceServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


async def test_csv_and_http_prices_published_then_marked_stale(
    mqtt_settings: MqttSettings, price_server: PriceServer, tmp_path: Path
) -> None:
    csv = tmp_path / "prices.csv"
    csv.write_text(
        "start,import_per_kwh,export_per_kwh\n"
        + "".join(
            f"{(T0 + timedelta(minutes=15 * i)).isoformat()},0.{10 + i},0.05\n" for i in range(8)
        )
    )
    clock = [T0]
    settings = Settings(
        mqtt=mqtt_settings, api_port=0, ocpp_port=0,
        price_sources=[
            PriceSourceConfig(zone="NL", sites=("site-a", "site-b"), kind="http",
                              url=price_server.url, json_path="result.rows",  # type: ignore[arg-type]
                              import_field="price", export_field=None, price_scale=0.001,
                              valid_for_s=7200),
            PriceSourceConfig(zone="site-c", sites=("site-c",), kind="csv", path=csv),
        ],
    )  # fmt: skip
    service = build_service(settings, MqttBus(mqtt_settings), clock=lambda: clock[0])
    observer = MqttBus(mqtt_settings)
    await observer.connect()
    series: BusRecorder[PriceSeries] = BusRecorder(topics.PRICE_SERIES, mqtt_settings.root)
    await series.attach(observer)
    await service.start()
    try:
        await wait_for(lambda: len(series.values) >= 3, message="three sites' series")
        by_site = {t.split("/")[-4]: s for t, s in series.messages}
        assert set(by_site) == {"site-a", "site-b", "site-c"}
        http = by_site["site-a"]
        assert http.origin == "http"
        assert http.step_s == 3600
        assert http.import_per_kwh[:3] == pytest.approx([0.10, 0.11, 0.12])
        assert http.valid_until == T0 + timedelta(hours=2)
        assert not http.stale
        assert by_site["site-c"].origin == "csv"
        assert by_site["site-c"].import_per_kwh[1] == pytest.approx(0.11)
        # the service consumes its own series from the bus
        await wait_for(lambda: "site-a" in service.state.prices, message="consumed")
        assert service.state.import_price("site-a", T0 + timedelta(hours=5)) == pytest.approx(0.15)

        # the source fails: the last good series again, marked stale; the service says so
        price_server.failing = True
        clock[0] = T0 + timedelta(hours=1)
        before = len(series.values)
        await service.run_task("prices")
        await wait_for(lambda: len(series.values) >= before + 2, message="stale series")
        stale = [s for t, s in series.messages[before:] if "/site-a/" in t][-1]
        assert stale.stale
        assert "500" in (stale.stale_reason or "")
        assert stale.import_per_kwh == http.import_per_kwh
        assert "prices:NL" in service.degraded_reasons
        await wait_for(lambda: service.state.prices["site-a"].stale, message="consumed stale")
        assert service.state.price_status("site-a").startswith("tariff (series stale")
        tariff_price = settings.tariff.price_at(T0 + timedelta(hours=5))
        assert service.state.import_price("site-a", T0 + timedelta(hours=5)) == tariff_price

        # it recovers: fresh again, degraded cleared
        price_server.failing = False
        clock[0] = T0 + timedelta(hours=2)
        await service.run_task("prices")
        await wait_for(lambda: not service.state.prices["site-a"].stale, message="fresh again")
        assert "prices:NL" not in service.degraded_reasons
    finally:
        await service.stop()
        await observer.close()
