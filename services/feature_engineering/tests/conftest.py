"""Shared fixtures: a Berlin site context."""

from __future__ import annotations

import pytest

from derbus import features as fx
from derbus.tariff import Tariff


@pytest.fixture(scope="session")
def site() -> fx.SiteContext:
    return fx.SiteContext("Europe/Berlin", "DE", 52.52, 13.40, Tariff(timezone="Europe/Berlin"))
