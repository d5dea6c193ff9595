"""The feeder format (buses, 3x3 branches, loads and PVs per phase, areas, day profiles) and its graph.

A feeder is a radial three-phase primary network. Powers are per phase in kW / kvar; loads are
consumption (> 0), PV ratings are generation (> 0, they enter balances as negative load).
Impedances are the 3x3 phase-frame series matrices in ohm. The source bus is held at
`source_v_pu`; regulators are ideal per-phase transformers with a fixed tap ratio.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from derbus.errors import ConfigError

FEEDER_DEVICE = "feeder"
"""The device level of a feeder's own topics (its state, its acks)."""
COORDINATOR_DEVICE = "coordinator"
"""The device level and area id under which the coordinator publishes."""
PHASES: tuple[str, ...] = ("a", "b", "c")
Phase = Literal["a", "b", "c"]
FORMAT = "derbus-feeder/1"


def phase_index(phase: str) -> int:
    """0, 1, 2 for phases a, b, c."""
    return PHASES.index(phase)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Bus(_Frozen):
    """A bus: its phases and its constant-power load per phase (kW, kvar, consumption > 0).

    `shunt_kvar` is fixed reactive generation per phase (capacitors; not scaled by the load
    profile); `base_kv_ln` the bus's own line-to-neutral base when the feeder has several
    voltage levels (None: the feeder's `base_kv_ln`).
    """

    name: str
    phases: list[Phase]
    load_kw: dict[Phase, float] = Field(default_factory=dict)
    load_kvar: dict[Phase, float] = Field(default_factory=dict)
    shunt_kvar: dict[Phase, float] = Field(default_factory=dict)
    base_kv_ln: float | None = Field(default=None, gt=0)


BranchKind = Literal["line", "switch", "regulator", "transformer"]


class Branch(_Frozen):
    """A series element from `from_bus` to `to_bus` (the source side first).

    `r_ohm` / `x_ohm` are full 3x3 phase-frame matrices (rows/columns a, b, c; zero where a phase
    is absent), in ohm on the `to_bus` side. A regulator or transformer has `tap` = V_to / V_from
    per phase in per unit of the two buses' bases (1 when the ratio is the nominal one); its
    impedance is its leakage impedance referred to the `to_bus` side.
    """

    name: str
    kind: BranchKind
    from_bus: str
    to_bus: str
    phases: list[Phase]
    r_ohm: list[list[float]] = Field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])
    x_ohm: list[list[float]] = Field(default_factory=lambda: [[0.0] * 3 for _ in range(3)])
    normally_open: bool = False
    tap: dict[Phase, float] = Field(default_factory=dict)


class Pv(_Frozen):
    """A PV system at a bus; `kw` is its nameplate generation per phase (kW, > 0)."""

    id: str
    bus: str
    kw: dict[Phase, float]

    @property
    def rating_kw(self) -> float:
        """Total nameplate, kW."""
        return sum(self.kw.values())


class Area(_Frozen):
    """An area of the feeder: every bus below `root_bus` down to the next area's root."""

    id: str
    root_bus: str


class Profiles(_Frozen):
    """Day profiles: multipliers of the nominal loads and of the PV nameplates, per interval."""

    interval_s: int = 900
    load: list[float]
    pv: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Profiles:
        if len(self.load) != len(self.pv) or not self.load:
            raise ValueError("profiles.load and profiles.pv must have the same, non-zero length")
        return self


