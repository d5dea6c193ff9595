"""PMA cycle tables: inputs → expected battery setpoint, mode and KPIs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from peak_shaving.controller import PeakShavingController, PmaConfig, PmaInputs

T0 = datetime(2024, 3, 5, 12, 0, 0, tzinfo=UTC)
BASE = {
    "import_limit_kw": 50.0,
    "export_limit_kw": -30.0,
    "margin_kw": 0.5,
    "deadband_kw": 0.2,
    "ramp_kw_per_s": 100.0,
    "battery_max_charge_kw": 50.0,
    "battery_max_discharge_kw": 50.0,
    "soc_min_pct": 5.0,
    "soc_max_pct": 95.0,
    "reserve_pct": 20.0,
}


def controller(**changes: Any) -> PeakShavingController:
    return PeakShavingController(PmaConfig(**(BASE | changes)))


def reading(
    t_s: float, pcc: float, battery: float = 0.0, soc: float = 50.0, **extra: Any
) -> PmaInputs:
    """A PCC reading with a battery reading of the same instant."""
    ts = T0 + timedelta(seconds=t_s)
    return PmaInputs(
        site_id="s1",
        ts=ts,
        pcc_p_kw=pcc,
        battery_p_kw=battery,
        battery_ts=ts,
        soc_pct=soc,
        **extra,
    )


# One cycle from a fresh controller: (case, inputs, expected setpoint kW, mode, violation kW)
SINGLE_CYCLE = [
    ("import violation: discharge to limit - margin", reading(0, 80), -30.5, "import_limit", 0),
    (
        "import violation, battery already discharging",
        reading(0, 60, -10),
        -20.5,
        "import_limit",
        0,
    ),
    ("export violation: charge to export limit + margin", reading(0, -40), 10.5, "export_limit", 0),
    ("in limits: follow the schedule", reading(0, 20, schedule_p_kw=10.0), 10.0, "schedule", 0),
    (
        "schedule clipped so the PCC stays under the import limit",
        reading(0, 45, schedule_p_kw=10.0),
        4.5,
        "import_limit",
        0,
    ),
    (
        "schedule discharge clipped at the export limit",
        reading(0, -20, schedule_p_kw=-20.0),
        -9.5,
        "export_limit",
        0,
    ),
    ("no schedule, in limits: idle", reading(0, 20), 0.0, "idle", 0),
    (
        "SoC at max: cannot absorb export, violation reported",
        reading(0, -40, soc=95),
        0.0,
        "export_limit",
        10.0,
    ),
    (
        "SoC at min: cannot shave import, violation reported",
        reading(0, 80, soc=5),
        0.0,
        "import_limit",
        30.0,
    ),
    ("discharge rating caps the shave", reading(0, 120), -50.0, "import_limit", 20.0),
    (
        "battery-reported discharge limit caps the shave",
        reading(0, 80, max_discharge_kw=20.0),
        -20.0,
        "import_limit",
        10.0,
    ),
    (
        "below the reserve the schedule may not discharge",
        reading(0, 20, soc=15, schedule_p_kw=-10.0),
        0.0,
        "schedule",
        0,
    ),
    (
        "below the reserve the limit still discharges",
        reading(0, 80, soc=15),
        -30.5,
        "import_limit",
        0,
    ),
    (
        "schedule above the charge rating is clipped",
        reading(0, -10, schedule_p_kw=70.0),
        50.0,
        "schedule",
        0,
    ),
]


@pytest.mark.parametrize(
    ("case", "inputs", "setpoint", "mode", "violation"),
    SINGLE_CYCLE,
    ids=[row[0] for row in SINGLE_CYCLE],
)
def test_single_cycle(
    case: str, inputs: PmaInputs, setpoint: float, mode: str, violation: float
) -> None:
    decision = controller().step(inputs)
    assert decision.battery_p_kw == pytest.approx(setpoint), case
    assert decision.mode == mode, case
    assert decision.command == (mode != "idle"), case  # idle: nothing is sent
    assert decision.ttl_s == 10.0, case  # first reading: no interval known, the configured TTL
    assert decision.violation_kw == pytest.approx(violation), case
    assert decision.pcc_expected_kw == pytest.approx(
        inputs.pcc_p_kw - inputs.battery_p_kw + setpoint
    )  # type: ignore[operator]


@dataclass(frozen=True)
class Cycle:
    """One row of a sequence: the reading and the expected setpoint (and flags)."""

    inputs: PmaInputs
    setpoint: float
    mode: str | None = None
    ramp_limited: bool | None = None
    deadband_held: bool | None = None
    command: bool | None = None
    ttl_s: float | None = None


def run(ctl: PeakShavingController, cycles: list[Cycle]) -> None:
    for i, c in enumerate(cycles):
        d = ctl.step(c.inputs)
        assert d.battery_p_kw == pytest.approx(c.setpoint), f"cycle {i}: {d}"
        if c.mode is not None:
            assert d.mode == c.mode, f"cycle {i}: {d}"
        if c.ramp_limited is not None:
            assert d.ramp_limited == c.ramp_limited, f"cycle {i}: {d}"
        if c.deadband_held is not None:
            assert d.deadband_held == c.deadband_held, f"cycle {i}: {d}"
        if c.command is not None:
            assert d.command == c.command, f"cycle {i}: {d}"
        if c.ttl_s is not None:
            assert d.ttl_s == pytest.approx(c.ttl_s), f"cycle {i}: {d}"


def test_ramp_limits_schedule_following_but_not_limit_enforcement() -> None:
    run(
        controller(ramp_kw_per_s=5.0),
        [
            Cycle(reading(0, 20, schedule_p_kw=0.0), 0.0, "schedule"),
            Cycle(reading(1, 20, schedule_p_kw=20.0), 5.0, "schedule", ramp_limited=True),
            Cycle(reading(2, 25, 5.0, schedule_p_kw=20.0), 10.0, ramp_limited=True),
            Cycle(reading(3, 30, 10.0, schedule_p_kw=20.0), 15.0, ramp_limited=True),
            Cycle(reading(4, 35, 15.0, schedule_p_kw=20.0), 20.0, ramp_limited=False),
            # a load step to 90 kW: the limit overrides the ramp at once (20 → -40.5)
            Cycle(reading(5, 110, 20.0, schedule_p_kw=20.0), -40.5, "import_limit"),
        ],
    )


def test_deadband_holds_small_changes() -> None:
    run(
        controller(deadband_kw=0.5),
        [
            Cycle(reading(0, 20, schedule_p_kw=10.0), 10.0, deadband_held=False),
            Cycle(reading(1, 30, 10.0, schedule_p_kw=10.3), 10.0, deadband_held=True),
            Cycle(reading(2, 30, 10.0, schedule_p_kw=9.7), 10.0, deadband_held=True),
            Cycle(reading(3, 30, 10.0, schedule_p_kw=10.6), 10.6, deadband_held=False),
        ],
    )


def test_deadband_never_holds_a_limit_violation() -> None:
    # at the limit the battery follows the load even by 0.1 kW
    run(
        controller(deadband_kw=0.5),
        [
            Cycle(reading(0, 80), -30.5, "import_limit"),
            Cycle(reading(1, 49.6, -30.5), -30.6, "import_limit"),
        ],
    )


def test_demand_window_shaves_to_keep_the_interval_average_at_target() -> None:
    ctl = controller(demand_target_kw=40.0, max_gap_s=900.0)
    run(
        ctl,
        [
            # 12:00 start of the interval; 12:05 at 30 kW: 9 000 kWs imported
            Cycle(reading(0, 30), 0.0, "idle"),
            Cycle(reading(300, 30), 0.0, "idle"),
            # 12:10 at 60 kW for 5 min: 27 000 kWs; 36 000 allowed → 9 000 / 300 s = 30 kW cap
            Cycle(reading(600, 60), -30.5, "demand"),
        ],
    )
    # 12:15: the interval closes at (9000 + 18000 + 12000) / 900 = 43.3 kW: the month's peak
    d = ctl.step(reading(900, 40))
    assert ctl.month_peak_kw("s1") == pytest.approx(39_000 / 900)
    assert d.mode == "idle"
    # 12:20 at 45 kW: the threshold is now the month's peak (43.3), not the 40 kW target —
    # shaving below an already-billed peak would waste energy: cap (39 000 - 13 500) / 600
    d = ctl.step(reading(1200, 45))
    assert d.mode == "demand"
    assert d.battery_p_kw == pytest.approx(25_500 / 600 - 0.5 - 45)


def test_demand_window_without_target_does_nothing() -> None:
    ctl = controller(max_gap_s=900.0)
    run(
        ctl,
        [Cycle(reading(0, 30), 0.0), Cycle(reading(300, 30), 0.0), Cycle(reading(600, 45), 0.0)],
    )


def test_month_peak_resets_with_the_month() -> None:
    ctl = controller(max_gap_s=900.0)
    start = datetime(2024, 3, 31, 23, 30, tzinfo=UTC)
    for i, p in enumerate([40.0, 40.0, 40.0, 10.0, 10.0]):
        ctl.step(PmaInputs(site_id="s1", ts=start + timedelta(seconds=900 * i / 2), pcc_p_kw=p))
    # March's last interval ran at 40 kW; April started: its peak so far is 0 (nothing closed)
    assert ctl.month_peak_kw("s1") == pytest.approx(0.0)


def test_kpis_time_on_limit_and_unfixed_violation() -> None:
    ctl = controller()
    run(
        ctl,
        [
            Cycle(reading(0, 120), -50.0),  # 70 kW over, 50 kW of battery: 20 kW unfixable
            Cycle(reading(1, 70, -50.0), -50.0),
            Cycle(reading(2, 70, -50.0), -50.0),
            Cycle(reading(3, -10, -50.0), 0.0, "idle"),  # site load fell to 40 kW: idle again
        ],
    )
    k = ctl.kpis("s1")
    assert k["time_on_limit_s"] == pytest.approx(3.0)
    assert k["limit_events"] == 1
    assert k["unfixed_violation_s"] == pytest.approx(3.0)
    assert k["unfixed_violation_kwh"] == pytest.approx(20 * 3 / 3600)
    assert k["measured_violation_s"] == pytest.approx(2.0)
    assert k["measured_violation_kwh"] == pytest.approx(20 * 2 / 3600)
    assert k["readings"] == 4


def test_sites_are_independent() -> None:
    ctl = controller()
    a = ctl.step(reading(0, 80))
    b = ctl.step(PmaInputs(site_id="s2", ts=T0, pcc_p_kw=20.0, battery_p_kw=0.0, battery_ts=T0))
    assert (a.battery_p_kw, b.battery_p_kw) == (pytest.approx(-30.5), 0.0)
    assert ctl.sites() == ["s1", "s2"]
    assert ctl.kpis("s2")["limit_events"] == 0


@pytest.mark.parametrize(
    (
        "pcc_p_kw",
        "battery_p_kw",
        "battery_age_s",
        "max_discharge_kw",
        "setpoint_kw",
        "violation_kw",
    ),
    [
        # The meter reading of a cycle arrives before the battery reading of the same cycle: the
        # battery reading in hand still shows 0 kW although the -30.5 kW setpoint applies.
        pytest.param(49.5, 0.0, 1.0, None, -30.5, None, id="stale-reading-uses-the-last-setpoint"),
        # Not stale: a gateway polls the battery 20 ms before the meter, a second after the setpoint:
        # that reading already shows what the battery does (it only managed -20 kW), so it is
        # used as it is.
        pytest.param(
            60.0, -20.0, 0.02, None, -30.5, None, id="read-just-before-the-meter-not-stale"
        ),
        # The last setpoint asked -30.5 kW but the battery now reports a 10 kW discharge limit.
        pytest.param(
            70.0, 0.0, 1.0, 10.0, -10.0, 20.0, id="stale-estimate-within-the-battery-limit"
        ),
    ],
)
def test_a_stale_battery_reading_gives_way_to_the_last_setpoint(
    pcc_p_kw: float,
    battery_p_kw: float,
    battery_age_s: float,
    max_discharge_kw: float | None,
    setpoint_kw: float,
    violation_kw: float | None,
) -> None:
    ctl = controller()
    ctl.step(reading(0, 80))  # setpoint -30.5 at t=0
    ts = T0 + timedelta(seconds=1)
    d = ctl.step(
        PmaInputs(
            site_id="s1",
            ts=ts,
            pcc_p_kw=pcc_p_kw,
            battery_p_kw=battery_p_kw,
            battery_ts=ts - timedelta(seconds=battery_age_s),
            soc_pct=50.0,
            max_discharge_kw=max_discharge_kw,
        )
    )
    assert d.site_p_kw == pytest.approx(80.0)
    assert d.battery_p_kw == pytest.approx(setpoint_kw)
    if violation_kw is not None:
        assert d.violation_kw == pytest.approx(violation_kw)


def test_demand_window_holds_the_planned_peak() -> None:
    # no configured target: the EMA's planned 15-minute peak (35 kW) is the threshold
    ctl = controller(max_gap_s=900.0)
    run(
        ctl,
        [
            Cycle(reading(0, 30, plan_peak_kw=35.0), 0.0, "idle"),
            # 5 min at 30 then 5 min at 45: 22 500 kWs of 31 500 → 9 000 / 300 s = 30 kW cap
            Cycle(reading(300, 30, plan_peak_kw=35.0), 0.0, "idle"),
            Cycle(reading(600, 45, plan_peak_kw=35.0), -15.5, "demand"),
        ],
    )
    # a configured target above the planned peak wins (the higher threshold)
    ctl = controller(max_gap_s=900.0, demand_target_kw=45.0)
    run(ctl, [Cycle(reading(0, 30, plan_peak_kw=35.0), 0.0), Cycle(reading(300, 44), 0.0, "idle")])


def test_idle_sends_nothing_and_acting_commands_refresh_before_their_ttl() -> None:
    # (t, PCC, battery) → command or not; TTL = 3 reading intervals, >= 2 s, <= setpoint_ttl_s
    ctl = controller(setpoint_ttl_s=10.0)
    run(
        ctl,
        [
            Cycle(reading(0, 20), 0.0, "idle", command=False, ttl_s=10.0),
            Cycle(reading(1, 80), -30.5, "import_limit", command=True, ttl_s=3.0),
            Cycle(reading(2, 49.5, -30.5), -30.5, "import_limit", command=True, ttl_s=3.0),
            # the peak is over: nothing is sent, the -30.5 kW command lapses within 3 s and
            # the battery's own default (self-consumption) resumes; no ramp back towards 0
            Cycle(reading(3, -10.5, -30.5), 0.0, "idle", command=False),
            # whatever the battery does by itself is left alone while inside the limits
            Cycle(reading(4, 5.0, -15.0), 0.0, "idle", command=False),
            Cycle(reading(5, -5.0, 12.0), 0.0, "idle", command=False),
            # its self-consumption discharge would cross the export limit: commanded again
            Cycle(reading(6, -35.0, -20.0), -14.5, "export_limit", command=True),
            # readings 0.5 s apart: the TTL floor (2 s); 20 s apart: the configured TTL (10 s)
            Cycle(reading(6.5, 80), -30.5, command=True, ttl_s=2.0),
            Cycle(reading(26.5, 80), -30.5, command=True, ttl_s=10.0),
        ],
    )
    k = ctl.kpis("s1")
    assert (k["readings"], k["setpoints_sent"]) == (9, 5)


def test_a_schedule_is_tracked_even_at_zero() -> None:
    # a valid schedule holding the battery at 0 kW (saving energy for a later peak) is a
    # command: the battery's self-consumption would spend that energy
    run(
        controller(),
        [
            Cycle(reading(0, 20, 5.0, schedule_p_kw=0.0), 0.0, "schedule", command=True),
            Cycle(reading(1, 20, 0.0, schedule_p_kw=0.0), 0.0, "schedule", command=True),
            Cycle(reading(2, 20, 0.0), 0.0, "idle", command=False),  # fallback: limits only
        ],
    )


def test_demand_window_commands_only_while_it_shaves() -> None:
    ctl = controller(demand_target_kw=40.0, max_gap_s=900.0)
    run(
        ctl,
        [
            Cycle(reading(0, 30), 0.0, "idle", command=False),
            Cycle(reading(300, 30), 0.0, "idle", command=False),
            Cycle(reading(600, 60), -30.5, "demand", command=True),
            Cycle(reading(900, 40), 0.0, "idle", command=False),  # new interval, within target
        ],
    )
