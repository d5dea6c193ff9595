"""The setpoint contract as cycle tables: each step (time, action) → its acks and the value."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from derbus.messages import ACK_STATUSES, Priority, SetpointAck, SetpointCommand
from derbus.setpoints import (
    SetpointArbiter,
    TargetLimits,
    invalid_command_ack,
    unknown_device_ack,
)
from derbus.testing import setpoint_command

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
M, S, G, X = Priority.MANUAL, Priority.SITE_OPTIMISER, Priority.GRID_OPERATOR, Priority.SAFETY


@dataclass(frozen=True)
class Submit:
    """Send a battery setpoint issued at the step's time."""

    sid: str
    priority: Priority
    value: float
    ttl_s: float


@dataclass(frozen=True)
class Expire:
    """The receiver's periodic expiry."""


@dataclass(frozen=True)
class Withdraw:
    """The receiver gives up on a setpoint."""

    sid: str


Action = Submit | Expire | Withdraw
Ack = tuple[str, str, str | None]
"""(setpoint id, status, the setpoint in force after the event)."""
Step = tuple[float, Action, list[Ack], float | None]
"""(seconds after T0, action, acks in order, the battery value applied afterwards)."""


def run(arbiter: SetpointArbiter, steps: list[Step]) -> None:
    for k, (t_s, action, expected, value) in enumerate(steps):
        now = T0 + timedelta(seconds=t_s)
        if isinstance(action, Submit):
            cmd = setpoint_command(
                action.value,
                now,
                ttl_s=action.ttl_s,
                source="t",
                setpoint_id=action.sid,
                priority=action.priority,
            )
            acks = arbiter.submit(cmd, now)
        elif isinstance(action, Expire):
            acks = arbiter.expire(now)
        else:
            acks = arbiter.withdraw(action.sid, now, "cancelled")
        got = [(a.setpoint_id, a.status, a.active_setpoint_id) for a in acks]
        assert got == expected, f"step {k} at {t_s} s: {action}"
        for a in acks:
            active = arbiter.active("battery_p_kw", now)
            assert a.applied_value == (active.value if active else None), f"step {k}"
            assert a.active_priority == (active.priority if active else None), f"step {k}"
        assert arbiter.value("battery_p_kw", now) == value, f"step {k}: applied value"


def arbiter() -> SetpointArbiter:
    return SetpointArbiter("bat-1", {"battery_p_kw": TargetLimits(-5.0, 5.0)})


