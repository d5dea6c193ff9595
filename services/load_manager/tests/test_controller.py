"""Net-balancing controller as cycle tables: each rule, priorities, min on/off, hours, watchdog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from load_manager.controller import (
    CycleInputs,
    LoadState,
    NetBalanceController,
    SetpointRefresher,
)
from load_manager.settings import LoadConfig, Rule

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
END = T0 + timedelta(hours=1)

FIELD = [
    LoadConfig(device_id="load1", rated_kw=1.5, priority=1, on_wh=100, off_wh=-10),
    LoadConfig(device_id="load2", rated_kw=2.0, priority=2, on_wh=170, off_wh=100),
]


def run(
    ctl: NetBalanceController, rows: list[tuple[float, float, float, tuple[bool, ...]]]
) -> None:
    """Rows of (seconds since T0, balance Wh, PCC kW) -> expected on-state per load."""
    for i, (t_s, balance, pcc, expected) in enumerate(rows):
        now = T0 + timedelta(seconds=t_s)
        inputs = CycleInputs(balance_wh=balance, pcc_p_kw=pcc, period_end=END, local_hour=12)
        got = tuple(d.on for d in ctl.step(inputs, now))
        assert got == expected, f"row {i} (t={t_s}s, B={balance}, p={pcc}): {got} != {expected}"


def test_hysteresis_field_thresholds() -> None:
    ctl = NetBalanceController(FIELD, rule="hysteresis")
    run(ctl, [
        (0, 50, -1.0, (False, False)),
        (10, 99.9, -1.0, (False, False)),
        (20, 100, -1.0, (True, False)),     # load1 on at 100 Wh
        (30, 169, 0.5, (True, False)),
        (40, 170, 0.5, (True, True)),       # load2 on at 170 Wh
        (50, 120, 2.5, (True, True)),       # inside both bands: keep
        (60, 100, 2.5, (True, False)),      # load2 off at 100 Wh
        (70, 0, 1.0, (True, False)),
        (80, -10, 1.0, (False, False)),     # load1 off at -10 Wh
        (90, 50, -0.5, (False, False)),     # inside band while off: stay off
    ])  # fmt: skip


def test_min_on_time_holds_then_drops_below_threshold() -> None:
    loads = [LoadConfig(device_id="load1", rated_kw=1.5, on_wh=100, off_wh=-10)]
    ctl = NetBalanceController(loads, rule="min_on_time", min_on_time_rule_s=600)
    run(ctl, [
        (0, 100, -0.5, (True,)),
        (300, -200, 1.0, (True,)),          # held: 300 s < 600 s
        (599, -300, 1.0, (True,)),
        (600, -300, 1.0, (False,)),         # 600 s on and B < on threshold
        (610, 99, -1.0, (False,)),
        (620, 100, -1.0, (True,)),
        (1300, 150, -1.0, (True,)),         # still above the threshold: stays on
        (1310, 99, -1.0, (False,)),
    ])  # fmt: skip


def test_time_to_consume_projects_the_end_of_period() -> None:
    loads = [LoadConfig(device_id="load1", rated_kw=2.0)]
    ctl = NetBalanceController(
        loads, rule="time_to_consume", ttc_target_wh=0, ttc_margin_wh=10, surplus_tau_s=0
    )
    run(
        ctl,
        [
            # 0 Wh, 1 kW surplus, 1 h left: with 2 kW on it would end at -1000 Wh -> stays off
            (0, 0, -1.0, (False,)),
            # 30 min in, 500 Wh banked, 1 kW surplus: 500 + (1-2)*0.5 h = 0 >= 0 -> on
            (1800, 500, -1.0, (True,)),
            # on, PCC imports 1 kW, 45 min in, B = 250: without it 250 + 1*0.25 h > 0 -> keep
            (2700, 250, 1.0, (True,)),
            # a cloud: PCC imports 2.5 kW with it on (0.5 kW without), 15 min left, B = 200:
            # without it 200 - 0.5*0.25 h = 75 Wh > -10 -> keep (the period still ends above)
            (2710, 200, 2.5, (True,)),
            # the cloud thickens: 1.5 kW import without it: 200 - 1.5*0.25 h = -175 <= -10 -> off
            (2720, 200, 3.5, (False,)),
            # the sun is back, 3 kW surplus, 10 min left: 200 + (3-2)*1/6 h > 0 -> on
            (3000, 200, -3.0, (True,)),
        ],
    )


def test_time_to_consume_runs_first_then_pays_back_in_a_new_period() -> None:
    # a 2 kW load on at the top of the hour with 1 kW of free surplus (PCC imports 1 kW):
    # without it the hour would end at +1000 Wh, so it keeps running on borrowed energy and
    # stops when the remaining surplus exactly pays the debt back (after 30 min: B = -500 Wh)
    loads = [LoadConfig(device_id="load1", rated_kw=2.0)]
    ctl = NetBalanceController(loads, rule="time_to_consume", ttc_margin_wh=0, surplus_tau_s=0)
    ctl.states["load1"].on = True
    run(ctl, [
        (0, 0, 1.0, (True,)),
        (1200, -333, 1.0, (True,)),     # 20 min: -333 + 1 kW * 40 min = +333 > 0
        (1800, -500, 1.0, (False,)),    # 30 min: -500 + 1 kW * 30 min = 0 <= 0 -> off
        (2400, -333, -1.0, (False,)),   # paying back: -333 + (1 - 2) kW * 20 min < 0 -> off
    ])  # fmt: skip
    # no free surplus at all at the start of a period: off at once
    ctl.states["load1"] = LoadState(on=True)
    assert [d.on for d in ctl.step(CycleInputs(0.0, 2.0, END, 13), T0)] == [False]


def test_time_to_consume_smooths_appliance_noise_but_not_its_own_step() -> None:
    loads = [LoadConfig(device_id="load1", rated_kw=2.0)]
    ctl = NetBalanceController(loads, rule="time_to_consume", surplus_tau_s=60)
    run(ctl, [(0, 0, -3.0, (True,))])  # 3 kW free surplus: on
    # with the load on the PCC shows -1 kW: the free surplus is still 3 kW, nothing changes
    run(ctl, [(10, 5, -1.0, (True,))])
    assert ctl._free_kw == pytest.approx(3.0)
    # a 10 s spike of 4 kW more import moves the smoothed free surplus by 4 * 10/70 only
    run(ctl, [(20, 8, 3.0, (True,))])
    assert ctl._free_kw == pytest.approx(3.0 - 4.0 * 10 / 70)


def test_priority_gets_the_surplus_first_and_each_load_uses_its_share() -> None:
    loads = [
        LoadConfig(device_id="low", rated_kw=1.0, priority=2),
        LoadConfig(device_id="high", rated_kw=1.0, priority=1),
    ]
    ctl = NetBalanceController(loads, rule="time_to_consume", surplus_tau_s=0)
    # 1.5 kW surplus at the start of the hour: room for one 1 kW load only -> the priority one
    run(ctl, [(0, 0, -1.5, (False, True))])
    # `high` on, the PCC still exports 1.0 kW: room for `low` too
    run(ctl, [(10, 0, -1.0, (True, True))])
    # PCC +1.5 kW with both on (0.5 kW free): `low` is tested first; without it the PCC would
    # import 0.5 kW -> off; that frees 1 kW and `high` alone leaves 0.5 kW free -> keeps on
    run(ctl, [(20, 0, 1.5, (False, True))])
    # PCC +1.5 kW with `high` alone on: no free surplus -> off too
    run(ctl, [(30, 0, 1.5, (False, False))])


@pytest.mark.parametrize("rule", ["hysteresis", "min_on_time", "time_to_consume"])
def test_min_on_and_min_off_times_hold_in_every_rule(rule: Rule) -> None:
    loads = [
        LoadConfig(device_id="l", rated_kw=1.0, on_wh=100, off_wh=-10, min_on_s=300, min_off_s=300)
    ]
    ctl = NetBalanceController(loads, rule=rule, min_on_time_rule_s=0)
    run(ctl, [
        (0, 500, -3.0, (True,)),            # all rules: big surplus and balance -> on
        (100, -500, 3.0, (True,)),          # wants off but min on 300 s
        (300, -500, 3.0, (False,)),
        (400, 500, -3.0, (False,)),         # wants on but min off 300 s
        (600, 500, -3.0, (True,)),
    ])  # fmt: skip


def test_allowed_hours_and_stale_meter_force_off() -> None:
    loads = [LoadConfig(device_id="l", rated_kw=1.0, allowed_hours=[11, 12])]
    ctl = NetBalanceController(loads, rule="hysteresis")
    on = ctl.step(CycleInputs(500, -3, END, 13), T0)
    assert [d.on for d in on] == [False], "hour 13 is not allowed"
    assert [d.on for d in ctl.step(CycleInputs(500, -3, END, 12), T0)] == [True]
    off = ctl.step(CycleInputs(500, -3, END, 12, meter_ok=False), T0 + timedelta(seconds=10))
    assert off[0].on is False
    assert off[0].switched
    assert off[0].reason == "meter stale"
    assert ctl.step(CycleInputs(500, -3, END, 13), T0 + timedelta(seconds=20))[0].on is False


def test_state_survives_a_restart() -> None:
    ctl = NetBalanceController(FIELD, rule="hysteresis")
    ctl.step(CycleInputs(200, -3, END, 12), T0)
    again = NetBalanceController(FIELD, rule="hysteresis")
    again.restore(ctl.to_dict())
    assert again.states == ctl.states


def test_watchdog_refresh_before_ttl_and_on_change() -> None:
    ref = SetpointRefresher(ttl_s=60, margin_s=20)
    ctl = NetBalanceController(FIELD[:1], rule="hysteresis")
    sent: list[tuple[float, list[tuple[str, bool]]]] = []
    for t in range(0, 130, 10):
        balance = 200 if t < 100 else -50
        decisions = ctl.step(CycleInputs(balance, -1, END, 12), T0 + timedelta(seconds=t))
        out = ref.due(decisions, T0 + timedelta(seconds=t))
        if out:
            sent.append((t, out))
    # on at 0, refreshed at 40 and 80 (60 s TTL - 20 s margin), off at 100 (change)
    assert sent == [
        (0, [("load1", True)]),
        (40, [("load1", True)]),
        (80, [("load1", True)]),
        (100, [("load1", False)]),
    ]
