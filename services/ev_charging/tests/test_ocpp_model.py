"""OCPP payloads: meter samples of both versions, and our profiles against the official schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ocpp.charge_point import snake_to_camel_case
from ocpp.messages import Call, validate_payload

from derbus.messages import OcppVersion
from ev_charging.ocpp_model import (
    clear_profile,
    connector_status,
    parse_meter_values,
    profile_id,
    tx_profile,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 6, 21, 10, 0, 0, 250_000, tzinfo=UTC)


def test_meter_values_16_in_w_and_wh() -> None:
    sample = parse_meter_values(
        [
            {
                "timestamp": "2026-06-21T10:00:00Z",
                "sampled_value": [
                    {"value": "7400.0", "measurand": "Power.Active.Import", "unit": "W"},
                    {"value": "12345.6"},  # the default measurand: the energy register, Wh
                    {"value": "230.1", "measurand": "Voltage", "unit": "V"},
                    {
                        "value": "3.1",
                        "measurand": "Power.Active.Import",
                        "unit": "kW",
                        "phase": "L1",
                    },
                    {"value": "55", "measurand": "SoC", "unit": "Percent"},
                ],
            }
        ]
    )
    assert sample.p_kw == pytest.approx(7.4)
    assert sample.e_kwh == pytest.approx(12.3456)
    assert sample.soc_pct == 55
    assert sample.ts == "2026-06-21T10:00:00Z"


def test_meter_values_201_with_multiplier_and_bad_values_skipped() -> None:
    sample = parse_meter_values(
        [
            {
                "timestamp": "2026-06-21T10:00:00Z",
                "sampled_value": [
                    {
                        "value": 7.4,
                        "measurand": "Power.Active.Import",
                        "unit_of_measure": {"unit": "W", "multiplier": 3},
                    },
                    {
                        "value": 12.5,
                        "measurand": "Energy.Active.Import.Register",
                        "unit_of_measure": {"unit": "kWh"},
                    },
                    {"value": "lots", "measurand": "SoC"},
                    {
                        "value": 1.0,
                        "measurand": "Power.Active.Import",
                        "unit_of_measure": {"unit": "VA"},
                    },
                ],
            }
        ]
    )
    assert sample.p_kw == pytest.approx(7.4)
    assert sample.e_kwh == pytest.approx(12.5)
    assert sample.soc_pct is None


def test_unknown_status_counts_as_faulted() -> None:
    assert connector_status("SuspendedEV") == "SuspendedEV"
    assert connector_status("Exploded") == "Faulted"


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_profiles_pass_the_official_schemas(version: OcppVersion) -> None:
    set_req = tx_profile(version, 2, "17", 3.7, NOW, 59.5)
    clear_req = clear_profile(version, 2)
    for action, req in (("SetChargingProfile", set_req), ("ClearChargingProfile", clear_req)):
        call = Call(unique_id="1", action=action, payload=snake_to_camel_case(req))
        await validate_payload(call, version)  # raises when the schema refuses it
    expected = json.loads((FIXTURES / f"set_profile_{version}.json").read_text())
    assert snake_to_camel_case(set_req) == expected


def test_profile_duration_covers_the_ttl_from_the_whole_second() -> None:
    req = tx_profile("1.6", 1, "5", 2.0, NOW, 10.0)
    schedule = req["cs_charging_profiles"]["charging_schedule"]
    assert schedule["start_schedule"] == "2026-06-21T10:00:00Z"
    assert schedule["duration"] == 11  # 10.25 s after the start second, rounded up
    assert schedule["charging_schedule_period"] == [{"start_period": 0, "limit": 2000}]
    assert req["cs_charging_profiles"]["charging_profile_id"] == profile_id(1)
    assert (
        tx_profile("2.0.1", 1, "x", 2.0, NOW, None)["charging_profile"]["charging_schedule"][0].get(
            "duration"
        )
        is None
    )
