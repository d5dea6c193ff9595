"""The neighbourhood planner endpoints: check, import CoSSMic files, simulate N seeded runs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from derbus.bus import InMemoryBus
from derbus.service import Service
from load_manager.planner_api import (
    Scenario,
    SimulationRequest,
    build_problem,
    planner_router,
    simulate,
    vary,
)
from load_manager.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PV_NOON = [0.0] * 8 + [1.0, 2.0, 3.0, 4.0, 4.0, 3.0, 2.0, 1.0] + [0.0] * 8


def two_houses(**changes: Any) -> dict[str, Any]:
    """Two houses with PV only at midday, one 2 kW x 1 h job each, windows 06:00-18:00."""
    scenario: dict[str, Any] = {
        "name": "two-houses",
        "start": "2026-06-01T00:00:00Z",
        "houses": [
            {
                "house_id": h,
                "pv_kw": PV_NOON,
                "base_kw": [0.2] * 24,
                "devices": [{"device_id": "wm", "profile_kw": [2.0, 2.0, 2.0, 2.0]}],
            }
            for h in ("house-a", "house-b")
        ],
        "jobs": [
            {
                "job_id": f"job-{h}",
                "house_id": h,
                "device_id": "wm",
                "earliest_start": "2026-06-01T06:00:00Z",
                "latest_start": "2026-06-01T18:00:00Z",
            }
            for h in ("house-a", "house-b")
        ],
    }
    scenario.update(changes)
    return scenario


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(data_dir=tmp_path)
    service: Service[Settings] = Service("load_manager", settings, InMemoryBus())
    app = FastAPI()
    app.include_router(planner_router(service))
    return TestClient(app)


def test_milp_puts_both_jobs_under_the_pv(client: TestClient) -> None:
    body = {
        "scenario": two_houses(),
        "algorithm": "milp",
        "runs": 1,
        "pv_variation_pct": 0,
        "window_jitter_steps": 0,
    }
    result = client.post("/planner/simulate", json=body).json()
    (run,) = result["runs"]
    assert run["status"] in ("optimal", "ok", "time_limit")
    starts = sorted(j["start"][11:16] for j in run["jobs"])
    # shared PV surplus (2 x (pv - 0.2 kW)) covers one 2 kW job from 09:00, both from 10:00
    assert all("09:00" <= s <= "14:00" for s in starts), starts
    assert {h["house_id"] for h in run["households"]} == {"house-a", "house-b"}
    for house in run["households"]:
        assert house["jobs"] == 1
        assert house["job_kwh"] == pytest.approx(2.0)
        assert house["pv_share"] == pytest.approx(1.0)


def test_earliest_starts_at_six_and_buys_from_the_grid(client: TestClient) -> None:
    body = {
        "scenario": two_houses(),
        "algorithm": "earliest",
        "runs": 1,
        "pv_variation_pct": 0,
        "window_jitter_steps": 0,
    }
    (run,) = client.post("/planner/simulate", json=body).json()["runs"]
    assert [j["start"][11:16] for j in run["jobs"]] == ["06:00", "06:00"]
    # 06:00-07:00 has no PV: the job's 2 kWh come from the grid
    assert all(h["pv_share"] == 0.0 for h in run["households"])
    assert run["neighbourhood"]["import_kwh"] > 4.0


def test_runs_are_seeded_and_differ_from_each_other() -> None:
    settings = Settings()
    scenario = two_houses()
    for house in scenario["houses"]:  # 3.5 kW jobs, PV at most 2 kW: never covered whole
        house["devices"][0]["profile_kw"] = [3.5] * 4
        house["pv_kw"] = [p / 2 for p in PV_NOON]
    request = SimulationRequest.model_validate(
        {"scenario": scenario, "algorithm": "greedy", "runs": 3, "seed": 7, "pv_variation_pct": 50}
    )
    first, again = simulate(request, settings), simulate(request, settings)
    for result in (first, again):
        for run in result["runs"]:
            run.pop("solve_time_s")
    assert first == again  # same seed, same results
    imports = [r["neighbourhood"]["import_kwh"] for r in first["runs"]]
    assert len(set(imports)) > 1, imports  # the variation changes the outcome
    assert [r["seed"] for r in first["runs"]] == [7, 8, 9]
    summary = first["summary"]["households"]["house-a"]["import_kwh"]
    house_a = [
        h["import_kwh"]
        for r in first["runs"]
        for h in r["households"]
        if h["house_id"] == "house-a"
    ]
    assert summary["min"] == min(house_a)
    assert summary["max"] == max(house_a)


def test_variation_keeps_windows_inside_the_horizon_and_pv_non_negative() -> None:
    scenario = Scenario.model_validate(two_houses())
    problem = build_problem(scenario, Settings().tariff, Settings())
    for seed in range(20):
        varied = vary(problem, random.Random(seed), 0.5, 4)
        for job in varied.jobs:
            assert problem.start <= job.earliest_start <= job.latest_start
        assert all(p >= 0 for h in varied.houses for p in h.pv_kw)


def test_invalid_fields_are_named(client: TestClient) -> None:
    bad = two_houses()
    bad["jobs"][1]["latest_start"] = "2026-06-01T05:00:00Z"
    bad["jobs"][0]["device_id"] = "dryer"
    bad["houses"][1]["connection_limit_kw"] = -3
    response = client.post("/planner/check", json=bad)
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert ["body", "houses", 1, "connection_limit_kw"] in locs
    bad["houses"][1]["connection_limit_kw"] = 5
    response = client.post("/planner/check", json=bad)
    locs = [e["loc"] for e in response.json()["detail"]]
    assert ["body", "jobs", 0, "device_id"] in locs
    assert ["body", "jobs", 1, "latest_start"] in locs
    sim = client.post("/planner/simulate", json={"scenario": bad, "runs": 2})
    assert sim.status_code == 422
    assert ["body", "scenario", "jobs", 1, "latest_start"] in [
        e["loc"] for e in sim.json()["detail"]
    ]


def test_import_of_the_cossmic_examples(client: TestClient) -> None:
    profiles = {f"profiles/{p.name}": p.read_text() for p in (EXAMPLES / "profiles").iterdir()}
    pv = "time_s,cumulative_wh\n0,0\n36000,0\n39600,3000\n43200,7000\n46800,10000\n"
    body = {
        "neighbourhood_xml": (EXAMPLES / "neighbourhood.xml").read_text(),
        "jobs_text": (EXAMPLES / "jobs.csv").read_text(),
        "profiles": profiles,
        "pv": {"house-1": pv},
    }
    response = client.post("/planner/import", json=body)
    assert response.status_code == 200, response.text
    scenario = response.json()
    assert scenario["name"] == "demo-street"
    assert [h["house_id"] for h in scenario["houses"]] == ["house-1", "house-2", "house-3"]
    assert len(scenario["jobs"]) == 5
    assert scenario["start"] == "2026-06-01T00:00:00Z"
    house_1 = scenario["houses"][0]
    assert house_1["pv_kw"][10:13] == pytest.approx([3.0, 4.0, 3.0])
    washing = next(d for d in house_1["devices"] if d["device_id"] == "washing_machine")
    assert sum(washing["profile_kw"]) * 0.25 == pytest.approx(0.8)  # 800 Wh
    assert client.post("/planner/check", json=scenario).status_code == 200


def test_import_error_names_the_file_and_line(client: TestClient) -> None:
    jobs = (EXAMPLES / "jobs.csv").read_text().replace("2026-06-01T07:00:00Z", "yesterday")
    profiles = {f"profiles/{p.name}": p.read_text() for p in (EXAMPLES / "profiles").iterdir()}
    body = {
        "neighbourhood_xml": (EXAMPLES / "neighbourhood.xml").read_text(),
        "jobs_text": jobs,
        "profiles": profiles,
    }
    response = client.post("/planner/import", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "jobs_text"]
    assert "jobs.csv:3" in error["msg"]
    broken = {"neighbourhood_xml": "<neighbourhood><house></neighbourhood>"}
    (error,) = client.post("/planner/import", json=broken).json()["detail"]
    assert error["loc"] == ["body", "neighbourhood_xml"]
    assert "malformed XML" in error["msg"]
    escape = {
        **body,
        "jobs_text": (EXAMPLES / "jobs.csv").read_text(),
        "profiles": {"../../etc/x.csv": "time_s,cumulative_wh\n0,0\n60,1\n"},
    }
    (error,) = client.post("/planner/import", json=escape).json()["detail"]
    assert error["loc"] == ["body", "profiles"]
