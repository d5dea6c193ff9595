"""The planner editor: form fields to a scenario and back, errors placed next to their field."""

from __future__ import annotations

from pathlib import Path

import pytest

from console import planner


def form() -> dict[str, str]:
    return {
        "name": "street",
        "start": "2026-06-01T00:00",
        "hours": "24",
        "shared_pv": "on",
        "neighbourhood_limit_kw": "",
        "token": "x",
        "algorithm": "milp",
        "runs": "2",
        "houses-0-house_id": "h1",
        "houses-0-connection_limit_kw": "9.2",
        "houses-0-pv_kw": "0, 1.5, 2",
        "houses-0-base_kw": "0.3",
        "houses-0-devices-0-device_id": "wm",
        "houses-0-devices-0-type": "washing_machine",
        "houses-0-devices-0-profile_kw": "2 2 0.5",
        "houses-1-house_id": "h2",
        "houses-1-connection_limit_kw": "5",
        "houses-1-pv_kw": "",
        "houses-1-base_kw": "",
        "jobs-0-job_id": "j1",
        "jobs-0-house_id": "h1",
        "jobs-0-device_id": "wm",
        "jobs-0-earliest_start": "2026-06-01T06:00",
        "jobs-0-latest_start": "2026-06-01T18:00",
        "jobs-0-profile_kw": "",
    }


def test_form_becomes_a_scenario() -> None:
    scenario, errors = planner.form_to_scenario(form())
    assert errors == {}
    assert scenario["start"] == "2026-06-01T00:00:00Z"
    assert scenario["shared_pv"] is True
    assert "neighbourhood_limit_kw" not in scenario
    assert [h["house_id"] for h in scenario["houses"]] == ["h1", "h2"]
    assert scenario["houses"][0]["pv_kw"] == [0.0, 1.5, 2.0]
    assert scenario["houses"][0]["devices"][0]["profile_kw"] == [2.0, 2.0, 0.5]
    assert scenario["houses"][1]["devices"] == []
    assert scenario["jobs"][0]["latest_start"] == "2026-06-01T18:00:00Z"
    assert "profile_kw" not in scenario["jobs"][0]  # none of its own: the device's
    # numbers go as JSON numbers (the load manager takes JSON types strictly)
    assert scenario["hours"] == 24
    assert scenario["houses"][0]["connection_limit_kw"] == 9.2
    assert scenario["houses"][1]["connection_limit_kw"] == 5
    assert planner.run_fields(form()) == {
        "algorithm": "milp",
        "runs": 2,
        "seed": "",
        "pv_variation_pct": "",
        "window_jitter_steps": "",
    }
    fields = planner.scenario_to_fields(scenario)
    assert fields["houses"][0]["pv_kw"] == "0, 1.5, 2"
    assert fields["jobs"][0]["earliest_start"] == "2026-06-01T06:00"


def test_a_number_that_does_not_read_as_one_goes_as_typed() -> None:
    scenario, _ = planner.form_to_scenario(
        form() | {"hours": "a day", "houses-0-connection_limit_kw": "nan"}
    )
    assert scenario["hours"] == "a day"  # the load manager names the field
    assert scenario["houses"][0]["connection_limit_kw"] == "nan"


def test_an_unreadable_number_list_is_named() -> None:
    bad = form() | {"houses-0-pv_kw": "1, two, 3"}
    _, errors = planner.form_to_scenario(bad)
    assert list(errors) == ["houses-0-pv_kw"]


def test_add_and_remove() -> None:
    scenario, _ = planner.form_to_scenario(form())
    planner.add_house(scenario)
    assert scenario["houses"][-1]["house_id"] == "house-3"
    planner.add_job(scenario, 2)
    assert scenario["jobs"][-1] == {
        "job_id": "job-2",
        "house_id": "house-3",
        "device_id": "washing_machine",
        "earliest_start": "2026-06-01T06:00:00Z",
        "latest_start": "2026-06-01T18:00:00Z",
    }
    planner.add_device(scenario, 1)
    assert scenario["houses"][1]["devices"][0]["device_id"] == "device-1"
    planner.remove(scenario, "houses-0-devices-0")
    assert scenario["houses"][0]["devices"] == []
    planner.remove(scenario, "jobs-0")
    planner.remove(scenario, "jobs-9")  # out of range: ignored
    assert [j["job_id"] for j in scenario["jobs"]] == ["job-2"]


def test_errors_land_on_the_nearest_field() -> None:
    known = planner.known_fields(form())
    detail = [
        {"loc": ["body", "scenario", "jobs", 0, "latest_start"], "msg": "before the earliest"},
        {"loc": ["body", "scenario", "houses", 0, "pv_kw", 2], "msg": "must be >= 0"},
        {"loc": ["body", "scenario", "houses", 1], "msg": "bad house"},
        {"loc": ["body", "runs"], "msg": "at most 50"},
        {"loc": ["body", "nowhere"], "msg": "?"},
    ]
    errors = planner.field_errors(detail, known, strip=("scenario",))
    assert errors == {
        "jobs-0-latest_start": "before the earliest",
        "houses-0-pv_kw": "must be >= 0",
        "houses-1": "bad house",
        "runs": "at most 50",
        "form": "?",
    }


def test_saved_scenarios_need_a_plain_name(tmp_path: Path) -> None:
    planner.save(tmp_path, "my-street", {"name": "my-street"})
    assert planner.saved_names(tmp_path) == ["my-street"]
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="scenario name"):
            planner.save(tmp_path, bad, {})


def test_results_csv_has_a_row_per_run_and_household() -> None:
    results = {
        "runs": [
            {
                "run": 1,
                "seed": 4,
                "status": "optimal",
                "jobs": [{}],
                "households": [
                    {
                        "house_id": "h1",
                        "jobs": 1,
                        "pv_share": 0.5,
                        "import_kwh": 3.0,
                        "peak_kw": 2.0,
                        "par": 1.5,
                        "cost": 0.6,
                    }
                ],
                "neighbourhood": {
                    "pv_share": 0.5,
                    "import_kwh": 3.0,
                    "peak_kw": 2.0,
                    "par": 1.5,
                    "cost": 0.6,
                },
            },
            {"run": 2, "seed": 5, "status": "failed", "households": [], "jobs": []},
        ]
    }
    lines = planner.results_csv(results).splitlines()
    assert lines == [
        "run,seed,status,household,jobs,pv_share,import_kwh,peak_kw,par,cost",
        "1,4,optimal,h1,1,0.5,3.0,2.0,1.5,0.6",
        "1,4,optimal,(neighbourhood),1,0.5,3.0,2.0,1.5,0.6",
    ]
