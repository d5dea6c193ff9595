"""The service on InMemoryBus and SQLite: ready, a pass at start, REST status, run, columns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from derbus import features as fx
from derbus.bus import InMemoryBus
from derbus.http import make_app
from derbus.settings import SiteSettings
from derbus.tariff import Tariff
from feature_engineering.pipeline import FeatureStore
from feature_engineering.service import build_service
from feature_engineering.settings import Settings
from feature_engineering.synthetic import reading_rows, synthetic_frame

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def test_service_computes_at_start_and_on_demand(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        api_token="tok",
        site=SiteSettings(timezone="Europe/Berlin"),
        interval_s=3600,
    )
    store = FeatureStore(settings.database.sqlalchemy_url(tmp_path))
    store.ensure_schema()
    site = fx.SiteContext("Europe/Berlin", "DE", 52.5, 13.4, Tariff())
    frame = synthetic_frame(T0, 2, site, seed=4)
    with store.engine.begin() as conn:
        conn.execute(store.readings.insert(), [r.__dict__ for r in reading_rows(frame, "s1")])
    service = build_service(settings, InMemoryBus(), store, now=lambda: T0 + timedelta(days=2))
    with TestClient(make_app(service)) as client:
        assert client.get("/readyz").status_code == 200
        deadline = 200
        while service.state.last_pass is None and deadline:
            client.get("/healthz")  # lets the start-up pass run (bounded)
            deadline -= 1
        status = client.get("/features/status").json()
        assert status["sites"][0]["site_id"] == "s1"
        assert status["sites"][0]["rows"] == 2 * 96 - 1
        assert client.post("/features/run").status_code == 401
        run = client.post("/features/run", headers={"Authorization": "Bearer tok"}).json()
        assert run["sites"] == [
            {
                "site_id": "s1",
                "rows": 4,
                "start": run["sites"][0]["start"],
                "end": run["sites"][0]["end"],
            }
        ]
        columns = client.get("/features/columns").json()
        assert {c["availability"] for c in columns} == {"known_ahead", "lagged", "observed"}
        metrics = client.get("/metrics").text
        assert 'derbus_feature_engineering_rows_upserted_total{site_id="s1"}' in metrics


def test_service_is_ready_on_an_empty_embedded_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new")
    service = build_service(settings, InMemoryBus())
    with TestClient(make_app(service)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/features/status").json()["sites"] == []
    assert (tmp_path / "new" / "cloud.db").exists()
