"""Areas for a feeder that has none: cut at regulators and switches, or N balanced subtrees.

An area is a connected part of the radial tree below its root bus down to the next area's root
(feeder.Area). `auto_areas` cuts the tree below every regulator and switch (each such branch's
downstream bus roots an area), then merges areas smaller than `MIN_AREA_NODES` nodes into their
parent; when that leaves fewer than two areas, or `count` asks for it, it cuts the tree into
`count` (default 3) subtrees of about equal node count instead. A file (`--areas` / the
feeder's own `areas`) overrides both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import networkx as nx

from derbus.errors import ConfigError
from voltage_coordinator.feeder import Area, Feeder

MIN_AREA_NODES = 6
"""Cut areas with fewer nodes than this are merged into their parent area."""
DEFAULT_COUNT = 3


def _nodes(feeder: Feeder, bus: str) -> int:
    return len(feeder.bus[bus].phases)


def cut_at_devices(feeder: Feeder) -> list[str]:
    """Root buses: the source, then the downstream bus of every regulator and switch kept."""
    g: nx.DiGraph = feeder.graph
    cuts = {
        child
        for parent, child in g.edges
        if g.edges[parent, child]["branch"].kind in ("regulator", "switch")
    }
    roots = [feeder.source_bus, *[b for b in nx.topological_sort(g) if b in cuts]]
    # merge small areas bottom-up: an area smaller than the minimum joins its parent's
    while True:
        sizes = _area_sizes(feeder, roots)
        small = [r for r in roots[1:] if sizes[r] < MIN_AREA_NODES]
        if not small:
            return roots
        roots.remove(small[-1])


def _area_sizes(feeder: Feeder, roots: list[str]) -> dict[str, int]:
    owner = _owner(feeder, roots)
    sizes = dict.fromkeys(roots, 0)
    for bus, root in owner.items():
        sizes[root] += _nodes(feeder, bus)
    return sizes


def _owner(feeder: Feeder, roots: list[str]) -> dict[str, str]:
    g: nx.DiGraph = feeder.graph
    root_set = set(roots)
    owner: dict[str, str] = {}
    for bus in nx.topological_sort(g):
        parents = list(g.predecessors(bus))
        owner[bus] = bus if bus in root_set or not parents else owner[parents[0]]
    return owner


def balanced(feeder: Feeder, count: int) -> list[str]:
    """Root buses of `count` subtrees of about equal node count.

    Greedy: each cut takes the subtree (what is left of it below earlier cuts) whose node count
    is closest to the remaining nodes over the remaining areas.
    """
    if count < 1:
        raise ConfigError("areas: the number of areas must be at least 1")
    g: nx.DiGraph = feeder.graph
    order = list(nx.topological_sort(g))
    roots: list[str] = []
    for k in range(count - 1):
        cut = set(roots)
        size: dict[str, int] = {}
        for bus in reversed(order):
            below = sum(size[c] for c in g.successors(bus) if c not in cut)
            size[bus] = _nodes(feeder, bus) + below
        left = size[feeder.source_bus]
        target = left / (count - k)
        candidates = [b for b in order if b != feeder.source_bus and b not in cut]
        if not candidates:
            break
        roots.append(min(candidates, key=lambda b: abs(size[b] - target)))
    position = {b: i for i, b in enumerate(order)}
    return [feeder.source_bus, *sorted(roots, key=position.__getitem__)]


def auto_areas(feeder: Feeder, count: int = 0) -> dict[str, str]:
    """Area id -> root bus: cut at regulators and switches, else `count` balanced subtrees."""
    roots = balanced(feeder, count) if count else cut_at_devices(feeder)
    if len(roots) < 2 and not count:
        roots = balanced(feeder, DEFAULT_COUNT)
    return {f"area{i + 1}": root for i, root in enumerate(roots)}


def read_areas(path: Path) -> dict[str, str]:
    """An areas file: JSON object area id -> root bus (raises ConfigError)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"areas file {path}: {err}") from err
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"areas file {path}: expected an object area id -> root bus name")
    return {str(k): v for k, v in raw.items()}


def with_areas(feeder: Feeder, areas: Mapping[str, str]) -> Feeder:
    """The feeder with these areas (checked: the source roots one, every root is a bus)."""
    data = feeder.model_dump(exclude={"areas"})
    data["areas"] = [Area(id=k, root_bus=v).model_dump() for k, v in areas.items()]
    try:
        out = Feeder.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"areas: {err}") from err
    out.area_of()
    return out
