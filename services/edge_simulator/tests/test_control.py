"""The setpoint contract per simulated device: apply, priority, expire, cancel, PV kW and %."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from derbus.messages import Priority, SetpointCommand, SetpointTarget
from derbus.testing import setpoint_command
from edge_simulator.control import Controls
from edge_simulator.testing import T0, make_fleet


def cmd(target: SetpointTarget, value: float, ttl_s: float = 60, **kw: Any) -> SetpointCommand:
    return setpoint_command(value, kw.pop("ts", T0), target=target, ttl_s=ttl_s, source="t", **kw)


def test_apply_then_expire_reverts_to_default() -> None:
    controls = Controls(make_fleet(n_sites=3))
    acks = controls.submit(1, "battery", cmd("battery_p_kw", -2.0), T0)
    assert [a.ack.status for a in acks] == ["accepted"]
    ovr = controls.overrides(T0 + timedelta(seconds=30))
    assert np.isnan(ovr.battery_p_kw[0])
    assert ovr.battery_p_kw[1] == -2.0
    expired = controls.expire(T0 + timedelta(seconds=60))
    assert [(a.site_index, a.device_id, a.ack.status) for a in expired] == [
        (1, "battery", "expired")
    ]
    assert np.isnan(controls.overrides(T0 + timedelta(seconds=61)).battery_p_kw[1])


def test_priority_wins_and_lower_waits() -> None:
    controls = Controls(make_fleet())
    controls.submit(0, "battery", cmd("battery_p_kw", 1.0, 30, priority=Priority.GRID_OPERATOR), T0)
    acks = controls.submit(
        0, "battery", cmd("battery_p_kw", -4.0, 300, priority=Priority.SITE_OPTIMISER), T0
    )
    assert acks[0].ack.status == "queued"
    assert acks[0].ack.applied_value == 1.0  # the grid operator's value still applies
    assert controls.overrides(T0 + timedelta(seconds=10)).battery_p_kw[0] == 1.0
    controls.expire(T0 + timedelta(seconds=31))
    assert controls.overrides(T0 + timedelta(seconds=31)).battery_p_kw[0] == -4.0


@pytest.mark.parametrize(
    ("device", "target", "value"),
    [
        ("battery", "battery_p_kw", 5.5),
        ("battery", "battery_p_kw", -6.0),
        ("pv", "pv_limit_kw", 6.0),
        ("pv", "pv_limit_pct", 120.0),
        ("load1", "load_on", 2.0),
        ("ev", "battery_p_kw", 1.0),
    ],
)
def test_rejections_name_the_reason(device: str, target: str, value: float) -> None:
    controls = Controls(make_fleet())
    (ack,) = controls.submit(0, device, cmd(target, value), T0)
    assert ack.ack.status == "rejected"
    assert ack.ack.reason
    assert not controls.arbiter(0, device).commands()


def test_stale_setpoint_is_rejected() -> None:
    controls = Controls(make_fleet())
    (ack,) = controls.submit(0, "battery", cmd("battery_p_kw", 1.0, 10), T0 + timedelta(seconds=11))
    assert "stale" in (ack.ack.reason or "")


def test_pv_limits_in_kw_and_percent_take_the_lower() -> None:
    fleet = make_fleet()
    controls = Controls(fleet)
    controls.submit(0, "pv", cmd("pv_limit_pct", 50.0), T0)
    assert controls.overrides(T0).pv_limit_kw[0] == pytest.approx(2.5)
    controls.submit(0, "pv", cmd("pv_limit_kw", 1.0), T0)
    assert controls.overrides(T0).pv_limit_kw[0] == pytest.approx(1.0)
    noon = T0 + timedelta(hours=11)
    fleet.reset_clock(noon - timedelta(seconds=1))
    r = fleet.step(noon, 1.0, controls.overrides(T0))
    assert r.pv_generation_kw[0] == pytest.approx(1.0)
    assert r.pv_available_kw[0] > 2.0


def test_switchable_loads_and_ev_follow_load_on() -> None:
    fleet = make_fleet()
    controls = Controls(fleet)
    controls.submit(0, "load2", cmd("load_on", 1.0), T0)
    controls.submit(0, "load1", cmd("load_on", 0.0), T0)
    fleet.reset_clock(T0)
    r = fleet.step(T0 + timedelta(hours=1), 3600.0, controls.overrides(T0))  # 03:00 local
    assert (r.load1_on[0], r.load2_on[0]) == (0.0, 1.0)
    assert r.load2_kw[0] == pytest.approx(0.8)


def test_cancel_ends_a_setpoint_with_an_ack() -> None:
    controls = Controls(make_fleet())
    controls.submit(0, "battery", cmd("battery_p_kw", 2.0, setpoint_id="m1"), T0)
    acks = controls.cancel(0, "battery", "m1", T0, "cancelled over Modbus")
    assert [(a.ack.status, a.ack.reason) for a in acks] == [("expired", "cancelled over Modbus")]
    assert np.isnan(controls.overrides(T0).battery_p_kw[0])
