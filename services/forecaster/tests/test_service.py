"""The service on InMemoryBus and SQLite: forecasts published at start, REST, training, registry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from derbus import features as fx
from derbus import topics
from derbus.bus import InMemoryBus
from derbus.http import make_app
from derbus.messages import TimeSeries
from derbus.settings import MqttSettings, SiteSettings
from forecaster.service import build_service
from forecaster.settings import Settings
from forecaster.store import ForecastStore


def fill_features(store: ForecastStore, site_id: str, load: pd.Series, pv: pd.Series) -> None:
    store.ensure_schema()
    rows = [
        {
            "time": t.to_pydatetime(),
            "site_id": site_id,
            "load_kw": float(load[t]),
            "pv_kw": float(pv.get(t, 0.0)),
            "computed_at": datetime.now(UTC),
        }
        for t in load.index
    ]
    with store.engine.begin() as conn:
        conn.execute(store.features.insert(), rows)


def test_service_publishes_trains_and_answers(
    tmp_path: Path, load_series: Callable[..., pd.Series], pv_series: Callable[..., pd.Series]
) -> None:
    load = load_series(start="2026-04-06", days=30)
    pv = pv_series(start="2026-04-06", days=30)
    end = load.index[-1] + fx.STEP
    settings = Settings(
        data_dir=tmp_path,
        api_token="tok",
        site=SiteSettings(timezone="Europe/Berlin"),
        mqtt=MqttSettings(root="t/fc"),
        max_iter=30,
        backtest_folds=1,
        train_at_start=False,
        models=["linear"],
    )
    store = ForecastStore(settings.database.sqlalchemy_url(tmp_path))
    fill_features(store, "s1", load, pv)
    bus = InMemoryBus()
    service = build_service(settings, bus, store, now=lambda: end.to_pydatetime())
    with TestClient(make_app(service)) as client:
        assert client.get("/readyz").status_code == 200
        body = client.get("/forecast/s1/load").json()
        assert body["quantity"] == "load_p_kw"
        assert len(body["values"]) == 96
        assert body["issue_time"] == end.isoformat().replace("+00:00", "Z")
        assert body["start"] == body["issue_time"]
        assert body["model"] == "seasonal_naive_day"  # nothing trained yet: the fallback
        q = body["quantiles"]
        assert all(a <= b <= c for a, b, c in zip(q["p10"], q["p50"], q["p90"], strict=True))
        assert client.get("/forecast/s1/wind").status_code == 404
        assert client.get("/forecast/nowhere/load").status_code == 404

        assert client.post("/train").status_code == 401
        trained = client.post("/train", headers={"Authorization": "Bearer tok"}).json()
        outcomes = {o["target"]: o for o in trained["outcomes"]}
        assert outcomes["load"]["promoted"], outcomes["load"]["reason"]
        after = client.get("/forecast/s1/load").json()
        assert after["model"] == "linear@v0001"
        pv_body = client.post("/forecast/s1/pv", headers={"Authorization": "Bearer tok"}).json()
        assert pv_body["quantity"] == "pv_generation_kw"
        assert min(pv_body["quantiles"]["p10"]) >= 0
        models = client.get("/models").json()["models"]
        assert {(m["target"], m["version"]) for m in models} >= {("load", "v0001")}
        assert "derbus_forecaster_forecasts_published_total" in client.get("/metrics").text

    forecasts = [m for m in bus.published if topics.FORECAST.matches(m.topic, "t/fc")]
    assert {m.topic for m in forecasts} == {
        topics.FORECAST.topic("s1", "load", "t/fc"),
        topics.FORECAST.topic("s1", "pv", "t/fc"),
    }
    assert all(m.retain for m in forecasts)
    last_load = [m for m in forecasts if m.topic.endswith("/load/day_ahead")][-1]
    assert TimeSeries.from_json_bytes(last_load.payload).model == "linear@v0001"
    with store.engine.connect() as conn:
        issued = conn.execute(store.issued.select()).all()
    assert {r.issue_time.replace(tzinfo=UTC) for r in issued} == {end.to_pydatetime()}
    assert len({(r.target, r.time) for r in issued}) == 2 * 96


def test_service_is_ready_without_a_database_or_data(tmp_path: Path) -> None:
    service = build_service(Settings(data_dir=tmp_path / "d"), InMemoryBus())
    with TestClient(make_app(service)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/models").json() == {"models": []}


def test_a_store_locked_at_start_up_gets_its_tables_at_the_next_issue(tmp_path: Path) -> None:
    """A first `make run` backfills history into the embedded store while the services start:
    the forecaster's schema creation can meet a locked SQLite file. It must try again, not stay
    degraded for ever ("no such table: forecasts_issued", seen under make test-dates)."""
    import sqlite3
    import time

    import sqlalchemy as sa

    settings = Settings(data_dir=tmp_path, train_at_start=False, issue_interval_s=1.0)
    locker = sqlite3.connect(tmp_path / "cloud.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # what a long write by another service holds
    service = build_service(settings, InMemoryBus())
    with TestClient(make_app(service)):
        assert "database" in service.degraded_reasons  # start-up met the lock (~5 s timeout)
        locker.execute("ROLLBACK")
        locker.close()
        deadline = time.monotonic() + 30
        while "database" in service.degraded_reasons and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "database" not in service.degraded_reasons, service.degraded_reasons
    assert sa.inspect(sa.create_engine(settings.database.sqlalchemy_url(tmp_path))).has_table(
        "forecasts_issued"
    )


def test_a_new_issue_interval_from_put_config_holds_from_the_next_issue(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, train_at_start=False, issue_interval_s=900, api_token="tok"
    )
    service = build_service(settings, InMemoryBus())
    with TestClient(make_app(service)) as client:
        retry = settings.cold_start.retry_s
        assert service.state.issue_interval_s() == min(900, retry)  # nothing issued yet
        changed = client.put(
            "/config", json={"issue_interval_s": 1800}, headers={"Authorization": "Bearer tok"}
        )
        assert changed.status_code == 200, changed.text
        assert service.state.settings.issue_interval_s == 1800
        assert service.state.issue_interval_s() == min(1800, retry)
        service.state.latest[("s1", "load")] = object()  # type: ignore[assignment]
        assert service.state.issue_interval_s() == 1800  # what the periodic task waits


def test_accuracy_of_issued_forecasts_over_rest(
    tmp_path: Path, load_series: Callable[..., pd.Series], pv_series: Callable[..., pd.Series]
) -> None:
    load = load_series(start="2026-04-06", days=9)
    pv = pv_series(start="2026-04-06", days=9)
    end = load.index[-1] + fx.STEP
    settings = Settings(
        data_dir=tmp_path,
        site=SiteSettings(timezone="Europe/Berlin"),
        train_at_start=False,
        issue_interval_s=86_400,
    )
    store = ForecastStore(settings.database.sqlalchemy_url(tmp_path))
    fill_features(store, "s1", load, pv)
    day = load.index[-96:]  # the last day, forecast a day earlier: 0.5 kW too high, band ±1 kW
    p50 = load[day].to_numpy() + 0.5
    frame = pd.DataFrame({"p10": p50 - 1.0, "p50": p50, "p90": p50 + 1.0}, index=day)
    store.save_issued("s1", "load", day[0].to_pydatetime(), frame, "test", None)
    service = build_service(settings, InMemoryBus(), store, now=lambda: end.to_pydatetime())
    with TestClient(make_app(service)) as client:
        body = client.get("/forecast/s1/load/accuracy", params={"days": 2}).json()
        assert body["forecasts"] == 1
        assert body["n"] == 96
        assert body["mae"] == pytest.approx(0.5)
        assert body["coverage_80"] == pytest.approx(1.0)
        assert "coverage_80_daylight" not in body  # load: every interval counts
        actual = load[day].to_numpy()
        by_day = np.mean(np.abs(actual - load[day - pd.Timedelta(days=1)].to_numpy()))
        by_week = np.mean(np.abs(actual - load[day - pd.Timedelta(days=7)].to_numpy()))
        assert body["mae_seasonal_naive_day"] == pytest.approx(by_day)
        assert body["mae_seasonal_naive_week"] == pytest.approx(by_week)
        better = min(by_day, by_week)
        assert body["reference"] == (
            "seasonal_naive_day" if by_day <= by_week else "seasonal_naive_week"
        )
        assert body["skill"] == pytest.approx(1 - 0.5 / better)
        assert client.get("/forecast/s1/pv/accuracy").json()["n"] == 0  # none issued
        assert client.get("/forecast/s1/wind/accuracy").status_code == 404


def test_status_prints_the_accuracy_of_issued_forecasts(
    tmp_path: Path, load_series: Callable[..., pd.Series], pv_series: Callable[..., pd.Series]
) -> None:
    import json

    from typer.testing import CliRunner

    from forecaster.__main__ import cli

    now = datetime.now(UTC)
    load = load_series(start=(now - pd.Timedelta(days=3)).strftime("%Y-%m-%d"), days=2)
    store = ForecastStore(Settings(data_dir=tmp_path).database.sqlalchemy_url(tmp_path))
    fill_features(store, "s1", load, pv_series(days=1))
    day = load.index[-96:]
    p50 = load[day].to_numpy() - 0.25
    frame = pd.DataFrame({"p10": p50 - 1.0, "p50": p50, "p90": p50 + 1.0}, index=day)
    store.save_issued("s1", "load", day[0].to_pydatetime(), frame, "test", None)
    store.dispose()
    env = {"FORECASTER_DATA_DIR": str(tmp_path), "FORECASTER_TARGETS": '["load"]'}
    result = CliRunner().invoke(cli, ["--status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])["issued_accuracy"]
    assert [(r["site_id"], r["target"], r["forecasts"], r["n"]) for r in rows] == [
        ("s1", "load", 1, 96)
    ]
    assert rows[0]["mae_kw"] == pytest.approx(0.25)


def test_evaluate_reports_skill_against_the_better_seasonal_naive(
    tmp_path: Path, load_series: Callable[..., pd.Series], pv_series: Callable[..., pd.Series]
) -> None:
    import json

    from typer.testing import CliRunner

    from forecaster.__main__ import cli

    now = datetime.now(UTC)  # --evaluate reads the history up to now
    load = load_series(start=(now - pd.Timedelta(days=22)).strftime("%Y-%m-%d"), days=21)
    store = ForecastStore(Settings(data_dir=tmp_path).database.sqlalchemy_url(tmp_path))
    fill_features(store, "s1", load, pv_series(days=1))
    store.dispose()
    env = {
        "FORECASTER_DATA_DIR": str(tmp_path),
        "FORECASTER_TARGETS": '["load"]',
        "FORECASTER_MODELS": '["linear"]',
        "FORECASTER_BACKTEST_FOLDS": "1",
        "FORECASTER_BACKTEST_ISSUE_EVERY": "8",
    }
    result = CliRunner().invoke(cli, ["--evaluate", "--json"], env=env)
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])["evaluated"]
    assert len(evaluated) == 1
    e = evaluated[0]
    rows = {r["model"]: r for r in e["rows"]}
    assert set(rows) >= {"linear", "seasonal_naive_day", "seasonal_naive_week", "persistence"}
    better = min(rows["seasonal_naive_day"]["mae"], rows["seasonal_naive_week"]["mae"])
    assert rows[e["reference"]]["mae"] == better
    assert rows["linear"]["skill"] == pytest.approx(1 - rows["linear"]["mae"] / better)
    assert Path(e["report"]).read_text().count("skill vs the better seasonal naive") == 1
