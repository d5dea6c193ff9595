"""Historical backfill: step the fleet over a past range and write one JSON record per site and step."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO, Any

from derbus.topics import TopicIds
from edge_simulator.config import SimConfig
from edge_simulator.output import StepView
from edge_simulator.service import SERVICE_NAME, build_fleet
from edge_simulator.settings import Settings

_INFLUX_BATCH = 5000


def backfill(
    settings: Settings,
    config: SimConfig,
    start: datetime,
    end: datetime,
    out: IO[str],
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Simulate [start, end) every `settings.interval_s` simulated seconds into JSONL.

    Returns the number of records written (steps × sites).
    """
    fleet = build_fleet(settings, config, start)
    fleet.sky.prefetch(start, end)
    writer: Any = None
    if settings.enable_influxdb:
        from edge_simulator.influx import InfluxWriter

        writer = InfluxWriter(settings.influxdb)
    pending: list[Any] = []
    step = timedelta(seconds=settings.interval_s)
    t = start
    fleet.reset_clock(start - step)
    written = done = 0
    try:
        while t < end:
            view = StepView(fleet.step(t, settings.interval_s))
            lines = [json.dumps(view.record(i, sid)) for i, sid in enumerate(fleet.ids)]
            out.write("\n".join(lines) + "\n")
            written += len(lines)
            if writer is not None:
                pending.extend(
                    (o.spec, TopicIds(sid, o.device_id), o.message)
                    for i, sid in enumerate(fleet.ids)
                    for o in view.messages(i, SERVICE_NAME)
                )
                if len(pending) >= _INFLUX_BATCH:
                    writer.write(pending)
                    pending = []
            done += 1
            if on_progress is not None and done % 256 == 0:
                on_progress(done)
            t += step
        if writer is not None and pending:
            writer.write(pending)
    finally:
        if writer is not None:
            writer.close()
    if on_progress is not None:
        on_progress(done)
    return written
