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
from derbus.messages import BatteryTelemetry, PriceSeries, TimeSeries, utcnow
from derbus.settings import MqttSettings
from derbus.testing import BusRecorder, ServiceStack, job_request, time_series, wait_for
from ev_charging.service import build_service
from ev_charging.settings import PriceSourceConfig, Settings
from load_manager.service import build_service as build_load_manager
from load_manager.settings import Settings as LoadManagerSettings
from peak_shaving.service import build_service as build_peak_shaving
from peak_shaving.settings import Settings as PeakShavingSettings

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
        mqtt=mqtt_settings,
        api_port=0,
        ocpp_port=0,
        price_sources=[
            PriceSourceConfig(
                zone="NL",
                sites=("site-a", "site-b"),
                kind="http",
                url=price_server.url,
                json_path="result.rows",  # type: ignore[arg-type]
                import_field="price",
                export_field=None,
                price_scale=0.001,
                valid_for_s=7200,
            ),
            PriceSourceConfig(zone="site-c", sites=("site-c",), kind="csv", path=csv),
        ],
    )
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
        await wait_for(lambda: "site-a" in service.state.prices.series, message="consumed")
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
        await wait_for(
            lambda: service.state.prices.series["site-a"].stale, message="consumed stale"
        )
        assert service.state.price_status("site-a").startswith("tariff (series stale")
        tariff_price = settings.tariff.price_at(T0 + timedelta(hours=5))
        assert service.state.import_price("site-a", T0 + timedelta(hours=5)) == tariff_price

        # it recovers: fresh again, degraded cleared
        price_server.failing = False
        clock[0] = T0 + timedelta(hours=2)
        await service.run_task("prices")
        await wait_for(
            lambda: not service.state.prices.series["site-a"].stale, message="fresh again"
        )
        assert "prices:NL" not in service.degraded_reasons
    finally:
        await service.stop()
        await observer.close()


async def test_peak_shaving_and_load_manager_replan_on_prices_then_fall_back(
    mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    """A CSV price source → forecast.price → the EMA and the job planner; the file goes → stale."""
    now = utcnow()
    start = now - timedelta(seconds=now.timestamp() % 900)
    prices = [0.40] * 96
    prices[2] = prices[3] = 0.01  # half an hour, 30-60 min from now, far cheaper than any tariff
    prices[40:44] = [0.95] * 4
    csv = tmp_path / "prices.csv"
    csv.write_text(
        "start,import_per_kwh\n"
        + "".join(
            f"{(start + timedelta(minutes=15 * i)).isoformat()},{p}\n" for i, p in enumerate(prices)
        )
    )
    ev = build_service(
        Settings(
            mqtt=mqtt_settings,
            api_port=0,
            ocpp_port=0,
            price_sources=[
                PriceSourceConfig(
                    zone="site-1",
                    sites=("site-1",),
                    kind="csv",
                    path=csv,
                    refresh_s=1.0,
                    valid_for_s=86_400,
                )
            ],
        ),
        MqttBus(mqtt_settings),
    )
    ps = build_peak_shaving(
        PeakShavingSettings(mqtt=mqtt_settings, api_port=0, energy_cost=True),
        MqttBus(mqtt_settings),
    )
    lm = build_load_manager(
        LoadManagerSettings(
            mqtt=mqtt_settings,
            api_port=0,
            data_dir=tmp_path / "lm",
            dispatch_interval_s=60.0,
            house_limit_kw=100.0,
        ),
        MqttBus(mqtt_settings),
    )
    observer = MqttBus(mqtt_settings)
    await observer.connect()
    schedules: BusRecorder[TimeSeries] = BusRecorder(topics.BATTERY_SCHEDULE, mqtt_settings.root)
    await schedules.attach(observer)
    root = mqtt_settings.root
    try:
        async with ServiceStack(ps, lm, ev):
            battery = BatteryTelemetry(ts=now, source="t", p_kw=0.0, soc_pct=20.0)
            load = time_series([30.0] * 96, start, issue_time=now, source="t")
            job = job_request([7.0, 7.0], start, start + timedelta(hours=3), ts=now)
            await observer.publish(
                topics.BATTERY.topic("site-1", "battery", root), battery.to_json_bytes()
            )
            await observer.publish(
                topics.FORECAST.topic("site-1", "load", root), load.to_json_bytes()
            )
            await observer.publish(
                topics.JOB_REQUEST.topic("site-1", "ev", root), job.to_json_bytes()
            )

            def planned_on(prices_status: str) -> bool:
                return any(
                    s.meta.get("prices", "").startswith(prices_status) for s in schedules.values
                )

            await wait_for(lambda: planned_on("series"), 30, message="an EMA plan on the series")
            plan = next(s for s in schedules.values if s.meta.get("prices") == "series")
            # the plan starts at the quarter hour it is made in: one later than `start` when the test
            # straddles a quarter hour (CI run at 99330ec: 14:29:58 → a plan from 14:30)
            assert timedelta(0) <= plan.start - start <= timedelta(minutes=15), plan.start
            on_prices = plan.on_grid(start, 900, 44)  # the plan on the price series' quarter hours
            assert min(on_prices[2:4]) > 1.0  # charges in the cheap half hour
            assert max(on_prices[40:44]) < -1.0  # discharges when dear
            await wait_for(lambda: "site-1" in lm.state.jobs.prices.series, message="LM prices")
            await lm.run_task("job_cycle")
            entry = lm.state.jobs.book.entries["ev1"]
            assert entry.planned_start == start + timedelta(minutes=30)

            # the CSV disappears: ev_charging's next read republishes the series marked stale
            csv.unlink()
            await wait_for(lambda: planned_on("tariff (series stale"), 30, message="tariff plan")
            await ps.run_task("replan_all")
            assert "planned on the configured tariff" in (ps.status().reason or "")
            await lm.run_task("job_cycle")
            assert "configured tariff (series stale" in (lm.status().reason or "")
    finally:
        await observer.close()
