"""The EV limiter: the second resort after the battery, shares, release, one change in flight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from derbus.messages import EvChargerTelemetry
from peak_shaving.controller import PeakShavingController, PmaConfig, PmaInputs
from peak_shaving.ev_limit import EvLimit, EvLimiter

T0 = datetime(2026, 6, 21, 18, 0, tzinfo=UTC)


def ev(p_kw: float, limit_kw: float | None = None, max_kw: float = 11.0) -> EvChargerTelemetry:
    return EvChargerTelemetry(
        ts=T0,
        source="ev_charging",
        p_kw=p_kw,
        status="Charging",
        station_id="cp",
        connector_id=1,
        protocol="1.6",
        online=True,
        limit_kw=limit_kw,
        max_kw=max_kw,
        transaction_id="1",
    )


def limiter() -> EvLimiter:
    return EvLimiter(ttl_s=60, deadband_kw=0.5, min_kw=1.4, settle_s=5)


def test_nothing_while_there_is_room() -> None:
    lim = limiter()
    lim.on_telemetry("s", "cp-1", ev(11.0))
    assert lim.decide("s", 0.0, T0) == []
    assert lim.decide("s", 3.0, T0) == []


def test_excess_is_taken_from_the_evs_by_rating_then_released() -> None:
    lim = limiter()
    lim.on_telemetry("s", "a", ev(11.0))
    lim.on_telemetry("s", "b", ev(7.0, max_kw=7.0))
    out = lim.decide("s", -4.5, T0)  # 18 kW drawn, 13.5 allowed: 11:7
    assert {o.device_id: o.limit_kw for o in out} == {"a": 8.25, "b": 5.25}
    # not reported yet: no further change in flight, even if the PCC still shows the excess
    assert lim.decide("s", -4.5, T0 + timedelta(seconds=1)) == []
    lim.on_telemetry("s", "a", ev(8.25, limit_kw=8.25))
    lim.on_telemetry("s", "b", ev(5.25, limit_kw=5.25, max_kw=7.0))
    assert lim.decide("s", -3.0, T0 + timedelta(seconds=2)) == []  # reported, not settled yet
    assert lim.decide("s", 0.1, T0 + timedelta(seconds=6)) == []  # inside the deadband
    # refreshed at half the TTL
    assert len(lim.decide("s", 0.0, T0 + timedelta(seconds=31))) == 2
    # room for everyone: released at the rating, then nothing more
    out = lim.decide("s", 5.0, T0 + timedelta(seconds=32))
    assert set(out) == {EvLimit("a", 11.0, release=True), EvLimit("b", 7.0, release=True)}
    assert lim.limits("s") == {}
    assert lim.kpis("s") == {"ev_setpoints_sent": 6.0, "ev_limited": 0.0, "ev_limit_kw": 0.0}
    lim.on_telemetry("s", "a", ev(11.0))
    assert lim.decide("s", 0.5, T0 + timedelta(seconds=33)) == []


def test_a_power_reading_that_lags_the_limit_does_not_release_it() -> None:
    """ev_charging reports the limit once the station took the profile, the power with the next
    MeterValues: in between the charger shows limit 5.5 at 11 kW while the PCC already shows the
    lower draw (no room left). That is no room to release (seen under load: 5.5 / 11 chatter)."""
    lim = limiter()
    lim.on_telemetry("s", "a", ev(11.0))
    assert lim.decide("s", -5.5, T0) == [EvLimit("a", 5.5)]
    lim.on_telemetry("s", "a", ev(11.0, limit_kw=5.5))  # the limit taken, the power not yet
    assert lim.decide("s", 0.0, T0 + timedelta(seconds=6)) == []
    assert lim.limits("s") == {"a": 5.5}
    # real room (the site's load fell by 6 kW): released
    lim.on_telemetry("s", "a", ev(5.5, limit_kw=5.5))
    assert lim.decide("s", 6.0, T0 + timedelta(seconds=12)) == [EvLimit("a", 11.0, release=True)]


def test_a_limit_the_pcc_shows_before_the_charger_reports_it_is_not_released_at_once() -> None:
    """The station took the profile and draws less (the PCC shows it: no excess left) while
    ev_charging still reports the charger as before, without our limit and at 11 kW. Read as
    11 kW drawn with room 0 that is room for the full rating (seen under faketime with OCPP
    2.0.1: 5.5 -> 11 kW within 70 ms, again and again); a release waits for `settle_s`."""
    lim = limiter()
    lim.on_telemetry("s", "a", ev(11.0))
    assert lim.decide("s", -5.5, T0) == [EvLimit("a", 5.5)]
    assert lim.decide("s", 0.0, T0 + timedelta(milliseconds=70)) == []
    assert lim.limits("s") == {"a": 5.5}
    lim.on_telemetry("s", "a", ev(5.5, limit_kw=5.5))
    assert lim.decide("s", 0.0, T0 + timedelta(seconds=6)) == []  # settled, no room: kept
    assert lim.decide("s", 6.0, T0 + timedelta(seconds=7)) == [EvLimit("a", 11.0, release=True)]


def test_below_the_minimum_current_the_ev_pauses_and_an_ended_session_is_forgotten() -> None:
    lim = limiter()
    lim.on_telemetry("s", "a", ev(2.0))
    assert lim.decide("s", -1.0, T0) == [EvLimit("a", 0.0)]
    unplugged = ev(0.0).model_copy(update={"status": "Available", "transaction_id": None})
    lim.on_telemetry("s", "a", unplugged)
    assert lim.decide("s", -1.0, T0) == []
    assert lim.limits("s") == {}


def test_the_controller_says_how_much_the_battery_could_still_discharge() -> None:
    pma = PeakShavingController(
        PmaConfig(
            import_limit_kw=12.0, export_limit_kw=-10.0, margin_kw=0.5, battery_max_discharge_kw=2.0
        )
    )
    over = pma.step(PmaInputs("s", T0, pcc_p_kw=19.0, battery_p_kw=0.0, soc_pct=50.0))
    assert over.battery_p_kw == -2.0
    assert over.discharge_room_kw == 0.0
    room = over.import_cap_kw - over.pcc_expected_kw + over.discharge_room_kw
    assert room == pytest.approx(-5.5)  # what the EVs must give up
    under = pma.step(
        PmaInputs("s", T0 + timedelta(seconds=1), pcc_p_kw=11.0, battery_p_kw=-1.0, soc_pct=50.0)
    )
    assert under.discharge_room_kw == pytest.approx(2.0 + under.battery_p_kw)


def test_a_higher_limit_from_another_optimiser_is_overruled_again() -> None:
    lim = limiter()
    lim.on_telemetry("s", "a", ev(11.0))
    assert lim.decide("s", -5.0, T0) == [EvLimit("a", 6.0)]
    # the load manager's job start (same priority, newer) set 11 kW: the PCC is over again
    lim.on_telemetry("s", "a", ev(11.0, limit_kw=11.0))
    assert lim.decide("s", -5.0, T0 + timedelta(seconds=2)) == []  # settle time first
    assert lim.decide("s", -5.0, T0 + timedelta(seconds=6)) == [EvLimit("a", 6.0)]
