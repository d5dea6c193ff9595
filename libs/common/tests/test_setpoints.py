"""The setpoint contract as a table: apply, reject with reason, priority, supersede, expire."""

from datetime import UTC, datetime, timedelta

from derbus.messages import Priority, SetpointCommand
from derbus.setpoints import SetpointArbiter, TargetLimits

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def cmd(
    value: float,
    prio: Priority = Priority.MANUAL,
    ttl: float = 60,
    ts: datetime = T0,
    sid: str | None = None,
) -> SetpointCommand:
    extra = {"setpoint_id": sid} if sid else {}
    return SetpointCommand(
        ts=ts,
        source="t",
        target="battery_p_kw",
        value=value,
        unit="kW",
        ttl_s=ttl,
        priority=prio,
        **extra,
    )


def arbiter() -> SetpointArbiter:
    return SetpointArbiter("bat-1", {"battery_p_kw": TargetLimits(-5.0, 5.0)})


def test_accept_and_apply() -> None:
    a = arbiter()
    acks = a.submit(cmd(3.0), T0)
    assert [x.status for x in acks] == ["accepted"]
    assert acks[0].applied_value == 3.0
    assert a.value("battery_p_kw", T0 + timedelta(seconds=10)) == 3.0


def test_rejections_name_the_reason() -> None:
    a = arbiter()
    out = a.submit(cmd(9.0), T0)[0]
    assert (out.status, out.reason) == ("rejected", "value 9 outside the allowed range [-5, 5]")
    stale = a.submit(cmd(1.0, ttl=10), T0 + timedelta(seconds=11))[0]
    assert stale.status == "rejected"
    assert "stale" in (stale.reason or "")
    future = a.submit(cmd(1.0, ts=T0 + timedelta(minutes=5)), T0)[0]
    assert "future" in (future.reason or "")
    pv = SetpointCommand(ts=T0, source="t", target="pv_limit_kw", value=1, unit="kW", ttl_s=5)
    unsupported = a.submit(pv, T0)[0]
    assert "not supported" in (unsupported.reason or "")
    assert a.value("battery_p_kw", T0) is None, "nothing rejected is ever applied"


def test_priority_wins_and_lower_waits() -> None:
    a = arbiter()
    a.submit(cmd(-2.0, Priority.GRID_OPERATOR, ttl=30), T0)
    low = a.submit(cmd(4.0, Priority.SITE_OPTIMISER, ttl=120), T0 + timedelta(seconds=1))
    assert low[0].status == "accepted"
    assert low[0].applied_value == -2.0, "the grid operator's setpoint still applies"
    assert a.value("battery_p_kw", T0 + timedelta(seconds=20)) == -2.0
    expired = a.expire(T0 + timedelta(seconds=31))
    assert [e.status for e in expired] == ["expired"]
    assert a.value("battery_p_kw", T0 + timedelta(seconds=31)) == 4.0


def test_same_priority_supersedes() -> None:
    a = arbiter()
    first = cmd(1.0, Priority.SITE_OPTIMISER, sid="a")
    a.submit(first, T0)
    acks = a.submit(
        cmd(2.0, Priority.SITE_OPTIMISER, sid="b", ts=T0 + timedelta(seconds=1)),
        T0 + timedelta(seconds=1),
    )
    assert [(x.setpoint_id, x.status) for x in acks] == [("b", "accepted"), ("a", "superseded")]
    assert a.value("battery_p_kw", T0 + timedelta(seconds=2)) == 2.0


def test_refresh_with_same_id_extends_ttl_without_superseding() -> None:
    a = arbiter()
    a.submit(cmd(1.0, ttl=10, sid="x"), T0)
    acks = a.submit(
        cmd(1.0, ttl=10, sid="x", ts=T0 + timedelta(seconds=8)), T0 + timedelta(seconds=8)
    )
    assert [x.status for x in acks] == ["accepted"]
    assert a.expire(T0 + timedelta(seconds=12)) == []
    assert a.value("battery_p_kw", T0 + timedelta(seconds=12)) == 1.0
    assert a.next_expiry() == T0 + timedelta(seconds=18)


def test_revert_after_ttl() -> None:
    a = arbiter()
    a.submit(cmd(5.0, ttl=5), T0)
    assert a.value("battery_p_kw", T0 + timedelta(seconds=6), default=0.0) == 0.0
    assert [x.status for x in a.expire(T0 + timedelta(seconds=6))] == ["expired"]
