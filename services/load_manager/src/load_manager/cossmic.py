"""Import of CoSSMic-style scenarios: neighbourhood XML, jobs CSV or XML, cumulative-Wh profiles.

Formats (see the README for examples):

* neighbourhood XML: `<neighbourhood id limit_kw?>` holding `<house id connection_limit_kw?>`
  elements, each holding `<device id type/>` elements.
* jobs CSV: header `house,device,job_id,est,lst,profile`; `est`/`lst` are ISO 8601 times with a
  zone (`2026-06-01T08:00:00Z`) or Unix seconds; `profile` is a profile file path relative to
  the jobs file.
* jobs XML: `<jobs>` holding `<job id house device est lst profile/>` elements.
* profile CSV: header `time_s,cumulative_wh`; the time from the job's start, s, and the energy the
  appliance has used since its start, Wh (non-decreasing).

Every problem raises `ConfigError` naming the file and line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.parsers import expat

from pydantic import ValidationError

from derbus.errors import ConfigError
from derbus.messages import JobRequest
from load_manager.profiles import profile_from_cumulative
from load_manager.settings import HouseConfig

JOB_COLUMNS = ("house", "device", "job_id", "est", "lst", "profile")


@dataclass
class _Element:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Element] = field(default_factory=list)


def _parse_xml(path: Path) -> _Element:
    """A minimal element tree that remembers each element's line (for error messages)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    parser = expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        element = _Element(tag, dict(attrs), parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise ConfigError(
            f"{path}:{err.lineno}: malformed XML: {expat.ErrorString(err.code)}"
        ) from err
    return roots[0]


def _need(element: _Element, path: Path, name: str) -> str:
    value = element.attrs.get(name, "").strip()
    if not value:
        raise ConfigError(f"{path}:{element.line}: <{element.tag}> lacks the attribute {name!r}")
    return value


def _children(parent: _Element, path: Path, tag: str) -> Iterator[_Element]:
    """The children of `parent`, each of which must be a <tag>."""
    for element in parent.children:
        if element.tag != tag:
            raise ConfigError(
                f"{path}:{element.line}: unexpected <{element.tag}> (expected <{tag}>)"
            )
        yield element


def _children_by_id(parent: _Element, path: Path, tag: str) -> Iterator[tuple[_Element, str]]:
    """The <tag> children of `parent` with their `id`s, which must be there and unique."""
    seen: set[str] = set()
    for element in _children(parent, path, tag):
        element_id = _need(element, path, "id")
        if element_id in seen:
            raise ConfigError(f"{path}:{element.line}: duplicate {tag} id {element_id!r}")
        seen.add(element_id)
        yield element, element_id


def _float(element: _Element, path: Path, name: str) -> float | None:
    raw = element.attrs.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as err:
        raise ConfigError(f"{path}:{element.line}: {name}={raw!r} is not a number") from err
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}:{element.line}: {name}={raw!r} must be a positive number")
    return value


@dataclass(frozen=True)
class Neighbourhood:
    """Houses (with their devices and limits) sharing PV, and the neighbourhood's own limit."""

    neighbourhood_id: str
    houses: tuple[HouseConfig, ...]
    limit_kw: float | None = None


def load_neighbourhood(path: Path) -> Neighbourhood:
    """Read a neighbourhood XML file (raises ConfigError naming the line)."""
    root = _parse_xml(path)
    if root.tag != "neighbourhood":
        raise ConfigError(
            f"{path}:{root.line}: root element must be <neighbourhood>, not <{root.tag}>"
        )
    houses: list[HouseConfig] = []
    for el, house_id in _children_by_id(root, path, "house"):
        devices = {
            device_id: _need(dev, path, "type")
            for dev, device_id in _children_by_id(el, path, "device")
        }
        limit = _float(el, path, "connection_limit_kw")
        try:
            houses.append(
                HouseConfig(
                    house_id=house_id,
                    devices=devices,
                    **({"connection_limit_kw": limit} if limit is not None else {}),
                )
            )
        except ValidationError as err:
            raise ConfigError(f"{path}:{el.line}: {err.errors()[0]['msg']}") from err
    if not houses:
        raise ConfigError(f"{path}:{root.line}: <neighbourhood> has no <house>")
    return Neighbourhood(
        neighbourhood_id=root.attrs.get("id", path.stem),
        houses=tuple(houses),
        limit_kw=_float(root, path, "limit_kw"),
    )


def parse_time(raw: str) -> datetime:
    """An ISO 8601 time with a zone, or Unix seconds, as an aware UTC datetime."""
    text = raw.strip()
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone (add Z or an offset)")
    return value.astimezone(UTC)


