"""Fixtures of the edge simulator's tests."""

from __future__ import annotations

import pytest

from edge_simulator.testing import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
