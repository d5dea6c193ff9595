"""`cloud-sync import` on a real PostgreSQL: the simulator's --historical JSONL and a profile CSV,
each imported twice — every reading once, with its value."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from cloud_sync.__main__ import app as cloud_sync
from edge_simulator.__main__ import app as edge_simulator

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "profiles" / "simbench_2016_15min.csv"

# (group, field, device, metric) of a --historical record, written out here on their own, so the
# test does not read the mapping it checks (cloud_sync.importer.HISTORICAL_FIELDS)
EXPECTED_MAP = [
    ("", "net_grid_flow_kw", "pcc", "meter.p_kw"),
    ("solar", "generation_kw", "pv", "pv.generation_kw"),
    ("solar", "available_kw", "pv", "pv.available_kw"),
    ("solar", "limit_kw", "pv", "pv.limit_kw"),
    ("solar", "energy_kwh", "pv", "pv.e_total_kwh"),
    ("solar", "irradiance_w_m2", "pv", "pv.irradiance_w_m2"),
    ("solar", "cell_temp_c", "pv", "pv.temp_c"),
    ("battery", "power_kw", "battery", "battery.p_kw"),
    ("battery", "soc_pct", "battery", "battery.soc_pct"),
    ("battery", "capacity_kwh", "battery", "battery.capacity_kwh"),
    ("battery", "soh_pct", "battery", "battery.soh_pct"),
    ("battery", "max_charge_kw", "battery", "battery.max_charge_kw"),
    ("battery", "max_discharge_kw", "battery", "battery.max_discharge_kw"),
    ("battery", "voltage_v", "battery", "battery.voltage_v"),
    ("battery", "temp_c", "battery", "battery.temp_c"),
    ("battery", "cycles", "battery", "battery.cycles"),
    ("home_load", "total_kw", "load", "load.p_kw"),
    ("home_load", "ev_kw", "ev", "load.p_kw"),
    ("home_load", "load1_kw", "load1", "load.p_kw"),
    ("home_load", "load2_kw", "load2", "load.p_kw"),
    ("grid_price", "price_per_kwh", "grid", "price.price_per_kwh"),
    ("grid_price", "feed_in_per_kwh", "grid", "price.feed_in_per_kwh"),
    ("grid_price", "demand_charge_per_kw", "grid", "price.demand_charge_per_kw"),
    ("grid_price", "carbon_g_per_kwh", "grid", "price.carbon_g_per_kwh"),
]

Key = tuple[str, str, str, datetime]


def run(command: typer.Typer, args: list[str], env: dict[str, str]) -> str:
    """A command line run in-process (the real commands, without a Python start-up each)."""
    done = CliRunner().invoke(command, args, env=env, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return done.output


def environment(tmp_path: Path) -> dict[str, str | None]:
    env: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("CLOUD_SYNC_", "EDGE_SIMULATOR_", "MQTT_"))
    }
    env.update(DATABASE_URL=None, SUPABASE_URL=None, CLOUD_SYNC_DATA_DIR=str(tmp_path / "sync"))
    return env


def readings(url: str, sites: list[str]) -> list[tuple[str, str, str, datetime, float]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1], r[2], r[3].astimezone(UTC), r[4])
            for r in conn.execute(
                "SELECT site_id, device_id, metric, time, value FROM readings"
                " WHERE site_id = ANY(%s)",
                (sites,),
            )
        ]


def expected_from_jsonl(path: Path) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for text in path.read_text().splitlines():
        rec = json.loads(text)
        when = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
        for group, name, device, metric in EXPECTED_MAP:
            value = rec[group][name] if group else rec[name]
            if value is not None:
                out[(rec["device_id"], device, metric, when)] = float(value)
        out[(rec["device_id"], "ev", "load.on", when)] = float(rec["home_load"]["ev_kw"] > 0)
    return out


def test_simulator_history_imported_twice_is_stored_once(tmp_path: Path, postgres_url: str) -> None:
    env = environment(tmp_path)
    history = tmp_path / "history.jsonl"
    run(
        edge_simulator,
        [
            "--historical",
            "--sites",
            "2",
            "--interval",
            "300",
            "--start",
            "2025-06-30",
            "--end",
            "2025-07-02",
            "--output",
            str(history),
        ],
        env,
    )
    expected = expected_from_jsonl(history)
    sites = sorted({k[0] for k in expected})
    assert len(sites) == 2
    assert len({k[3] for k in expected}) == 2 * 288  # two days at 5 minutes
    out = run(cloud_sync, ["--database-url", postgres_url, "import", str(history)], env)
    assert f"= {len(expected):,} readings, {len(expected):,} new" in out
    first = readings(postgres_url, sites)
    assert {(s, d, m, t): v for s, d, m, t, v in first} == pytest.approx(expected)
    out = run(cloud_sync, ["--database-url", postgres_url, "import", str(history)], env)
    assert f"= {len(expected):,} readings, 0 new" in out
    again = readings(postgres_url, sites)
    assert len(again) == len(first) == len(expected)  # no duplicates
    assert sorted(again) == sorted(first)
    with psycopg.connect(postgres_url) as conn:  # June and July: their own partitions
        in_default = conn.execute("SELECT count(*) FROM readings_default").fetchone()
    assert in_default == (0,)


def test_profile_csv_imported_twice_is_stored_once(tmp_path: Path, postgres_url: str) -> None:
    env = environment(tmp_path)
    header, *rows = DATA.read_text().splitlines()
    # the first two days and the days around the end of daylight saving time (repeated hour)
    lines = rows[:192] + [r for r in rows if r.startswith(("2016-10-29", "2016-10-30"))]
    profile = tmp_path / "profile.csv"
    profile.write_text("\n".join([header, *lines]) + "\n")
    columns = header.split(",")[1:]
    zone = ZoneInfo("Europe/Berlin")
    instants: set[datetime] = set()
    for text in lines:  # the repeated wall-clock hour of October is kept once
        instants.add(datetime.fromisoformat(text.split(",")[0]).replace(tzinfo=zone))
    expected = len(instants) * len(columns)
    args = [
        "--database-url",
        postgres_url,
        "import",
        str(profile),
        "--site-id",
        "simbench-1",
        "--device-id",
        "profile",
        "--timezone",
        "Europe/Berlin",
    ]
    out = run(cloud_sync, args, env)
    assert f"= {expected:,} readings, {expected:,} new" in out
    assert "4 rows of a repeated wall-clock hour" in out
    out = run(cloud_sync, args, env)
    assert f"= {expected:,} readings, 0 new" in out
    stored = readings(postgres_url, ["simbench-1"])
    assert len(stored) == expected
    first = {(m, t): v for _, _, m, t, v in stored if t == datetime(2015, 12, 31, 23, tzinfo=UTC)}
    row = dict(zip(columns, map(float, lines[0].split(",")[1:]), strict=True))
    assert first == {(m, datetime(2015, 12, 31, 23, tzinfo=UTC)): v for m, v in row.items()}
    assert {m for _, _, m, _, _ in stored} == set(columns)
    assert min(t for *_, t, _ in stored) == datetime(2015, 12, 31, 23, tzinfo=UTC)
    assert max(t for *_, t, _ in stored) == datetime(2016, 10, 30, 22, 45, tzinfo=UTC)
