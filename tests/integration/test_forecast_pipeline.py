"""Readings in a real PostgreSQL -> features -> a trained model -> a forecast on the real broker and over REST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from derbus import features as fx
from derbus import topics
from derbus.bus import MqttBus
from derbus.http import make_app
from derbus.messages import TimeSeries
from derbus.settings import DatabaseSettings, MqttSettings, SiteSettings
from derbus.testing import BusRecorder, wait_for
from feature_engineering.pipeline import FeatureStore
from feature_engineering.settings import Settings as FeSettings
from feature_engineering.state import run_pass
from feature_engineering.synthetic import reading_rows, synthetic_frame
from forecaster.service import build_service
from forecaster.settings import Settings as ForecastSettings
from forecaster.store import ForecastStore

pytestmark = pytest.mark.integration

SITE = SiteSettings(
    id="fc-site", timezone="Europe/Berlin", country="DE", latitude=52.5, longitude=13.4
)
DAYS = 35
# a fixed instant: what the models learn must not depend on the day the suite runs
NOW = datetime(2026, 6, 10, 6, 7, tzinfo=UTC)


async def test_readings_to_features_to_model_to_forecast(
    postgres_url: str, mqtt_settings: MqttSettings, tmp_path: Path
) -> None:
    database = DatabaseSettings(database_url=postgres_url)
    now = NOW
    end = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    frame = synthetic_frame(end - timedelta(days=DAYS), DAYS, fx.SiteContext.of(SITE), seed=11)

    # readings as cloud_sync writes them, in PostgreSQL
    store = FeatureStore(database.sqlalchemy_url(tmp_path))
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(store.readings.insert(), [r.__dict__ for r in reading_rows(frame, SITE.id)])

    # features
    fe = FeSettings(data_dir=tmp_path, database=database, site=SITE, lookback_days=DAYS + 1)
    result = run_pass(store, fe, now)
    assert result[0].rows == DAYS * 96 - 1
    assert store.status()[0]["load_missing_rows"] == 0
    store.dispose()

    # the forecaster trains at start-up, then publishes the trained model's forecasts
    settings = ForecastSettings(
        data_dir=tmp_path,
        database=database,
        site=SITE,
        mqtt=mqtt_settings,
        max_iter=30,
        backtest_folds=1,
        models=["linear", "gbm_quantile"],
        min_train_days=14,
        model_dir=tmp_path / "models",
    )
    listener = MqttBus(mqtt_settings)
    await listener.connect()
    forecasts: BusRecorder[TimeSeries] = BusRecorder(topics.FORECAST, mqtt_settings.root)
    await forecasts.attach(listener, site_id=SITE.id)
    service = build_service(settings, MqttBus(settings.mqtt), now=lambda: NOW)
    app = make_app(service, manage_lifecycle=False)
    await service.start()
    try:

        def trained(target: str) -> bool:
            return any(
                t.endswith(f"/{target}/day_ahead") and "@v0001" in (m.model or "")
                for t, m in forecasts.messages
            )

        # a bound, not a timing: the start-up training backtests two models and fits the chosen
        # ones with their calibration: ~20 s on a quiet 2-core machine, over 60 s at load ~23
        # and under libfaketime (2026-12-07)
        await wait_for(lambda: trained("load") and trained("pv"), 240, 0.1, "trained forecasts")
        load = [m for t, m in forecasts.messages if "/load/" in t and "@v0001" in (m.model or "")]
        message = load[-1]
        assert len(message.values) == 96
        assert message.step_s == 900
        assert set(message.quantiles or {}) == {"p10", "p50", "p90"}
        assert message.issue_time == message.start
        assert (settings.registry_dir / SITE.id / "load" / "v0001" / "report.md").exists()
        issued = ForecastStore(database.sqlalchemy_url(tmp_path))
        with issued.engine.connect() as conn:
            stored = conn.execute(issued.issued.select()).all()
        issued.dispose()
        assert {r.issue_time for r in stored} >= {message.issue_time}, "kept with issue time"

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://forecaster"
        ) as http:
            body = (await http.get(f"/forecast/{SITE.id}/load")).json()
            assert body["model"].endswith("@v0001")
            assert len(body["quantiles"]["p90"]) == 96
            models = (await http.get("/models")).json()["models"]
            assert {m["target"] for m in models if m["served"]} == {"load", "pv"}
    finally:
        await service.stop()
        await listener.close()

    # the forecast is retained: a late subscriber gets it at once
    late = MqttBus(mqtt_settings)
    await late.connect()
    again: BusRecorder[TimeSeries] = BusRecorder(topics.FORECAST, mqtt_settings.root)
    await again.attach(late, site_id=SITE.id, device_id="load")
    got = await again.wait(1, 10)
    assert got[-1].quantity == "load_p_kw"
    await late.close()