CYCLES: dict[str, list[Step]] = {
    "accepted, applied, expired, reverted": [
        (0, Submit("a", M, 3.0, 60), [("a", "accepted", "a")], 3.0),
        (59, Expire(), [], 3.0),
        (60, Expire(), [("a", "expired", None)], None),
    ],
    "lower while a higher is live: queued naming the winner, in force when it ends": [
        (0, Submit("grid", G, -2.0, 30), [("grid", "accepted", "grid")], -2.0),
        (1, Submit("man", M, 4.0, 120), [("man", "queued", "grid")], -2.0),
        (31, Expire(), [("grid", "expired", "man"), ("man", "accepted", "man")], 4.0),
        (121, Expire(), [("man", "expired", None)], None),
    ],
    "a queued setpoint whose ttl ends first expires without ever applying": [
        (0, Submit("grid", G, -2.0, 60), [("grid", "accepted", "grid")], -2.0),
        (1, Submit("man", M, 4.0, 10), [("man", "queued", "grid")], -2.0),
        (11, Expire(), [("man", "expired", "grid")], -2.0),
        (60, Expire(), [("grid", "expired", None)], None),
    ],
    "a higher one displaces the lower one in force: superseded, never resumed": [
        (0, Submit("man", M, 1.0, 120), [("man", "accepted", "man")], 1.0),
        (
            1,
            Submit("grid", G, -3.0, 30),
            [("grid", "accepted", "grid"), ("man", "superseded", "grid")],
            -3.0,
        ),
        (31, Expire(), [("grid", "expired", None)], None),
        (121, Expire(), [], None),
    ],
    "same priority: the newer replaces the older": [
        (0, Submit("a", S, 1.0, 60), [("a", "accepted", "a")], 1.0),
        (1, Submit("b", S, 2.0, 60), [("b", "accepted", "b"), ("a", "superseded", "b")], 2.0),
    ],
    "a higher one ends the lower in force and the lower queued alike": [
        (0, Submit("grid", G, -1.0, 60), [("grid", "accepted", "grid")], -1.0),
        (1, Submit("man", M, 1.0, 60), [("man", "queued", "grid")], -1.0),
        (
            2,
            Submit("safe", X, 0.0, 60),
            [
                ("safe", "accepted", "safe"),
                ("grid", "superseded", "safe"),
                ("man", "superseded", "safe"),
            ],
            0.0,
        ),
    ],
    "a newer queued one of the same priority supersedes the older queued one": [
        (0, Submit("grid", G, -1.0, 60), [("grid", "accepted", "grid")], -1.0),
        (1, Submit("opt1", S, 1.0, 60), [("opt1", "queued", "grid")], -1.0),
        (
            2,
            Submit("opt2", S, 2.0, 60),
            [("opt2", "queued", "grid"), ("opt1", "superseded", "grid")],
            -1.0,
        ),
        (60, Expire(), [("grid", "expired", "opt2"), ("opt2", "accepted", "opt2")], 2.0),
    ],
    "a lower one between two: queued behind the highest, the one below it superseded": [
        (0, Submit("safe", X, 0.0, 60), [("safe", "accepted", "safe")], 0.0),
        (1, Submit("man", M, 1.0, 60), [("man", "queued", "safe")], 0.0),
        (
            2,
            Submit("opt", S, 2.0, 60),
            [("opt", "queued", "safe"), ("man", "superseded", "safe")],
            0.0,
        ),
    ],
    "a refresh (same id) extends the ttl and supersedes nothing": [
        (0, Submit("x", M, 1.0, 10), [("x", "accepted", "x")], 1.0),
        (8, Submit("x", M, 1.5, 10), [("x", "accepted", "x")], 1.5),
        (12, Expire(), [], 1.5),
        (18, Expire(), [("x", "expired", None)], None),
    ],
    "a refresh at a lower priority hands the device to the queued one": [
        (0, Submit("x", G, 1.0, 60), [("x", "accepted", "x")], 1.0),
        (1, Submit("opt", S, 2.0, 60), [("opt", "queued", "x")], 1.0),
        (2, Submit("x", M, 1.0, 60), [("x", "queued", "opt"), ("opt", "accepted", "opt")], 2.0),
    ],
    "withdrawn: expired with the receiver's reason, the queued one takes over": [
        (0, Submit("grid", G, -1.0, 60), [("grid", "accepted", "grid")], -1.0),
        (1, Submit("man", M, 1.0, 60), [("man", "queued", "grid")], -1.0),
        (2, Withdraw("nosuch"), [], -1.0),
        (3, Withdraw("grid"), [("grid", "expired", "man"), ("man", "accepted", "man")], 1.0),
        (4, Withdraw("man"), [("man", "expired", None)], None),
    ],
    "one past its end but not yet expired is reported expired, not superseded": [
        (0, Submit("grid", G, -1.0, 10), [("grid", "accepted", "grid")], -1.0),
        (11, Submit("man", M, 1.0, 60), [("man", "accepted", "man")], 1.0),
        (11, Expire(), [("grid", "expired", "man")], 1.0),
    ],
}


@pytest.mark.parametrize("steps", CYCLES.values(), ids=CYCLES.keys())
def test_cycle(steps: list[Step]) -> None:
    run(arbiter(), steps)


