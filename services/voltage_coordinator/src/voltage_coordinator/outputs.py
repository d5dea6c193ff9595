"""The decisions as files: one JSON per area with the setpoints decided for its PVs.

Written after every published decision to `<data dir>/voltage_coordinator/<feeder>/setpoints/
<area>.json` (atomically: a reader never sees half a file), like the per-agent output files of
the DEC; the voltage and curtailment plots are `GET /plot.png`, `voltage-coordinator plot` and
the bench's day plots.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from voltage_coordinator.coordinator import Decision
from voltage_coordinator.feeder import Feeder


def area_setpoints(
    feeder: Feeder, decision: Decision, ts: str, rule: str
) -> dict[str, dict[str, Any]]:
    """Per area (the feeder as one area when it declares none): what was decided for its PVs."""
    owner = feeder.area_of() or {b.name: feeder.feeder_id for b in feeder.buses}
    cut = decision.curtailment
    out: dict[str, dict[str, Any]] = {}
    for pv in feeder.pvs:
        area = owner[pv.bus]
        doc = out.setdefault(
            area,
            {
                "feeder_id": feeder.feeder_id,
                "area_id": area,
                "ts": ts,
                "step": decision.step,
                "method": decision.method,
                "rule": rule,
                "pvs": {},
            },
        )
        doc["pvs"][pv.id] = {
            "bus": pv.bus,
            "available_kw": round(cut.available_kw.get(pv.id, 0.0), 4),
            "limit_kw": decision.limits_kw.get(pv.id, pv.rating_kw),
            "curtailed_fraction": round(cut.fraction.get(pv.id, 0.0), 6),
        }
    for doc in out.values():
        doc["curtailed_kw"] = round(
            sum(p["available_kw"] * p["curtailed_fraction"] for p in doc["pvs"].values()), 4
        )
    return out


def write_area_files(directory: Path, docs: dict[str, dict[str, Any]]) -> list[Path]:
    """Write `<area>.json` per area atomically; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for area, doc in docs.items():
        path = directory / f"{area}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        paths.append(path)
    return paths
