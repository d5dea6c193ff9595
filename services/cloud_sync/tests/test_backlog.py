"""Backlog bookkeeping: fill levels, rates, the status table and KPIs (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloud_sync.backlog import (
    BacklogSnapshot,
    RateMeter,
    fill_state,
    has_room,
    health_reasons,
    status_table,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("pending", "capacity", "warn_pct", "expected"),
    [
        (0, 100, 90, "ok"),
        (89, 100, 90, "ok"),
        (90, 100, 90, "warn"),
        (99, 100, 90, "warn"),
        (100, 100, 90, "full"),
        (150, 100, 90, "full"),
        (50, 100, 50, "warn"),
        (9, 10, 100, "ok"),
    ],
)
def test_fill_state(pending: int, capacity: int, warn_pct: float, expected: str) -> None:
    assert fill_state(pending, capacity, warn_pct) == expected


@pytest.mark.parametrize(
    ("pending", "incoming", "capacity", "expected"),
    [
        (0, 5, 10, True),
        (5, 5, 10, True),
        (6, 5, 10, False),
        (0, 50, 10, True),  # a message larger than the box still fits an empty box
        (1, 50, 10, False),
    ],
)
def test_has_room(pending: int, incoming: int, capacity: int, expected: bool) -> None:
    assert has_room(pending, incoming, capacity) is expected


def test_rate_meter_counts_events_in_the_window_only() -> None:
    meter = RateMeter(window_s=10.0)
    meter.add(100.0, 50)
    meter.add(105.0, 50)
    assert meter.rate(105.0) == 10.0
    assert meter.rate(110.5) == 5.0  # the first 50 left the window
    assert meter.rate(116.0) == 0.0


def snapshot(**changes: object) -> BacklogSnapshot:
    base: dict[str, object] = {
        "pending_rows": 1234,
        "capacity_rows": 10_000,
        "oldest_age_s": 42.5,
        "rows_in_total": 5000,
        "rows_out_total": 3766,
        "rows_in_per_s": 12.5,
        "rows_out_per_s": 8.0,
        "last_success": NOW - timedelta(seconds=30),
        "last_error": "write to x failed: connection refused",
        "last_error_at": NOW - timedelta(seconds=5),
        "fill": "ok",
        "refused_messages_total": 0,
    }
    base.update(changes)
    return BacklogSnapshot(**base)  # type: ignore[arg-type]


def test_status_table_shows_every_backlog_figure() -> None:
    text = status_table(snapshot(), NOW)
    assert "rows pending" in text
    assert "1,234" in text
    assert "12.3 % used" in text
    assert "42.5 s" in text
    assert "connection refused" in text
    assert "2026-06-01T11:59:30Z (30 s ago)" in text
    empty = status_table(snapshot(pending_rows=0, oldest_age_s=None, last_success=None), NOW)
    assert "never" in empty


def test_kpis_have_units_in_names_and_minus_one_for_unknown_times() -> None:
    kpis = snapshot(last_error_at=None, fill="full").kpis(NOW)
    assert kpis["pending_rows"] == 1234
    assert kpis["oldest_age_s"] == 42.5
    assert kpis["since_last_success_s"] == 30.0
    assert kpis["since_last_error_s"] == -1.0
    assert kpis["outbox_full"] == 1.0
    assert kpis["fill_pct"] == pytest.approx(12.34)


def test_health_is_one_word_with_its_reasons_on_every_surface() -> None:
    reasons = health_reasons("write to pg failed: connection refused", None, None)
    assert reasons == {"cloud_db": "write to pg failed: connection refused"}
    down = snapshot(reasons=reasons)
    assert down.state == "degraded"
    kpis = down.kpis(NOW)
    assert (kpis["state_code"], kpis["cloud_db_failing"], kpis["outbox_failing"]) == (1, 1, 0)
    assert "degraded (cloud_db: write to pg failed: connection refused)" in status_table(down, NOW)
    up = snapshot(reasons=health_reasons(None, None, None))
    assert up.state == "online"
    assert up.kpis(NOW)["state_code"] == 2
    assert "| online" in status_table(up, NOW)
