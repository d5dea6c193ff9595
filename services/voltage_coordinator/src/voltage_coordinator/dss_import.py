"""An OpenDSS model in, a derbus feeder out (`voltage-coordinator import-dss MASTER.dss`).

The model is compiled and solved by OpenDSS itself (opendssdirect), so the importer reads what
the engine understood, not the script text: buses with their phases and voltage bases, lines
(3x3 phase impedance in ohm), transformers and regulators (leakage impedance referred to the
secondary, taps as solved by the regulator controls at the study's load level), loads (delta
loads split over their two phases, every load model taken as constant power at its rating),
capacitors (fixed kvar at the bus's base voltage, the steps a capacitor control closed as
solved), PV systems (Pmpp), switches (lines with
`Switch=yes` or named `sw...`; open or disabled ones kept as normally open). Any other circuit
element stops the import with its name. Study options add PV (a share of each load's kW, or a
list), scale the loads and pick the day profiles; areas come from `areas.py`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from derbus.errors import ConfigError
from voltage_coordinator.feeder import (
    PHASES,
    Branch,
    BranchKind,
    Bus,
    Feeder,
    Phase,
    Profiles,
    Pv,
    bundled_feeder,
)

if TYPE_CHECKING:
    from voltage_coordinator.acflow import AcResult

REPRESENTED = {
    "vsource",
    "line",
    "transformer",
    "regcontrol",
    "capcontrol",
    "load",
    "capacitor",
    "pvsystem",
}
"""Circuit element classes the feeder format represents (controls: their state as solved)."""
IGNORED = {"energymeter", "monitor", "fuse", "recloser", "relay", "swtcontrol", "sensor"}
"""Measurement and protection elements: no effect on the steady-state power flow."""
ATTRIBUTION = (
    "Converted by `voltage-coordinator import-dss` from an OpenDSS model of EPRI's OpenDSS "
    "distribution (BSD-style licence, Copyright (c) 2008-2014 Electric Power Research Institute, "
    "Inc.; see data/feeders/LICENSE-EPRI-OpenDSS.txt)."
)


@dataclass(frozen=True)
class Study:
    """What an import adds to the model for a study.

    Attributes:
        load_scale: every load times this.
        source_pu: the source voltage for the study (None: as modelled).
        pv_share: PV nameplate per phase = this x the phase's load kW as modelled (its peak,
            before `load_scale`), at every loaded bus; 0 = none added.
        pv_kw: extra PVs, bus -> kW (spread evenly over the bus's phases).
        load_profile, pv_profile: day multipliers (default: the bundled IEEE 123 day).
        interval_s: the profiles' step.
        areas: area id -> root bus (None: found automatically, see areas.py).
        area_count: for automatic areas, the number of balanced subtrees when the tree has no
            regulator or switch to cut at (0: cut at regulators and switches only).
        feeder_id: the feeder id (default: the OpenDSS circuit name).
        attribution: kept in the feeder file.
    """

    load_scale: float = 1.0
    source_pu: float | None = None

    def __post_init__(self) -> None:
        if self.load_scale <= 0:
            raise ConfigError("load_scale must be positive")

    pv_share: float = 0.0
    pv_kw: Mapping[str, float] = field(default_factory=dict)
    load_profile: Sequence[float] | None = None
    pv_profile: Sequence[float] | None = None
    interval_s: int = 900
    areas: Mapping[str, str] | None = None
    area_count: int = 0
    feeder_id: str | None = None
    attribution: str = ATTRIBUTION


def day_profiles(
    path: Path, day: str, load_column: str, pv_column: str
) -> tuple[list[float], list[float]]:
    """One day's load and PV multipliers from a profile table (`time` + one column per profile,
    e.g. data/profiles/simbench_2016_15min.csv): the rows whose `time` starts with `day`.

    Raises ConfigError when the file, a column or the day is missing.
    """
    import csv

    try:
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["time"].startswith(day)]
    except (OSError, KeyError) as err:
        raise ConfigError(f"profiles {path}: {err}") from err
    if not rows:
        raise ConfigError(f"profiles {path}: no rows on {day}")
    try:
        return [float(r[load_column]) for r in rows], [float(r[pv_column]) for r in rows]
    except KeyError as err:
        raise ConfigError(f"profiles {path}: no column {err}") from err


def _bus_and_nodes(spec: str, n_phases: int) -> tuple[str, list[int]]:
    """`632.3.2` -> ("632", [2, 1]) (phase indices in conductor order; default 1.2.3)."""
    name, *nodes = spec.split(".")
    picked = [int(n) - 1 for n in nodes if n not in ("", "0")] or [0, 1, 2][:n_phases]
    return name.lower(), picked[:n_phases]


def _scatter(values: Sequence[float], order: list[int], scale: float) -> list[list[float]]:
    n = len(order)
    out = [[0.0] * 3 for _ in range(3)]
    for i, pi in enumerate(order):
        for j, pj in enumerate(order):
            out[pi][pj] = float(values[i * n + j]) * scale
    return out


def _phase(index: int) -> Phase:
    return cast(Phase, PHASES[index])


def _phase_list(indices: Sequence[int]) -> list[Phase]:
    return [_phase(i) for i in sorted(set(indices)) if 0 <= i < 3]


def _per_phase(values: Mapping[int, float], scale: float = 1.0) -> dict[Phase, float]:
    return {_phase(k): v * scale for k, v in sorted(values.items())}


class _Reader:
    """Reads one compiled and solved OpenDSS circuit (one engine context, one thread)."""

    def __init__(self, dss: Any, study: Study) -> None:
        self.d = dss
        self.study = study
        self.bus_phases: dict[str, set[int]] = {}
        self.kv_ln: dict[str, float] = {}

    def check_elements(self) -> None:
        vsources = 0
        for full in self.d.Circuit.AllElementNames():
            cls = full.split(".", 1)[0].lower()
            if cls == "vsource":
                vsources += 1
            if cls not in REPRESENTED | IGNORED:
                raise ConfigError(
                    f"OpenDSS element {full} ({cls}) cannot be represented in the feeder format "
                    f"(supported: {', '.join(sorted(REPRESENTED))})"
                )
        if vsources != 1:
            raise ConfigError(f"one voltage source expected, the model has {vsources}")

    def buses(self) -> None:
        d = self.d
        for name in d.Circuit.AllBusNames():
            d.Circuit.SetActiveBus(name)
            base = float(d.Bus.kVBase())
            if base <= 0:
                raise ConfigError(
                    f"bus {name} has no voltage base: the model must set voltagebases "
                    "and calcvoltagebases (or pass them as extra commands)"
                )
            self.kv_ln[name.lower()] = base
            self.bus_phases[name.lower()] = {n - 1 for n in d.Bus.Nodes() if 1 <= n <= 3}

    def lines(self) -> list[Branch]:
        d = self.d
        out = []
        i = d.Lines.First()
        while i:
            name = d.Lines.Name().lower()
            n = int(d.Lines.Phases())
            fr, order = _bus_and_nodes(d.Lines.Bus1(), n)
            to, _ = _bus_and_nodes(d.Lines.Bus2(), n)
            length = float(d.Lines.Length())
            is_open = not d.CktElement.Enabled() or any(d.CktElement.IsOpen(t, 0) for t in (1, 2))
            kind: BranchKind = "switch" if d.Lines.IsSwitch() or name.startswith("sw") else "line"
            out.append(
                Branch(
                    name=name,
                    kind=kind,
                    from_bus=fr,
                    to_bus=to,
                    phases=_phase_list(order),
                    r_ohm=_scatter(d.Lines.RMatrix(), order, length),
                    x_ohm=_scatter(d.Lines.XMatrix(), order, length),
                    normally_open=is_open,
                )
            )
            i = d.Lines.Next()
        return out

    def transformers(self) -> list[Branch]:
        """Transformers; single-phase units between the same two buses (a regulator bank)
        become one branch with a tap per phase."""
        d = self.d
        regulated = set()
        i = d.RegControls.First()
        while i:
            regulated.add(d.RegControls.Transformer().lower())
            i = d.RegControls.Next()
        banks: dict[tuple[str, str], dict[str, Any]] = {}
        i = d.Transformers.First()
        while i:
            name = d.Transformers.Name().lower()
            if int(d.Transformers.NumWindings()) != 2:
                raise ConfigError(f"OpenDSS element Transformer.{name}: only two windings")
            n = int(d.CktElement.NumPhases())
            bus_specs = d.CktElement.BusNames()
            fr, order = _bus_and_nodes(bus_specs[0], n)
            to, _ = _bus_and_nodes(bus_specs[1], n)
            wdg = []
            for w in (1, 2):
                d.Transformers.Wdg(w)
                kv = float(d.Transformers.kV())
                # a winding's voltage as line-to-neutral: 3-phase ratings are line-to-line
                kv_ln = kv / math.sqrt(3) if n > 1 or d.Transformers.IsDelta() else kv
                wdg.append(
                    (
                        kv_ln,
                        float(d.Transformers.kVA()),
                        float(d.Transformers.Tap()),
                        float(d.Transformers.R()),
                    )
                )
            (kv1, kva, tap1, r1), (kv2, _, tap2, r2) = wdg
            ratio = (kv2 * tap2 / (kv1 * tap1)) / (self.kv_ln[to] / self.kv_ln[fr])
            zbase = (kv2**2) / (kva / n / 1000)  # ohm, per phase on winding 2
            r_ohm = (r1 + r2) / 100 * zbase
            x_ohm = float(d.Transformers.Xhl()) / 100 * zbase
            bank = banks.setdefault(
                (fr, to),
                {
                    "name": name,
                    "kind": "regulator" if name in regulated else "transformer",
                    "phases": [],
                    "r": [[0.0] * 3 for _ in range(3)],
                    "x": [[0.0] * 3 for _ in range(3)],
                    "tap": {},
                },
            )
            if name in regulated:
                bank["kind"] = "regulator"
            for k in order:
                bank["phases"].append(k)
                bank["r"][k][k] = r_ohm
                bank["x"][k][k] = x_ohm
                bank["tap"][_phase(k)] = ratio
            i = d.Transformers.Next()
        return [
            Branch(
                name=b["name"],
                kind=b["kind"],
                from_bus=fr,
                to_bus=to,
                phases=_phase_list(b["phases"]),
                r_ohm=b["r"],
                x_ohm=b["x"],
                tap=b["tap"],
            )
            for (fr, to), b in banks.items()
        ]

    def loads(self) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
        d = self.d
        kw: dict[str, dict[int, float]] = {}
        kvar: dict[str, dict[int, float]] = {}
        i = d.Loads.First()
        while i:
            n = int(d.CktElement.NumPhases())
            bus, nodes = _bus_and_nodes(d.CktElement.BusNames()[0], max(n, 2))
            delta = bool(d.Loads.IsDelta())
            phases = nodes[:2] if (delta and n == 1) else nodes[:n]
            p = float(d.Loads.kW()) * self.study.load_scale
            q = float(d.Loads.kvar()) * self.study.load_scale
            for k in phases:
                kw.setdefault(bus, {})[k] = kw.get(bus, {}).get(k, 0.0) + p / len(phases)
                kvar.setdefault(bus, {})[k] = kvar.get(bus, {}).get(k, 0.0) + q / len(phases)
            i = d.Loads.Next()
        return kw, kvar

    def capacitors(self) -> dict[str, dict[int, float]]:
        d = self.d
        out: dict[str, dict[int, float]] = {}
        i = d.Capacitors.First()
        while i:
            n = int(d.CktElement.NumPhases())
            bus, nodes = _bus_and_nodes(d.CktElement.BusNames()[0], n)
            rated_ln = float(d.Capacitors.kV()) / (math.sqrt(3) if n > 1 else 1.0)
            states = list(d.Capacitors.States()) or [1]
            closed = sum(1 for x in states if x) / len(states)  # steps in as solved
            at_base = float(d.Capacitors.kvar()) * closed * (self.kv_ln[bus] / rated_ln) ** 2
            for k in nodes:
                out.setdefault(bus, {})[k] = out.get(bus, {}).get(k, 0.0) + at_base / n
            i = d.Capacitors.Next()
        return out

    def pvsystems(self) -> list[Pv]:
        d = self.d
        out = []
        i = d.PVsystems.First()
        while i:
            n = int(d.CktElement.NumPhases())
            bus, nodes = _bus_and_nodes(d.CktElement.BusNames()[0], n)
            rating = float(d.PVsystems.Pmpp())
            out.append(
                Pv(
                    id=f"pv_{d.PVsystems.Name().lower()}",
                    bus=bus,
                    kw=_per_phase(dict.fromkeys(nodes, rating / len(nodes))),
                )
            )
            i = d.PVsystems.Next()
        return out

    def source(self) -> tuple[str, float]:
        d = self.d
        d.Vsources.First()
        bus, _ = _bus_and_nodes(d.CktElement.BusNames()[0], 3)
        return bus, float(d.Vsources.PU())


def _solved_for_study(
    master: Path, commands: Sequence[str], study: Study, lightest_load: float
) -> Any:
    """A new engine context with the model compiled, the study's source voltage and load set,
    and the regulators' taps solved at the day's lightest load (the over-voltage case)."""
    from voltage_coordinator.acflow import new_engine_context

    d = new_engine_context()
    cwd = os.getcwd()  # OpenDSS's compile changes the process's working directory
    try:
        d.Text.Command(f"compile [{master.resolve()}]")
        for cmd in commands:
            d.Text.Command(cmd)
        if study.source_pu is not None:
            d.Vsources.First()
            d.Vsources.PU(study.source_pu)
        d.Text.Command(f"set loadmult={study.load_scale * lightest_load}")
        d.Text.Command("set mode=snap controlmode=static maxcontroliter=100")
        d.Solution.Solve()
    except Exception as err:  # the engine raises its own exception type
        raise ConfigError(f"OpenDSS could not compile and solve {master}: {err}") from err
    finally:
        os.chdir(cwd)
    return d


class OriginalModel:
    """The original OpenDSS model as an AC flow (`AcModel`), for checking an import: its own
    load models (Z, I, delta), capacitors and transformers; the imported feeder's PVs added as
    generators at unity power factor; the regulators frozen at the taps the import solved.

    Args:
        master: the model's master file.
        feeder: the feeder imported from it with `study` (its PVs and profiles).
        study: the study of the import.
        commands: the import's extra OpenDSS commands.
    """

    def __init__(
        self, master: Path, feeder: Feeder, study: Study, commands: Sequence[str] = ()
    ) -> None:
        from voltage_coordinator.acflow import AcResult

        self._result = AcResult
        self.study = study
        d = self.d = _solved_for_study(master, commands, study, min(feeder.profiles.load))
        self.parts: dict[str, list[tuple[str, float]]] = {}
        for pv in feeder.pvs:
            parts = []
            for ph, kw in pv.kw.items():
                name = f"{pv.id}_{ph}"
                d.Text.Command(
                    f"new generator.{name} phases=1 bus1={pv.bus}.{PHASES.index(ph) + 1} "
                    f"kv={feeder.kv_ln(pv.bus):.6f} kw={kw} pf=1 model=1 vminpu=0.6 vmaxpu=1.4"
                )
                parts.append((name, kw / pv.rating_kw))
            self.parts[pv.id] = parts
        d.Text.Command("set controlmode=off")
        self.buses = {b.name for b in feeder.buses}

    def solve(self, load_mult: float, pv_output_kw: Mapping[str, float]) -> AcResult:
        """Voltages at a load level (x the study's scale) and PV outputs (kW)."""
        d = self.d
        d.Text.Command(f"set loadmult={self.study.load_scale * load_mult}")
        for pid, parts in self.parts.items():
            total = max(0.0, float(pv_output_kw.get(pid, 0.0)))
            for name, share in parts:
                d.Generators.Name(name)
                d.Generators.kW(total * share)
        d.Solution.Solve()
        v: dict[tuple[str, int], float] = {}
        for node, mag in zip(d.Circuit.AllNodeNames(), d.Circuit.AllBusMagPu(), strict=True):
            bus, _, ph = node.rpartition(".")
            if bus in self.buses and ph in ("1", "2", "3"):
                v[(bus, int(ph) - 1)] = float(mag)
        return self._result(v, bool(d.Solution.Converged()), int(d.Solution.Iterations()))


def import_dss(master: Path, study: Study | None = None, commands: Sequence[str] = ()) -> Feeder:
    """Build a feeder from an OpenDSS model (raises ConfigError naming what it cannot use).

    Args:
        master: the model's master file (compiled from its own folder).
        study: PV, load scale, profiles and areas for the study (default: as modelled).
        commands: extra OpenDSS commands run after the compile (e.g. `set voltagebases=[...]`,
            `calcv`), before the solve.
    """
    from voltage_coordinator.areas import auto_areas, with_areas

    study = study or Study()
    if not master.is_file():
        raise ConfigError(f"OpenDSS master file {master} not found")
    day = bundled_feeder().profiles
    profiles = Profiles(
        interval_s=study.interval_s,
        load=list(study.load_profile or day.load),
        pv=list(study.pv_profile or day.pv),
    )
    d = _solved_for_study(master, commands, study, min(profiles.load))
    if not d.Solution.Converged():
        raise ConfigError(f"OpenDSS did not converge on {master} at load scale {study.load_scale}")
    reader = _Reader(d, study)
    reader.check_elements()
    reader.buses()
    source_bus, source_pu = reader.source()
    branches = reader.lines() + reader.transformers()
    kw, kvar = reader.loads()
    caps = reader.capacitors()
    pvs = reader.pvsystems()
    base = reader.kv_ln[source_bus]
    for bus, phases in sorted(kw.items()) if study.pv_share > 0 else []:
        pvs.append(
            Pv(
                id=f"pv_{bus}",
                bus=bus,
                kw=_per_phase(phases, study.pv_share / study.load_scale),
            )
        )
    for bus, total in study.pv_kw.items():
        if bus not in reader.bus_phases:
            raise ConfigError(f"pv: bus {bus!r} is not in the model")
        ph = sorted(reader.bus_phases[bus])
        pvs.append(
            Pv(id=f"pv_{bus}_extra", bus=bus, kw=_per_phase(dict.fromkeys(ph, total / len(ph))))
        )
    buses = [
        Bus(
            name=name,
            phases=_phase_list(sorted(ph)),
            load_kw=_per_phase(kw.get(name, {})),
            load_kvar=_per_phase(kvar.get(name, {})),
            shunt_kvar=_per_phase(caps.get(name, {})),
            base_kv_ln=None
            if math.isclose(reader.kv_ln[name], base, rel_tol=1e-6)
            else reader.kv_ln[name],
        )
        for name, ph in reader.bus_phases.items()
    ]
    feeder = Feeder(
        feeder_id=study.feeder_id or d.Circuit.Name().lower().replace("-", "_"),
        attribution=study.attribution,
        base_kv_ln=base,
        source_bus=source_bus,
        source_v_pu=source_pu,
        buses=buses,
        branches=branches,
        pvs=pvs,
        profiles=profiles,
    )
    areas = study.areas if study.areas is not None else auto_areas(feeder, study.area_count)
    return with_areas(feeder, areas)
