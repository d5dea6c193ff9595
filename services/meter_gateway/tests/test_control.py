"""Control plans (register maps and SunSpec) and the write/refresh/revert decision table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from derbus.errors import SetpointRejectedError
from meter_gateway.control import ControlState, RegisterControl, Write, decide
from meter_gateway.device_map import ControlSpec
from meter_gateway.registers import encode
from meter_gateway.sunspec import PvLimitControl, StorageControl, SunSpecModel, model_points

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("desired", "state", "now_s", "refresh_s", "expected"),
    [
        (None, ControlState(), 0, None, None),  # nothing live, never written: leave the device
        (2.0, ControlState(), 0, None, "write"),
        (2.0, ControlState(2.0, at(0)), 1, None, None),
        (3.0, ControlState(2.0, at(0)), 1, None, "write"),
        (2.0, ControlState(2.0, at(0)), 9.9, 10, None),
        (2.0, ControlState(2.0, at(0)), 10, 10, "refresh"),
        (None, ControlState(2.0, at(0)), 5, 10, "revert"),
        (None, ControlState(None, at(0)), 5, 10, None),  # already reverted
    ],
)
def test_decide(
    desired: float | None,
    state: ControlState,
    now_s: float,
    refresh_s: float | None,
    expected: str | None,
) -> None:
    assert decide(desired, state, at(now_s), refresh_s) == expected


def test_register_control_writes_watchdog_value_enable_and_reverts() -> None:
    spec = ControlSpec.model_validate(
        {
            "target": "battery_p_kw",
            "min": -5,
            "max": 5,
            "revert_value": 0,
            "write": {"address": 100, "type": "int32", "unit": "W"},
            "enable": {"address": 102, "on": 1, "off": 0},
            "reversion": {"address": 103, "seconds": 20},
        }
    )
    plan = RegisterControl(spec)
    assert plan.refresh_s == 10
    assert plan.limits.check(6) is not None
    assert plan.limits.check(-5) is None
    assert plan.writes(-2.5) == [
        Write(103, (20,)),
        Write(100, tuple(encode(-2500, "int32"))),  # type: ignore[arg-type]
        Write(102, (1,)),
    ]
    assert plan.revert() == [Write(100, (0, 0)), Write(102, (0,))]


def test_register_control_refuses_a_value_the_register_cannot_hold() -> None:
    spec = ControlSpec.model_validate(
        {
            "target": "pv_limit_kw",
            "min": 0,
            "max": 1000,
            "revert_value": 0,
            "write": {"address": 1, "type": "uint16", "unit": "W"},
        }
    )
    with pytest.raises(SetpointRejectedError, match="does not fit"):
        RegisterControl(spec).writes(100.0)  # 100 000 W > uint16


M124 = SunSpecModel(124, 40200, 24, "storage_basic")
M123 = SunSpecModel(123, 40300, 24, "controls")


def reg(model: SunSpecModel, name: str) -> int:
    return model.address + model_points(model.model_id)[name].offset


def test_storage_control_charge_discharge_zero_and_revert() -> None:
    spec = ControlSpec(target="battery_p_kw", min=-5, max=5)
    plan = StorageControl(spec, M124, wchamax_w=5000.0, rate_sf=-1, wdischamax_w=4000.0)
    assert plan.refresh_s == 30  # half the default 60 s reversion
    charge = plan.writes(2.5)  # 50 % of WChaMax, sf -1 → raw 500
    assert charge == [
        Write(reg(M124, "InOutWRte_RvrtTms"), (60,)),
        Write(reg(M124, "InWRte"), (500,)),
        Write(reg(M124, "StorCtl_Mod"), (1,)),
    ]
    discharge = plan.writes(-1.0)
    assert discharge[1:] == [
        Write(reg(M124, "OutWRte"), (250,)),  # 25 % of the 4 kW discharge rating
        Write(reg(M124, "StorCtl_Mod"), (2,)),
    ]
    assert plan.writes(0.0)[1:] == [
        Write(reg(M124, "InWRte"), (0,)),
        Write(reg(M124, "StorCtl_Mod"), (1,)),
    ]
    assert plan.revert() == [Write(reg(M124, "StorCtl_Mod"), (0,))]
    with pytest.raises(SetpointRejectedError, match="exceeds the battery's charge rating 5 kW"):
        plan.writes(6.0)
    with pytest.raises(SetpointRejectedError, match="discharge rating 4 kW"):
        plan.writes(-4.5)


def test_pv_limit_control_pct_and_kw() -> None:
    pct = PvLimitControl(
        ControlSpec.model_validate(
            {"target": "pv_limit_pct", "min": 0, "max": 100, "reversion": {"seconds": 4}}
        ),
        M123,
        pct_sf=0,
        wmax_w=None,
    )
    assert pct.refresh_s == 2
    assert pct.writes(40) == [
        Write(reg(M123, "WMaxLimPct_RvrtTms"), (4,)),
        Write(reg(M123, "WMaxLimPct"), (40,)),
        Write(reg(M123, "WMaxLim_Ena"), (1,)),
    ]
    assert pct.revert() == [Write(reg(M123, "WMaxLim_Ena"), (0,))]
    kw = PvLimitControl(ControlSpec(target="pv_limit_kw", min=0, max=10), M123, -1, 8000.0)
    assert kw.writes(2.0)[1] == Write(reg(M123, "WMaxLimPct"), (250,))  # 25 % at sf -1
    no_wmax = PvLimitControl(ControlSpec(target="pv_limit_kw", min=0, max=10), M123, 0, None)
    with pytest.raises(SetpointRejectedError, match="needs WMax"):
        no_wmax.writes(1.0)