class Feeder(_Frozen):
    """A feeder in derbus's own format (`derbus-feeder/1`), loaded from or saved to JSON."""

    format: str = FORMAT
    feeder_id: str
    attribution: str = ""
    base_kv_ln: float = Field(gt=0, description="line-to-neutral base voltage, kV")
    source_bus: str
    source_v_pu: float = Field(default=1.0, gt=0.5, lt=1.5)
    buses: list[Bus]
    branches: list[Branch]
    pvs: list[Pv]
    areas: list[Area] = Field(default_factory=list)
    profiles: Profiles

    @model_validator(mode="after")
    def _consistent(self) -> Feeder:
        names = {b.name for b in self.buses}
        if len(names) != len(self.buses):
            raise ValueError("buses: duplicate bus names")
        if self.source_bus not in names:
            raise ValueError(f"source_bus: {self.source_bus!r} is not a bus")
        for br in self.branches:
            for end in (br.from_bus, br.to_bus):
                if end not in names:
                    raise ValueError(f"branches: {br.name} ends at unknown bus {end!r}")
        for pv in self.pvs:
            if pv.bus not in names:
                raise ValueError(f"pvs: {pv.id} at unknown bus {pv.bus!r}")
        if len({p.id for p in self.pvs}) != len(self.pvs):
            raise ValueError("pvs: duplicate PV ids")
        for area in self.areas:
            if area.root_bus not in names:
                raise ValueError(f"areas: {area.id} rooted at unknown bus {area.root_bus!r}")
        return self

    # --- derived views -------------------------------------------------------------------
    @cached_property
    def bus(self) -> dict[str, Bus]:
        """Buses by name."""
        return {b.name: b for b in self.buses}

    @cached_property
    def in_service(self) -> list[Branch]:
        """Branches that are closed (normally-open switches left out)."""
        return [b for b in self.branches if not b.normally_open]

    @cached_property
    def graph(self) -> nx.DiGraph:
        """The radial tree oriented away from the source (edges carry `branch`)."""
        return radial_tree(self)

    @property
    def total_pv_kw(self) -> float:
        """Nameplate PV of the feeder, kW."""
        return sum(p.rating_kw for p in self.pvs)

    @property
    def total_load_kw(self) -> float:
        """Nominal load of the feeder, kW."""
        return sum(sum(b.load_kw.values()) for b in self.buses)

    @property
    def steps(self) -> int:
        """Number of intervals in the day profiles."""
        return len(self.profiles.load)

    def kv_ln(self, bus: str) -> float:
        """Line-to-neutral base of a bus, kV."""
        own = self.bus[bus].base_kv_ln
        return own if own is not None else self.base_kv_ln

    def area_of(self) -> dict[str, str]:
        """Area id of every bus (empty when the feeder declares no areas)."""
        if not self.areas:
            return {}
        roots = {a.root_bus: a.id for a in self.areas}
        if self.source_bus not in roots:
            raise ConfigError(f"areas: the source bus {self.source_bus} must root an area")
        owner: dict[str, str] = {}
        for bus in nx.topological_sort(self.graph):
            parents = list(self.graph.predecessors(bus))
            owner[bus] = roots.get(bus) or owner[parents[0]]
        return owner

    # --- I/O -----------------------------------------------------------------------------
    def to_json(self) -> str:
        """Serialise (stable, indented)."""
        return self.model_dump_json(indent=1, exclude={"bus", "in_service", "graph"})

    @classmethod
    def load(cls, path: Path | str) -> Feeder:
        """Read a feeder JSON file (raises ConfigError with the reason)."""
        try:
            return cls.model_validate_json(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"feeder file {path}: {err}") from err


def bundled_feeder(name: str = "ieee123") -> Feeder:
    """A feeder shipped with the package (`feeders/<name>.json`)."""
    ref = resources.files("voltage_coordinator") / "feeders" / f"{name}.json"
    return Feeder.model_validate_json(ref.read_text())


def radial_tree(feeder: Feeder) -> nx.DiGraph:
    """Orient the in-service branches away from the source; raise ConfigError if not radial."""
    undirected = nx.Graph()
    undirected.add_nodes_from(b.name for b in feeder.buses)
    for br in feeder.in_service:
        if undirected.has_edge(br.from_bus, br.to_bus):
            raise ConfigError(f"branches: parallel branches between {br.from_bus} and {br.to_bus}")
        undirected.add_edge(br.from_bus, br.to_bus, branch=br)
    if not nx.is_tree(undirected):
        parts = nx.number_connected_components(undirected)
        fed = nx.node_connected_component(undirected, feeder.source_bus)
        cut_off = sorted(set(undirected) - fed)
        if cut_off:
            where = f"; not connected to the source: {', '.join(cut_off[:8])}"
        else:
            loop = nx.find_cycle(undirected, feeder.source_bus)
            where = f"; a loop through {', '.join(str(a) for a, _ in loop[:8])}"
        raise ConfigError(
            f"branches: the closed network is not radial "
            f"({undirected.number_of_edges()} branches, {len(feeder.buses)} buses, "
            f"{parts} connected parts{where})"
        )
    tree = nx.bfs_tree(undirected, feeder.source_bus)
    for parent, child in tree.edges:
        br = undirected.edges[parent, child]["branch"]
        tree.edges[parent, child]["branch"] = br
        missing = set(br.phases) - set(feeder.bus[child].phases)
        if missing or not set(br.phases) <= set(feeder.bus[parent].phases):
            raise ConfigError(f"branches: {br.name} carries phases its buses do not have")
    for bus in feeder.buses:
        if bus.name == feeder.source_bus:
            continue
        (parent,) = tree.predecessors(bus.name)
        br = tree.edges[parent, bus.name]["branch"]
        if set(bus.phases) - set(br.phases):
            raise ConfigError(f"buses: {bus.name} has phases its supply branch {br.name} lacks")
    return tree


# --- converter from the GridAPPS-D DEC JSON files ----------------------------------------------

DEC_ATTRIBUTION = (
    "IEEE 123-node test feeder (primary), as prepared by the GridAPPS-D "
    "distributed-energy-coordinator project, BSD 2-Clause, Copyright (c) 2021, GridAPPS-D. "
    "Converted to derbus-feeder/1 by `voltage-coordinator convert`."
)
DEFAULT_AREAS = {"area1": "150", "area2": "135", "area3": "152", "area4": "160", "area5": "197"}
"""The switch-delimited areas of IEEE 123 (sw3 18-135, sw2 13-152, sw4 60-160, sw5 97-197)."""


