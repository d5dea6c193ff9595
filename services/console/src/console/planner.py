"""The neighbourhood planner's editor: form fields <-> a scenario, error placement, results CSV.

The editor is one HTML form; every field is named by its path in the scenario with `-`
(`houses-0-connection_limit_kw`, `houses-0-devices-1-profile_kw`, `jobs-2-latest_start`).
The load manager validates scenarios and runs them (`/planner/check`, `/planner/simulate`); its
422 `loc` paths map back onto these names so each message is shown next to its field.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from derbus.jsonfile import write_json
from derbus.topics import validate_id

LIST_FIELDS = ("pv_kw", "base_kw", "profile_kw")
RUN_FIELDS = ("algorithm", "runs", "seed", "pv_variation_pct", "window_jitter_steps")
NUMBER_FIELDS = (
    "hours",
    "step_s",
    "neighbourhood_limit_kw",
    "connection_limit_kw",
    "profile_step_s",
    "runs",
    "seed",
    "pv_variation_pct",
    "window_jitter_steps",
)
"""Form fields sent as JSON numbers when they read as one (the load manager takes JSON types
strictly); anything else is sent as typed, for the load manager to name what is wrong."""


def as_number(raw: str) -> Any:
    """`raw` as an int or a finite float when it reads as one, else unchanged."""
    text = raw.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return raw
    return value if math.isfinite(value) else raw


def run_fields(form: Mapping[str, str]) -> dict[str, Any]:
    """The simulation request's own fields (algorithm and variation), numbers as numbers."""
    return {
        k: as_number(form.get(k, "")) if k in NUMBER_FIELDS else form.get(k, "") for k in RUN_FIELDS
    }


PV_DEFAULT_KW = [0.0] * 7 + [0.5, 1.5, 2.5, 3.2, 3.6, 3.6, 3.2, 2.5, 1.5, 0.5] + [0.0] * 7
"""A clear summer day on a 4 kWp roof, hourly kW from midnight."""
BASE_DEFAULT_KW = [0.3] * 7 + [0.6, 0.5, 0.4, 0.4, 0.5, 0.6, 0.4, 0.4, 0.5, 0.8, 1.0] + [0.9] * 6
DEVICE_DEFAULT_KW = [2.0, 2.0, 0.3, 0.3, 1.5, 0.2]
"""A washing machine: heating, washing, spinning (kW per 15 min)."""


def _num_list(text: str) -> list[float]:
    values = [float(x) for x in re.split(r"[\s,;]+", text.strip()) if x]
    if any(not math.isfinite(v) for v in values):
        raise ValueError("not finite")
    return values


def _list_text(values: list[float] | None) -> str:
    return ", ".join(f"{v:g}" for v in values or [])


def _utc(text: str) -> str:
    """A `datetime-local` value (no zone) read as UTC; values with a zone pass unchanged."""
    text = text.strip()
    if text and not re.search(r"(Z|[+-]\d\d:?\d\d)$", text):
        return text + ("Z" if len(text) > 16 else ":00Z")
    return text


def _local(value: str) -> str:
    """An ISO time as a `datetime-local` value in UTC (`2026-06-01T06:00`)."""
    if not value:
        return ""
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when.strftime("%Y-%m-%dT%H:%M")


