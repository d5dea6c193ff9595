"""Historical backfill: simulate a past range and write one JSON record per site and step (JSONL).

Without InfluxDB the range is computed in chunks of steps at once (`series.run_series`); with
`enable_influxdb` (which needs the typed messages of every step) it steps the fleet one step at
a time as the service does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO, Any

from derbus.messages import format_utc
from derbus.topics import TopicIds
from edge_simulator.fleet import Fleet
from edge_simulator.output import StepView, record
from edge_simulator.series import run_series, step_times
from edge_simulator.settings import Settings
from edge_simulator.sim_config import SimConfig
from edge_simulator.simulator import SERVICE_NAME, build_fleet

_INFLUX_BATCH = 5000
_CHUNK_SITE_STEPS = 20_000
"""Site-steps computed at once by the bulk path (bounds its memory, ~10 kB per site-step)."""
_PERIODS = ("off_peak", "shoulder", "peak")


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
    if not settings.enable_influxdb:
        return _bulk(fleet, start, end, settings.interval_s, out, on_progress)
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


def _bulk(
    fleet: Fleet,
    start: datetime,
    end: datetime,
    dt_s: float,
    out: IO[str],
    on_progress: Callable[[int], None] | None,
) -> int:
    """The backfill in chunks of steps computed at once (see `series`)."""
    times = step_times(start, end, dt_s)
    fleet.reset_clock(start - timedelta(seconds=dt_s))
    chunk = max(1, _CHUNK_SITE_STEPS // fleet.n_sites)
    feed_in = fleet.tariff.feed_in_per_kwh
    demand = fleet.tariff.demand_charge_per_kw
    dumps = json.JSONEncoder(check_circular=False).encode
    written = 0
    for first in range(0, len(times), chunk):
        part = times[first : first + chunk]
        cols = run_series(fleet, part, dt_s)
        ts_text = [format_utc(t) for t in part]
        clear = cols["clear_sky_w_m2"].tolist()
        tou = [_PERIODS[int(p)] for p in cols["tou_period_index"]]
        per_site = []
        for i, sid in enumerate(fleet.ids):
            lists = {k: v[:, i].tolist() for k, v in cols.items() if v.ndim == 2}
            per_site.append((sid, lists.__getitem__))
        lines = [
            dumps(record(g, k, sid, ts_text[k], clear[k], feed_in, tou[k], demand))
            for k in range(len(part))
            for sid, g in per_site
        ]
        out.write("\n".join(lines) + "\n")
        written += len(lines)
        if on_progress is not None:
            on_progress(first + len(part))
    return written
