"""The AC power flow of a feeder: an unbalanced three-phase OpenDSS model (opendssdirect.py).

Each `AcFlow` owns its own DSS engine context, so several can live in one process; one instance
must not be used from two threads at once. Loads are constant-power; each PV is one constant-power
generator per phase at unity power factor; regulators are ideal-ish single-phase transformers at
their fixed taps; the source is a stiff voltage source at `source_v_pu`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import opendssdirect as dss

from derbus.errors import SolverError
from voltage_coordinator.feeder import PHASES, Feeder, phase_index
from voltage_coordinator.network import FloatArray, Tree


@dataclass(frozen=True)
class AcResult:
    """One AC power-flow solution: voltage magnitude per (bus, phase index), pu."""

    v_pu: dict[tuple[str, int], float]
    converged: bool
    iterations: int

    def vector(self, tree: Tree) -> FloatArray:
        """Voltages in the order of a compiled tree's nodes."""
        return np.array([self.v_pu[node] for node in tree.nodes])

    @property
    def max_pu(self) -> float:
        """Highest node voltage, pu."""
        return max(self.v_pu.values())

    def nodes_above(self, limit_pu: float) -> int:
        """Number of nodes above a limit."""
        return sum(1 for v in self.v_pu.values() if v > limit_pu)

    def by_bus(self) -> dict[str, list[float | None]]:
        """Per bus: [a, b, c] magnitudes (None where the bus lacks the phase)."""
        out: dict[str, list[float | None]] = {}
        for (bus, k), v in self.v_pu.items():
            out.setdefault(bus, [None, None, None])[k] = round(v, 6)
        return out


def _lower_triangle(matrix: list[list[float]], keep: list[int]) -> str:
    rows = [" ".join(f"{matrix[i][j]:.12g}" for j in keep[: pos + 1]) for pos, i in enumerate(keep)]
    return "[" + " | ".join(rows) + "]"


class AcFlow:
    """An OpenDSS model of a feeder, re-solved for each load level and PV outputs."""

    def __init__(self, feeder: Feeder) -> None:
        self.feeder = feeder
        self._dss = dss.NewContext()
        self._pv_phases: dict[str, list[tuple[str, float]]] = {}
        self._loads: list[tuple[str, float, float]] = []
        self._build()

    def _cmd(self, text: str) -> None:
        try:
            self._dss.Text.Command(text)
        except Exception as err:  # the DSS engine raises its own exception type
            raise SolverError(f"OpenDSS rejected {text[:80]!r}: {err}") from err

    def _build(self) -> None:
        f = self.feeder
        kv_ll = f.base_kv_ln * math.sqrt(3)
        self._cmd("clear")
        self._cmd(
            f"new circuit.{f.feeder_id} basekv={kv_ll:.6f} pu={f.source_v_pu} phases=3 "
            f"bus1={f.source_bus} angle=0 mvasc3=1e7 mvasc1=1e7"
        )
        for br in f.in_service:
            keep = [phase_index(p) for p in br.phases]
            nodes = ".".join(str(k + 1) for k in keep)
            if br.kind == "regulator":
                for p in br.phases:
                    k = phase_index(p) + 1
                    self._cmd(
                        f"new transformer.{br.name}_{p} phases=1 windings=2 "
                        f"buses=[{br.from_bus}.{k} {br.to_bus}.{k}] conns=[wye wye] "
                        f"kvs=[{f.base_kv_ln:.6f} {f.base_kv_ln:.6f}] kvas=[100000 100000] "
                        f"xhl=0.0001 %r=0.00001 taps=[1 {br.tap.get(p, 1.0)}]"
                    )
                continue
            zeros = (
                "["
                + " | ".join(" ".join("0" for _ in range(i + 1)) for i in range(len(keep)))
                + "]"
            )
            self._cmd(
                f"new line.{br.name} phases={len(keep)} bus1={br.from_bus}.{nodes} "
                f"bus2={br.to_bus}.{nodes} length=1 units=none "
                f"rmatrix={_lower_triangle(br.r_ohm, keep)} "
                f"xmatrix={_lower_triangle(br.x_ohm, keep)} cmatrix={zeros}"
            )
        for bus in f.buses:
            for p in bus.phases:
                kw = bus.load_kw.get(p, 0.0)
                kvar = bus.load_kvar.get(p, 0.0)
                if kw or kvar:
                    name = f"ld_{bus.name}_{p}"
                    self._cmd(
                        f"new load.{name} phases=1 bus1={bus.name}.{phase_index(p) + 1} "
                        f"kv={f.base_kv_ln:.6f} kw={kw} kvar={kvar} model=1 vminpu=0.6 vmaxpu=1.4"
                    )
                    self._loads.append((name, kw, kvar))
        for pv in f.pvs:
            parts: list[tuple[str, float]] = []
            for p, kw in pv.kw.items():
                name = f"{pv.id}_{p}"
                self._cmd(
                    f"new generator.{name} phases=1 bus1={pv.bus}.{phase_index(p) + 1} "
                    f"kv={f.base_kv_ln:.6f} kw={kw} pf=1 model=1 vminpu=0.6 vmaxpu=1.4"
                )
                parts.append((name, kw / pv.rating_kw))
            self._pv_phases[pv.id] = parts
        self._cmd(f"set voltagebases=[{kv_ll:.6f}]")
        self._cmd("calcvoltagebases")
        self._cmd("set mode=snap controlmode=off maxiterations=100 tolerance=1e-7")

    def solve(self, load_mult: float, pv_output_kw: Mapping[str, float]) -> AcResult:
        """Solve for loads at `load_mult` x nominal and the given PV outputs (kW, generation > 0).

        PVs missing from `pv_output_kw` produce nothing. Raises SolverError when OpenDSS fails.
        """
        d = self._dss
        for name, kw, kvar in self._loads:
            d.Loads.Name(name)
            d.Loads.kW(kw * load_mult)
            d.Loads.kvar(kvar * load_mult)
        for pv_id, parts in self._pv_phases.items():
            total = max(0.0, float(pv_output_kw.get(pv_id, 0.0)))
            for name, share in parts:
                d.Generators.Name(name)
                d.Generators.kW(total * share)
        try:
            d.Solution.Solve()
        except Exception as err:  # the DSS engine raises its own exception type
            raise SolverError(f"OpenDSS power flow failed: {err}") from err
        names = d.Circuit.AllNodeNames()
        mags = d.Circuit.AllBusMagPu()
        v: dict[tuple[str, int], float] = {}
        bus_names = {b.name.lower(): b.name for b in self.feeder.buses}
        for node, mag in zip(names, mags, strict=True):
            bus, _, ph = node.rpartition(".")
            if bus in bus_names and ph in ("1", "2", "3"):
                v[(bus_names[bus], int(ph) - 1)] = float(mag)
        return AcResult(v, bool(d.Solution.Converged()), int(d.Solution.Iterations()))


def phase_name(k: int) -> str:
    """`a`, `b`, `c` for 0, 1, 2."""
    return PHASES[k]