def test_every_valid_command_gets_one_first_and_one_final_ack() -> None:
    a = arbiter()
    firsts: dict[str, list[str]] = {}
    for k, sid in enumerate(["a", "b", "c", "d", "e", "f"]):
        prio = [M, G, S, X, M, S][k]
        now = T0 + timedelta(seconds=k)
        cmd = setpoint_command(
            k - 2.5, now, ttl_s=10 + 7 * k, source="t", setpoint_id=sid, priority=prio
        )
        for ack in a.submit(cmd, now):
            firsts.setdefault(ack.setpoint_id, []).append(ack.status)
    for ack in a.expire(T0 + timedelta(hours=1)):
        firsts.setdefault(ack.setpoint_id, []).append(ack.status)
    for sid, statuses in firsts.items():
        assert statuses[0] in ("accepted", "queued"), (sid, statuses)
        assert statuses[-1] in ("superseded", "expired"), (sid, statuses)
        assert sum(s in ("superseded", "expired") for s in statuses) == 1, (sid, statuses)
    assert set(firsts) == {"a", "b", "c", "d", "e", "f"}
    assert a.commands() == []
    assert a.idle


def _cmd(value: float, **kw: object) -> SetpointCommand:
    return SetpointCommand.model_validate(
        {
            "ts": T0,
            "source": "t",
            "target": "battery_p_kw",
            "value": value,
            "unit": "kW",
            "ttl_s": 60,
            **kw,
        }
    )


@pytest.mark.parametrize(
    ("cmd", "now", "reason"),
    [
        (_cmd(9.0), T0, "value 9 outside the allowed range [-5, 5]"),
        (_cmd(1.0, ttl_s=10), T0 + timedelta(seconds=11), "stale: expired at 2026-06-01T12:00:10Z"),
        (_cmd(1.0, ts=T0 + timedelta(minutes=5)), T0, "timestamp is in the future"),
        (
            SetpointCommand(ts=T0, source="t", target="pv_limit_kw", value=1, unit="kW", ttl_s=5),
            T0,
            "target pv_limit_kw not supported (supported: battery_p_kw)",
        ),
    ],
)
def test_rejections_name_the_reason_and_change_nothing(
    cmd: SetpointCommand, now: datetime, reason: str
) -> None:
    a = arbiter()
    run(a, [(0, Submit("grid", G, -1.0, 3600), [("grid", "accepted", "grid")], -1.0)])
    (ack,) = a.submit(cmd, now)
    assert ack.status == "rejected"
    assert (ack.reason or "").startswith(reason)
    same_target = cmd.target == "battery_p_kw"
    # the ack describes what holds the command's target
    assert (ack.active_setpoint_id, ack.applied_value) == (
        ("grid", -1.0) if same_target else (None, None)
    )
    assert a.value("battery_p_kw", now) == -1.0, "nothing rejected is ever applied"


def test_holder_and_check_let_a_receiver_write_before_it_submits() -> None:
    a = arbiter()
    run(a, [(0, Submit("grid", G, -1.0, 60), [("grid", "accepted", "grid")], -1.0)])
    low, high = _cmd(1.0, priority=M), _cmd(2.0, priority=X)
    assert a.check(low, T0) is None
    winner = a.holder(low, T0)
    assert winner is not None
    assert winner.setpoint_id == "grid"
    assert a.holder(high, T0) is None
    assert a.reject(high, T0, "device write failed").status == "rejected"
    assert a.value("battery_p_kw", T0) == -1.0


# --- answers before any arbiter -------------------------------------------------------------


def _invalid(payload: bytes) -> SetpointAck | None:
    try:
        SetpointCommand.model_validate_json(payload)
    except ValidationError as err:
        return invalid_command_ack(payload, err, "sim", T0)
    raise AssertionError("the payload is valid")


