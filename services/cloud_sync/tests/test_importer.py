"""`cloud-sync import`: simulator JSONL and profile CSV into the cloud store, idempotent, columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloud_sync.__main__ import app
from cloud_sync.cloud import SqlCloudStore
from cloud_sync.importer import HISTORICAL_FIELDS, import_file
from derbus import topics
from derbus.errors import ConfigError
from derbus.storage import telemetry_fields

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def record(site: str, when: datetime, k: float) -> dict[str, Any]:
    """A `--historical` line as the edge simulator writes it (edge_simulator.output.record)."""
    return {
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "device_id": site,
        "solar": {
            "generation_kw": 1.0 + k,
            "available_kw": 1.5 + k,
            "limit_kw": None,
            "irradiance_w_m2": 500.0,
            "clear_sky_w_m2": 800.0,
            "cloud_cover": 0.1,
            "cell_temp_c": 20.5,
            "energy_kwh": 10.0 + k,
        },
        "battery": {
            "power_kw": -2.0,
            "soc_pct": 50.0 + k,
            "soh_pct": 99.0,
            "capacity_kwh": 10.0,
            "max_charge_kw": 5.0,
            "max_discharge_kw": 5.0,
            "voltage_v": 400.0,
            "temp_c": 21.0,
            "cycles": 0.5,
        },
        "home_load": {
            "total_kw": 3.0,
            "base_kw": 0.3,
            "hvac_kw": 2.0,
            "appliances_kw": 0.0,
            "lighting_kw": 0.1,
            "cooking_kw": 0.0,
            "ev_kw": 7.0 if k > 1 else 0.0,
            "ev_plugged": True,
            "ev_energy_needed_kwh": 3.0,
            "load1_kw": 0.5,
            "load2_kw": 0.0,
            "outdoor_temp_c": 8.0,
        },
        "grid_price": {
            "price_per_kwh": 0.2,
            "feed_in_per_kwh": 0.05,
            "tou_period": "peak",
            "demand_charge_per_kw": 8.0,
            "carbon_g_per_kwh": 250.0,
        },
        "net_grid_flow_kw": 4.0 - k,
    }


def sqlite_store(tmp_path: Path) -> SqlCloudStore:
    store = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    store.migrate()
    return store


def stored(store: SqlCloudStore) -> dict[tuple[str, str, str, datetime], float]:
    return {
        (r.site_id, r.device_id, r.metric, r.time.replace(tzinfo=UTC)): r.value
        for r in store.engine.connect().execute(store.table.select())
    }


def test_every_mapped_metric_is_a_stored_field_of_its_telemetry_kind() -> None:
    kinds = {spec.name: telemetry_fields(spec.model) for spec in topics.TELEMETRY}
    for _, _, _, metric in HISTORICAL_FIELDS:
        kind, name = metric.split(".")
        assert name in kinds[kind], metric


def test_historical_jsonl_becomes_the_readings_of_live_telemetry_once(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = [
        json.dumps(record(f"site-{s}", T0 + timedelta(minutes=5 * i), float(i)))
        for i in range(3)
        for s in (1, 2)
    ]
    path.write_text("\n".join(lines) + "\n")
    store = sqlite_store(tmp_path)
    first = import_file(store, path)
    got = stored(store)
    assert (first.records, first.skipped) == (6, 0)
    per_record = len(HISTORICAL_FIELDS) - 1 + 1  # limit_kw is null; the EV relay is derived
    assert first.readings == len(got) == 6 * per_record
    at = T0 + timedelta(minutes=10)
    assert got[("site-2", "pcc", "meter.p_kw", at)] == 2.0
    assert got[("site-2", "pv", "pv.e_total_kwh", at)] == 12.0
    assert got[("site-1", "battery", "battery.soc_pct", at)] == 52.0
    assert got[("site-1", "ev", "load.p_kw", at)] == 7.0
    assert got[("site-1", "ev", "load.on", at)] == 1.0
    assert got[("site-1", "ev", "load.on", T0)] == 0.0
    assert got[("site-1", "grid", "price.carbon_g_per_kwh", at)] == 250.0
    assert ("site-1", "pv", "pv.limit_kw", at) not in got
    assert first.stored == first.readings
    again = import_file(store, path)
    assert (again.readings, again.stored) == (first.readings, 0)
    assert stored(store) == got  # nothing doubled, nothing changed


def test_bad_lines_are_skipped_counted_and_named(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    good = json.dumps(record("site-1", T0, 1.0))
    naive = json.dumps({**record("site-1", T0, 1.0), "timestamp": "2025-03-01T00:05:00"})
    slash = json.dumps(record("a/b", T0, 1.0))
    path.write_text("\n".join([good, "{not json", naive, slash, ""]) + "\n")
    result = import_file(sqlite_store(tmp_path), path)
    assert (result.records, result.skipped) == (1, 3)
    assert [p.split(":")[0] for p in result.problems] == ["line 2", "line 3", "line 4"]
    assert "time zone" in result.problems[1]


def test_profile_csv_in_local_time_with_the_repeated_dst_hour_kept_once(tmp_path: Path) -> None:
    path = tmp_path / "profiles.csv"
    rows = ["time,h0-a_load_pu,pv1_pv_pu"]
    # Europe/Berlin, 2016-10-30: 02:00-02:45 happen twice; the second pass is dropped
    for wall in (
        "01:45",
        "02:00",
        "02:15",
        "02:30",
        "02:45",
        "02:00",
        "02:15",
        "02:30",
        "02:45",
        "03:00",
    ):
        rows.append(f"2016-10-30T{wall}:00,0.5,")
    path.write_text("\n".join(rows) + "\n")
    store = sqlite_store(tmp_path)
    result = import_file(store, path, site_id="site-9", timezone="Europe/Berlin")
    assert (result.records, result.repeated, result.readings) == (6, 4, 6)  # empty PV cells: none
    got = stored(store)
    first = datetime(2016, 10, 29, 23, 45, tzinfo=UTC)  # 01:45 CEST
    assert sorted(t for (_, _, _, t) in got) == [
        first + timedelta(minutes=15 * i) for i in range(5)
    ] + [datetime(2016, 10, 30, 2, 0, tzinfo=UTC)]  # 02:00-02:45 CEST, then 03:00 CET
    assert set(got) >= {("site-9", "profile", "h0-a_load_pu", first)}
    import_file(store, path, site_id="site-9", timezone="Europe/Berlin")
    assert stored(store) == got


def test_a_csv_needs_a_site_and_a_time_column(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("when,x\n2016-01-01T00:00:00,1\n")
    store = sqlite_store(tmp_path)
    with pytest.raises(ConfigError, match="site-id"):
        import_file(store, path)
    with pytest.raises(ConfigError, match="time"):
        import_file(store, path, site_id="s")
    with pytest.raises(ConfigError, match="timezone"):
        import_file(store, path, site_id="s", timezone="Mars/Olympus")


def test_the_import_command_reports_counts_and_fails_on_skipped_lines(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(record("site-1", T0, 0.0)) + "\n")
    args = ["--data-dir", str(tmp_path), "--database-url", f"sqlite:///{tmp_path / 'c.db'}"]
    result = CliRunner().invoke(app, [*args, "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "imported 1 records = 24 readings, 24 new" in result.output  # limit_kw is null
    result = CliRunner().invoke(app, [*args, "import", str(path)])
    assert "imported 1 records = 24 readings, 0 new" in result.output
    path.write_text("{broken\n")
    result = CliRunner().invoke(app, [*args, "import", str(path)])
    assert result.exit_code == 3
    assert "line 1" in result.output