def load_profile(path: Path, step_s: int) -> list[float]:
    """Read a `time_s,cumulative_wh` profile as power per step, kW (ConfigError naming the line)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read profile: {err.strerror}") from err
    reader = csv.reader(text.splitlines())
    points: list[tuple[float, float]] = []
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != ["time_s", "cumulative_wh"]:
        raise ConfigError(f"{path}:1: header must be 'time_s,cumulative_wh', got {header}")
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 2:
            raise ConfigError(f"{path}:{line}: expected 2 columns, got {len(row)}")
        try:
            t, e = float(row[0]), float(row[1])
        except ValueError as err:
            raise ConfigError(f"{path}:{line}: not a number in {row}") from err
        if not (math.isfinite(t) and math.isfinite(e)) or e < 0:
            raise ConfigError(f"{path}:{line}: values must be finite, cumulative_wh >= 0")
        if points and t <= points[-1][0]:
            raise ConfigError(f"{path}:{line}: time_s {row[0]} does not increase")
        if points and e < points[-1][1]:
            raise ConfigError(f"{path}:{line}: cumulative_wh {row[1]} decreases")
        points.append((t, e))
    if len(points) < 2:
        raise ConfigError(f"{path}: a profile needs at least two points")
    return profile_from_cumulative(points, step_s)


def _job(
    fields: dict[str, str],
    where: str,
    base_dir: Path,
    step_s: int,
    profiles: dict[Path, list[float]],
) -> JobRequest:
    try:
        est = parse_time(fields["est"])
        lst = parse_time(fields["lst"])
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from err
    profile_path = (base_dir / fields["profile"]).resolve()
    if profile_path not in profiles:
        profiles[profile_path] = load_profile(profile_path, step_s)
    try:
        return JobRequest(
            ts=est,
            source="cossmic-import",
            job_id=fields["job_id"],
            house_id=fields["house"],
            device_id=fields["device"],
            earliest_start=est,
            latest_start=lst,
            profile_kw=profiles[profile_path],
            step_s=step_s,
        )
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {loc + ': ' if loc else ''}{first['msg']}") from err


def load_jobs(
    path: Path, step_s: int = 60, neighbourhood: Neighbourhood | None = None
) -> list[JobRequest]:
    """Read jobs from CSV or XML (by suffix) with their profiles.

    Args:
        path: the jobs file.
        step_s: step of the profiles produced, s.
        neighbourhood: when given, each job's house and device must exist in it.

    Raises:
        ConfigError: naming the file and line of the first problem.
    """
    profiles: dict[Path, list[float]] = {}
    rows: list[tuple[str, dict[str, str]]] = []
    if path.suffix.lower() == ".xml":
        root = _parse_xml(path)
        if root.tag != "jobs":
            raise ConfigError(f"{path}:{root.line}: root element must be <jobs>, not <{root.tag}>")
        for el in _children(root, path, "job"):
            rows.append(
                (
                    f"{path}:{el.line}",
                    {
                        "job_id": _need(el, path, "id"),
                        "house": _need(el, path, "house"),
                        "device": _need(el, path, "device"),
                        "est": _need(el, path, "est"),
                        "lst": _need(el, path, "lst"),
                        "profile": _need(el, path, "profile"),
                    },
                )
            )
    else:
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
        reader = csv.reader(text.splitlines())
        header = [h.strip() for h in next(reader, [])]
        if header != list(JOB_COLUMNS):
            raise ConfigError(f"{path}:1: header must be {','.join(JOB_COLUMNS)}, got {header}")
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(JOB_COLUMNS):
                raise ConfigError(f"{where}: expected {len(JOB_COLUMNS)} columns, got {len(row)}")
            values = dict(zip(JOB_COLUMNS, (c.strip() for c in row), strict=True))
            empty = [k for k, v in values.items() if not v]
            if empty:
                raise ConfigError(f"{where}: empty {', '.join(empty)}")
            rows.append((where, values))
    jobs: list[JobRequest] = []
    seen: set[str] = set()
    for where, values in rows:
        if values["job_id"] in seen:
            raise ConfigError(f"{where}: duplicate job_id {values['job_id']!r}")
        seen.add(values["job_id"])
        if neighbourhood is not None:
            _check_member(neighbourhood, values, where)
        jobs.append(_job(values, where, path.parent, step_s, profiles))
    return jobs


def _check_member(hood: Neighbourhood, values: dict[str, Any], where: str) -> None:
    houses = {h.house_id: h for h in hood.houses}
    house = houses.get(values["house"])
    if house is None:
        raise ConfigError(f"{where}: house {values['house']!r} is not in the neighbourhood")
    if house.devices and values["device"] not in house.devices:
        raise ConfigError(f"{where}: house {values['house']!r} has no device {values['device']!r}")