def _phases(codes: Iterable[object]) -> list[Phase]:
    out: list[Phase] = []
    for code in codes:
        idx = int(str(code)) - 1
        if idx not in (0, 1, 2):
            raise ConfigError(f"unknown phase code {code!r}")
        out.append(PHASES[idx])  # type: ignore[arg-type]
    return sorted(set(out), key=phase_index)


def read_shape(path: Path) -> list[float]:
    """One multiplier per line of a CSV file (the last column), e.g. a day of 15-min steps."""
    values = [float(line.split(",")[-1]) for line in path.read_text().split() if line.strip()]
    if not values:
        raise ConfigError(f"{path}: empty profile")
    return values


def convert_dec(
    bus_info: Path,
    branch_info: Path,
    load_shape: Path,
    pv_shape: Path,
    *,
    feeder_id: str = "ieee123",
    source_bus: str = "150",
    source_v_pu: float = 1.0475,
    normally_open: Iterable[str] = ("sw7", "sw8"),
    areas: dict[str, str] | None = None,
    attribution: str = DEC_ATTRIBUTION,
) -> Feeder:
    """Convert the DEC's `bus_info` / `branch_sw_xfmr` JSON and 15-min shapes into a Feeder.

    Args:
        bus_info: bus -> {kv, phases, pq: [[W, var]]x3, pv: [[W, var]]x3}.
        branch_info: branch -> {type LINE|XFMR, phases, fr_bus, to_bus, zprim 3x3 [re, im] ohm}.
        load_shape: one load multiplier per line (the day, 15-min steps).
        pv_shape: one PV multiplier per line.
        feeder_id: id of the feeder (the topic site level).
        source_bus: the substation bus.
        source_v_pu: substation voltage, pu (the DEC used 1.0475).
        normally_open: switches left open so the network is radial.
        areas: area id -> root bus (default: the five switch-delimited IEEE 123 areas).
        attribution: data source and licence, kept in the converted file.
    """
    raw_bus = json.loads(bus_info.read_text())
    raw_branch = json.loads(branch_info.read_text())
    kvs = {round(float(v["kv"]), 6) for v in raw_bus.values()}
    if len(kvs) != 1:
        raise ConfigError(f"bus_info: one primary voltage level expected, got {sorted(kvs)}")
    buses: list[Bus] = []
    pvs: list[Pv] = []
    for name, info in sorted(raw_bus.items(), key=lambda kv: int(kv[1]["idx"])):
        phases = _phases(info["phases"])
        load_kw = {ph: info["pq"][phase_index(ph)][0] / 1000 for ph in phases}
        load_kvar = {ph: info["pq"][phase_index(ph)][1] / 1000 for ph in phases}
        pv_kw = {ph: info["pv"][phase_index(ph)][0] / 1000 for ph in phases}
        buses.append(
            Bus(
                name=name,
                phases=phases,
                load_kw={k: v for k, v in load_kw.items() if v},
                load_kvar={k: v for k, v in load_kvar.items() if v},
            )
        )
        if any(pv_kw.values()):
            pvs.append(Pv(id=f"pv{name}", bus=name, kw={k: v for k, v in pv_kw.items() if v}))
    bus_phases = {b.name: set(b.phases) for b in buses}
    open_set = set(normally_open)
    branches: list[Branch] = []
    for name, info in sorted(raw_branch.items(), key=lambda kv: int(kv[1]["idx"])):
        fr, to = info["fr_bus"], info["to_bus"]
        # the DEC lists every regulator as three-phase; keep the phases both buses really have
        phases = [p for p in _phases(info["phases"]) if p in bus_phases[fr] & bus_phases[to]]
        z = info["zprim"]
        kind: BranchKind
        if info["type"] == "XFMR":
            kind = "regulator"
        elif name.startswith("sw"):
            kind = "switch"
        else:
            kind = "line"
        keep = {phase_index(p) for p in phases}
        r = [[z[i][j][0] if i in keep and j in keep else 0.0 for j in range(3)] for i in range(3)]
        x = [[z[i][j][1] if i in keep and j in keep else 0.0 for j in range(3)] for i in range(3)]
        branches.append(
            Branch(
                name=name,
                kind=kind,
                from_bus=fr,
                to_bus=to,
                phases=phases,
                r_ohm=r,
                x_ohm=x,
                normally_open=name in open_set,
                tap=dict.fromkeys(phases, 1.0) if kind == "regulator" else {},
            )
        )
    feeder = Feeder(
        feeder_id=feeder_id,
        attribution=attribution,
        base_kv_ln=kvs.pop(),
        source_bus=source_bus,
        source_v_pu=source_v_pu,
        buses=buses,
        branches=branches,
        pvs=pvs,
        areas=[Area(id=k, root_bus=v) for k, v in (areas or DEFAULT_AREAS).items()],
        profiles=Profiles(load=read_shape(load_shape), pv=read_shape(pv_shape)),
    )
    feeder.area_of()  # checks radiality and the area roots
    return feeder
