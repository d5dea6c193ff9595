"""The stale/recover state machine and the retry backoff, as cycle tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meter_gateway.health import DeviceHealth, next_poll_delay_s

T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stale_after", "polls", "expected"),
    [
        # poll outcomes (True = ok) → (transition, state, consecutive failures) after each
        (3, [True], [("ok", "ok", 0)]),
        (
            3,
            [False, False, False, False],
            [(None, "unknown", 1), (None, "unknown", 2), ("stale", "stale", 3), (None, "stale", 4)],
        ),
        (
            2,
            [True, False, True, False, False, True, True],
            [
                ("ok", "ok", 0),
                (None, "ok", 1),
                (None, "ok", 0),
                (None, "ok", 1),
                ("stale", "stale", 2),
                ("ok", "ok", 0),
                (None, "ok", 0),
            ],
        ),
        (
            1,
            [True, False, False, True],
            [("ok", "ok", 0), ("stale", "stale", 1), (None, "stale", 2), ("ok", "ok", 0)],
        ),
    ],
)
def test_stale_and_recover(
    stale_after: int, polls: list[bool], expected: list[tuple[str | None, str, int]]
) -> None:
    health = DeviceHealth(stale_after)
    got = []
    for ok in polls:
        change = health.success(T0) if ok else health.failure("timeout")
        got.append((change, health.state, health.consecutive_failures))
    assert got == expected


def test_failure_keeps_the_reason_and_success_clears_it() -> None:
    health = DeviceHealth(2)
    health.failure("connection refused")
    assert health.last_error == "connection refused"
    health.success(T0)
    assert health.last_error is None
    assert health.last_ok == T0


@pytest.mark.parametrize(
    ("interval", "failures", "cap", "expected"),
    [
        (1.0, 0, 30, 1.0),
        (1.0, 1, 30, 1.0),
        (1.0, 2, 30, 2.0),
        (1.0, 3, 30, 4.0),
        (1.0, 10, 30, 30.0),
        (60.0, 3, 30, 60.0),
        (0.2, 500, 1.0, 1.0),
    ],
)
def test_backoff(interval: float, failures: int, cap: float, expected: float) -> None:
    assert next_poll_delay_s(interval, failures, cap) == pytest.approx(expected)
