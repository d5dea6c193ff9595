"""Test helpers for the simulator and its users: a manual clock and a small fleet factory."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from derbus.storage import reading_rows
from derbus.topics import TopicIds
from edge_simulator.config import SimConfig
from edge_simulator.fleet import Fleet, Location
from edge_simulator.wire import DEVICES

T0 = datetime(2026, 6, 22, 0, 0, tzinfo=UTC)
"""A summer Monday, midnight UTC."""


@dataclass
class ManualClock:
    """A clock moved by hand (pass it as `build_service(..., clock=clock)`)."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


def make_fleet(
    config: SimConfig | None = None, n_sites: int = 1, seed: int = 7, **kw: Any
) -> Fleet:
    """A fleet at the default location (Barcelona) starting at T0."""
    start = kw.pop("start", T0)
    return Fleet(config or SimConfig(), Location(), n_sites, seed, start, **kw)


def sent_rows(service: Any) -> set[tuple[datetime, str, str, str, float]]:
    """Every reading a running simulator service published and still holds in its sent buffer,
    as `readings` rows (time, site_id, device_id, metric, value): a fault test's ground truth."""
    sim = service.state
    devices = [d for d in DEVICES if d.device_id in service.settings.devices]
    rows: set[tuple[datetime, str, str, str, float]] = set()
    for step in sim.sent_buffer.steps:
        for k, device in enumerate(devices):
            for j, payload in enumerate(step.payloads[k]):
                ids = TopicIds(sim.fleet.ids[step.sites[j]], device.device_id)
                message = device.spec.model.from_json_bytes(payload)
                for r in reading_rows(device.spec, ids, message):
                    rows.add((r.time, r.site_id, r.device_id, r.metric, r.value))
    return rows