def form_to_scenario(form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The scenario the form describes, and the fields the console itself could not read.

    Numbers that read as one are sent as JSON numbers, others as typed for the load manager to
    validate (it names what is wrong); number lists are parsed here and an unreadable one is
    reported under its own field name.
    """
    errors: dict[str, str] = {}
    tree: dict[str, Any] = {}
    for name, raw in form.items():
        parts = name.split("-")
        if parts[0] not in (
            "name",
            "start",
            "hours",
            "neighbourhood_limit_kw",
            "shared_pv",
            "houses",
            "jobs",
        ):
            continue
        value: Any = raw
        if parts[-1] in LIST_FIELDS:
            try:
                value = _num_list(raw)
            except ValueError:
                errors[name] = "a list of numbers (kW), separated by commas"
                value = []
        elif parts[-1] in ("start", "earliest_start", "latest_start"):
            value = _utc(raw)
        elif parts[-1] in NUMBER_FIELDS:
            value = as_number(raw)
        node: Any = tree
        for key, nxt in zip(parts, [*parts[1:], None], strict=True):
            k: Any = int(key) if key.isdigit() else key
            if nxt is None:
                node[k] = value
            else:
                node = node.setdefault(k, {})
    scenario: dict[str, Any] = {k: v for k, v in tree.items() if k not in ("houses", "jobs")}
    scenario["shared_pv"] = form.get("shared_pv") in ("on", "true", "1")
    if not str(scenario.get("neighbourhood_limit_kw", "")).strip():
        scenario.pop("neighbourhood_limit_kw", None)
    scenario["houses"] = []
    for _, house in sorted(tree.get("houses", {}).items()):
        devices = [d for _, d in sorted(house.pop("devices", {}).items())]
        scenario["houses"].append({**house, "devices": devices})
    scenario["jobs"] = [j for _, j in sorted(tree.get("jobs", {}).items())]
    for job in scenario["jobs"]:
        if not job.get("profile_kw"):  # no own profile: the device's
            job.pop("profile_kw", None)
    return scenario, errors


def scenario_to_fields(scenario: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario as the editor's template needs it (lists as text, times for inputs)."""
    return {
        "name": scenario.get("name", ""),
        "start": _local(str(scenario.get("start", ""))),
        "hours": scenario.get("hours", 24),
        "neighbourhood_limit_kw": scenario.get("neighbourhood_limit_kw") or "",
        "shared_pv": bool(scenario.get("shared_pv", True)),
        "houses": [
            {
                "house_id": h.get("house_id", ""),
                "connection_limit_kw": h.get("connection_limit_kw", 9.2),
                "pv_kw": _list_text(h.get("pv_kw"))
                if isinstance(h.get("pv_kw"), list)
                else h.get("pv_kw", ""),
                "base_kw": _list_text(h.get("base_kw"))
                if isinstance(h.get("base_kw"), list)
                else h.get("base_kw", ""),
                "devices": [
                    {
                        "device_id": d.get("device_id", ""),
                        "type": d.get("type", "appliance"),
                        "profile_kw": _list_text(d.get("profile_kw"))
                        if isinstance(d.get("profile_kw"), list)
                        else d.get("profile_kw", ""),
                    }
                    for d in h.get("devices", [])
                ],
            }
            for h in scenario.get("houses", [])
        ],
        "jobs": [
            {
                "job_id": j.get("job_id", ""),
                "house_id": j.get("house_id", ""),
                "device_id": j.get("device_id", ""),
                "earliest_start": _local(str(j.get("earliest_start", ""))),
                "latest_start": _local(str(j.get("latest_start", ""))),
                "profile_kw": _list_text(j.get("profile_kw"))
                if isinstance(j.get("profile_kw"), list)
                else "",
            }
            for j in scenario.get("jobs", [])
        ],
    }


def new_scenario(start: str) -> dict[str, Any]:
    """An empty neighbourhood starting at `start` (ISO UTC, from the page's date field)."""
    return {
        "name": "my-street",
        "start": start,
        "hours": 24,
        "shared_pv": True,
        "houses": [],
        "jobs": [],
    }


def _free_id(items: list[dict[str, Any]], key: str, prefix: str) -> str:
    """`<prefix>-<n>` for the first n from len(items) + 1 that no item's `key` holds."""
    taken = {item.get(key) for item in items}
    n = len(items) + 1
    while f"{prefix}-{n}" in taken:
        n += 1
    return f"{prefix}-{n}"


def add_house(scenario: dict[str, Any]) -> None:
    """Append a house with a default PV prediction, base load and one washing machine."""
    scenario["houses"].append(
        {
            "house_id": _free_id(scenario["houses"], "house_id", "house"),
            "connection_limit_kw": 9.2,
            "pv_kw": list(PV_DEFAULT_KW),
            "base_kw": list(BASE_DEFAULT_KW),
            "devices": [
                {
                    "device_id": "washing_machine",
                    "type": "washing_machine",
                    "profile_kw": list(DEVICE_DEFAULT_KW),
                }
            ],
        }
    )


def add_device(scenario: dict[str, Any], house: int) -> None:
    """Append a device (dishwasher profile) to a house."""
    devices = scenario["houses"][house]["devices"]
    devices.append(
        {
            "device_id": f"device-{len(devices) + 1}",
            "type": "dishwasher",
            "profile_kw": [1.8, 1.8, 0.2, 0.2, 1.5],
        }
    )


def add_job(scenario: dict[str, Any], house: int) -> None:
    """Append a job for a house's first device, window 06:00-18:00 of the scenario's day."""
    h = scenario["houses"][house]
    device = h["devices"][0]["device_id"] if h["devices"] else ""
    day = str(scenario.get("start", ""))[:10]
    scenario["jobs"].append(
        {
            "job_id": _free_id(scenario["jobs"], "job_id", "job"),
            "house_id": h["house_id"],
            "device_id": device,
            "earliest_start": f"{day}T06:00:00Z",
            "latest_start": f"{day}T18:00:00Z",
        }
    )


def remove(scenario: dict[str, Any], what: str) -> None:
    """Remove `houses-<i>`, `houses-<i>-devices-<k>` or `jobs-<j>` (out of range is ignored)."""
    parts = what.split("-")
    node: Any = scenario
    try:
        for key in parts[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        index = int(parts[-1])
        if isinstance(node, list) and 0 <= index < len(node):
            node.pop(index)
    except (KeyError, IndexError, ValueError, TypeError):
        return


def field_errors(detail: Any, known: set[str], strip: tuple[str, ...] = ()) -> dict[str, str]:
    """Map a FastAPI 422 `detail` onto form field names (the nearest known one, else `form`)."""
    out: dict[str, str] = {}
    if not isinstance(detail, list):
        return {"form": str(detail)}
    for item in detail:
        loc = [str(p) for p in item.get("loc", []) if p != "body"]
        for prefix in strip:
            if loc and loc[0] == prefix:
                loc = loc[1:]
        name = "form"
        for end in range(len(loc), 0, -1):
            candidate = "-".join(loc[:end])
            if candidate in known:
                name = candidate
                break
        message = str(item.get("msg", "invalid"))
        out[name] = f"{out[name]}; {message}" if name in out else message
    return out


def known_fields(form: Mapping[str, str]) -> set[str]:
    """The editor's field names plus the section names errors may point at."""
    names = set(form) | {"houses", "jobs", "name", "start", "hours"}
    for name in form:
        parts = name.split("-")
        for end in range(1, len(parts)):
            names.add("-".join(parts[:end]))
    return names


def scenario_file(folder: Path, name: str) -> Path:
    """Where a saved scenario lives (the name must be a plain id: ValueError otherwise)."""
    validate_id("scenario name", name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or name.startswith("."):
        raise ValueError("scenario name: letters, digits, '.', '_' and '-' only")
    return folder / f"{name}.json"


def saved_names(folder: Path) -> list[str]:
    """Saved scenarios, by name."""
    return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []


def save(folder: Path, name: str, scenario: dict[str, Any]) -> Path:
    """Write a scenario as JSON (atomically)."""
    path = scenario_file(folder, name)
    write_json(path, scenario)
    return path


def results_csv(results: dict[str, Any]) -> str:
    """One row per run and household (and the neighbourhood) with the figures."""
    out = io.StringIO()
    writer = csv.writer(out)
    cols = ["pv_share", "import_kwh", "peak_kw", "par", "cost"]
    writer.writerow(["run", "seed", "status", "household", "jobs", *cols])
    for run in results.get("runs", []):
        head = [run["run"], run["seed"], run["status"]]
        for house in run.get("households", []):
            writer.writerow([*head, house["house_id"], house["jobs"], *(house[c] for c in cols)])
        if "neighbourhood" in run:
            nb = run["neighbourhood"]
            writer.writerow(
                [*head, "(neighbourhood)", len(run.get("jobs", [])), *(nb[c] for c in cols)]
            )
    return out.getvalue()