GOOD = (
    b'{"ts": "2026-06-01T12:00:00Z", "source": "scada", "setpoint_id": "ops-1", '
    b'"target": "battery_p_kw", "value": -3.0, "unit": "kW", "ttl_s": 600, "priority": "manual"}'
)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ((b'"unit": "kW"', b'"unit": "W"'), "unit", "unknown unit 'W'"),
        ((b'"unit": "kW"', b'"unit": "%"'), "unit", "unit '%' does not match target battery_p_kw"),
        ((b'"ttl_s": 600', b'"ttl_s": 0'), "ttl_s", "Input should be greater than 0"),
        ((b'"ttl_s": 600', b'"ttl_s": 999999'), "ttl_s", "less than or equal to 86400"),
        ((b'"value": -3.0', b'"value": "lots"'), "value", "valid number"),
        ((b'"value": -3.0', b'"value": NaN'), "value", "finite number"),
        ((b'"target": "battery_p_kw", ', b""), "target", "Field required"),
        ((b'"priority": "manual"', b'"priority": "boss"'), "priority", "Input should be"),
        ((b'"ts": "2026-06-01T12:00:00Z"', b'"ts": "2026-06-01T12:00:00"'), "ts", "timezone-aware"),
        ((b'"source": "scada"', b'"source": "scada", "colour": "red"'), "colour", "Extra inputs"),
        (
            (b'"setpoint_id": "ops-1"', b'"setpoint_id": 42, "ttl_s": -1'),
            "setpoint_id",
            "valid string",
        ),
    ],
)
def test_an_invalid_command_with_an_id_is_rejected_naming_the_field(
    change: tuple[bytes, bytes], field: str, reason: str
) -> None:
    payload = GOOD.replace(*change)
    assert payload != GOOD
    ack = _invalid(payload)
    assert ack is not None
    assert ack.status == "rejected"
    assert ack.setpoint_id == ("42" if b'"setpoint_id": 42' in payload else "ops-1")
    assert ack.field == field
    assert reason in (ack.reason or "")
    assert ack.source == "sim"
    assert ack.ts == T0


@pytest.mark.parametrize(
    "payload",
    [
        b"not json at all",
        b"\xff\xfe",
        b"[1, 2]",
        GOOD.replace(b'"setpoint_id": "ops-1", ', b"").replace(b'"ttl_s": 600', b'"ttl_s": 0'),
        GOOD.replace(b'"ops-1"', b'""').replace(b'"kW"', b'"W"'),
        GOOD.replace(b'"ops-1"', b'"' + b"x" * 101 + b'"'),
        GOOD.replace(b'"ops-1"', b"true").replace(b'"kW"', b'"W"'),
    ],
)
def test_without_a_usable_id_there_is_nobody_to_answer(payload: bytes) -> None:
    assert _invalid(payload) is None


def test_the_ack_of_an_invalid_command_keeps_a_valid_target() -> None:
    ack = _invalid(GOOD.replace(b'"unit": "kW"', b'"unit": "W"'))
    assert ack is not None
    assert ack.target == "battery_p_kw"
    ack = _invalid(GOOD.replace(b'"battery_p_kw"', b'"warp_drive"'))
    assert ack is not None
    assert (ack.target, ack.field) == (None, "target")


def test_unknown_device_names_the_devices_of_the_site() -> None:
    cmd = _cmd(1.0, setpoint_id="ops-9")
    ack = unknown_device_ack(cmd, "nosuch", ["pv", "battery"], "sim", T0)
    assert (ack.setpoint_id, ack.status) == ("ops-9", "rejected")
    assert ack.reason == "unknown device 'nosuch' (devices of this site: battery, pv)"


def test_ack_statuses_are_the_documented_five() -> None:
    assert set(ACK_STATUSES) == {"accepted", "queued", "rejected", "superseded", "expired"}
    with pytest.raises(ValidationError):
        SetpointAck.model_validate({"ts": T0, "source": "s", "setpoint_id": "x", "status": "maybe"})
