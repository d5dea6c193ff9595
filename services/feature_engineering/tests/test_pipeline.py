"""The incremental pass on SQLite: only new intervals, upsert of recomputed ones, status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from derbus import features as fx
from derbus.settings import DatabaseSettings, SiteSettings
from derbus.tariff import Tariff
from feature_engineering.pipeline import FeatureStore, PassWindow, plan_pass
from feature_engineering.settings import Settings
from feature_engineering.state import run_pass
from feature_engineering.synthetic import reading_rows, synthetic_frame

T0 = datetime(2026, 3, 2, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("first", "last", "features_last", "expected"),
    [
        # first pass: from the first reading, but at most lookback (2 days) back
        (T0, T0 + 10 * H + timedelta(minutes=7), None, PassWindow(T0, T0 + 10 * H)),
        (T0, T0 + 100 * H, None, PassWindow(T0 + 52 * H, T0 + 100 * H)),
        # incremental: after the last interval, minus one recomputed interval
        (T0, T0 + 10 * H, T0 + 8 * H, PassWindow(T0 + 8 * H, T0 + 10 * H)),
        # only the recomputed one: the interval holding the latest reading is not complete yet
        (
            T0,
            T0 + 9 * H + timedelta(minutes=20),
            T0 + 9 * H,
            PassWindow(T0 + 9 * H, T0 + 9 * H + timedelta(minutes=15)),
        ),
        # nothing new at all
        (T0, T0 + 10 * H + timedelta(minutes=5), T0 + 10 * H, None),
    ],
)
def test_plan_pass(
    first: datetime, last: datetime, features_last: datetime | None, expected: PassWindow | None
) -> None:
    got = plan_pass(first, last, features_last, lookback=timedelta(days=2), recompute_steps=1)
    assert got == expected


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path,
        site=SiteSettings(timezone="Europe/Berlin", country="DE"),
        database=DatabaseSettings(),
        lookback_days=30,
        batch_size=300,
        **extra,
    )


def insert(store: FeatureStore, frame: pd.DataFrame, site_id: str) -> None:
    rows = [r.__dict__ for r in reading_rows(frame, site_id)]
    with store.engine.begin() as conn:
        conn.execute(store.readings.insert(), rows)


def feature_rows(store: FeatureStore, site_id: str) -> pd.DataFrame:
    with store.engine.connect() as conn:
        got = (
            conn.execute(sa.select(store.features).where(store.features.c.site_id == site_id))
            .mappings()
            .all()
        )
    return pd.DataFrame(got)


def test_incremental_passes_compute_only_new_intervals(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, recompute_steps=0)
    store = FeatureStore(settings.database.sqlalchemy_url(tmp_path))
    store.ensure_schema()
    site = fx.SiteContext("Europe/Berlin", "DE", 52.5, 13.4, Tariff())
    frame = synthetic_frame(T0, 10, site, seed=2)
    insert(store, frame[frame.index < T0 + timedelta(days=9)], "a")
    insert(store, frame[frame.index < T0 + timedelta(days=2)], "b")

    first = run_pass(store, settings, T0 + timedelta(days=9))
    assert {r.site_id: r.rows for r in first} == {"a": 9 * 96 - 1, "b": 2 * 96 - 1}
    rows_a = feature_rows(store, "a")
    assert len(rows_a) == 9 * 96 - 1
    assert rows_a["load_kw_lag_672"].notna().sum() == 2 * 96 - 1  # one week of history needed

    again = run_pass(store, settings, T0 + timedelta(days=9, hours=1))
    assert all(r.rows == 0 and r.window is None for r in again), "nothing new, nothing computed"

    insert(store, frame[frame.index >= T0 + timedelta(days=9)], "a")
    third = run_pass(store, settings, T0 + timedelta(days=10))
    assert {r.site_id: r.rows for r in third} == {"a": 96, "b": 0}
    rows_a = feature_rows(store, "a")
    assert len(rows_a) == 10 * 96 - 1
    computed = pd.to_datetime(rows_a["computed_at"]).dt.tz_localize(None)
    assert (computed == pd.Timestamp(T0 + timedelta(days=10)).tz_localize(None)).sum() == 96
    status = {s["site_id"]: s for s in store.status()}
    assert status["a"]["rows"] == 10 * 96 - 1
    assert status["a"]["behind_readings_s"] == 0
    store.dispose()


def test_recomputed_intervals_are_updated_in_place(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, recompute_steps=8, site_id="a")
    store = FeatureStore(settings.database.sqlalchemy_url(tmp_path))
    store.ensure_schema()
    site = fx.SiteContext("Europe/Berlin", "DE", 52.5, 13.4, Tariff())
    frame = synthetic_frame(T0, 2, site, seed=3)
    insert(store, frame[frame.index < T0 + 20 * H], "a")
    run_pass(store, settings, T0 + 20 * H)
    before = feature_rows(store, "a").set_index("time")
    # late readings arrive for the last hour (a gap that had been carried forward)
    late = frame[(frame.index >= T0 + 20 * H) & (frame.index < T0 + 22 * H)]
    insert(store, late, "a")
    result = run_pass(store, settings, T0 + 22 * H)
    assert result[0].rows == 8 + 8, "8 recomputed + 8 new intervals"
    after = feature_rows(store, "a").set_index("time")
    assert len(after) == len(before) + 8
    # the recomputed intervals were updated in place
    last_before = before.index.max()
    assert after.loc[last_before, "computed_at"] != before.loc[last_before, "computed_at"]
    assert after.index.is_unique
