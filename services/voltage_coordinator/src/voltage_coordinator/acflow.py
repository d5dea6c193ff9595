"""The AC power flow of a feeder: an unbalanced three-phase OpenDSS model (opendssdirect.py).

Threading. The DSS C-API engine is Free Pascal code. Every thread that first enters it runs
the Pascal runtime's thread set-up, which reads the C environment through the `envp` pointer
the library captured when it was loaded. glibc moves (reallocates and frees) the environment
array whenever a variable is added, which Python does freely (`os.environ[...] = ...`, pytest's
`PYTEST_CURRENT_TEST`, monkeypatch): a thread entering the engine later then reads freed memory
and the process dies with a segmentation fault. So the engine is loaded with `envp` pointing to
a copy of the environment that lives as long as the process (`_load_engine`), and each
`AcFlow` owns one dedicated worker thread that creates its DSS context and runs every call on
it (`solve` from any thread hands the work to it; `executor` lets async code await it). `close`
waits for the work in flight, releases the context on that thread and stops the thread.

Model: loads are constant-power; capacitors fixed; each PV is one constant-power generator per
phase at unity power factor; regulators and transformers are single-phase transformers per
phase at their fixed taps with their leakage impedance; the source is a stiff voltage source
at `source_v_pu`.
"""

from __future__ import annotations

import ctypes
import importlib
import math
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from derbus.errors import SolverError
from voltage_coordinator.feeder import PHASES, Branch, Feeder, phase_index
from voltage_coordinator.network import FloatArray, Tree

T = TypeVar("T")


def _load_engine() -> tuple[ModuleType, Any]:
    """Import opendssdirect while the C `environ` points to a copy that is never freed.

    Returns the module and the pinned copy (keep it referenced for the life of the process).
    Outside glibc/musl Linux the import is plain.
    """
    if not sys.platform.startswith("linux"):
        return importlib.import_module("opendssdirect"), None
    libc = ctypes.CDLL(None)
    environ = ctypes.c_void_p.in_dll(libc, "environ")
    if environ.value is None:
        return importlib.import_module("opendssdirect"), None
    current = ctypes.cast(environ, ctypes.POINTER(ctypes.c_char_p))
    entries: list[bytes | None] = []
    while (entry := current[len(entries)]) is not None:
        entries.append(entry)
    pinned = (ctypes.c_char_p * (len(entries) + 1))(*entries, None)
    before = environ.value
    environ.value = ctypes.addressof(pinned)
    try:
        module = importlib.import_module("opendssdirect")
    finally:
        # nothing changed the environment during the import: give libc its own array back
        # (the engine keeps `pinned`); otherwise libc has already copied `pinned` to a new one
        if environ.value == ctypes.addressof(pinned):
            environ.value = before
    return module, pinned


_DSS, _PINNED_ENVIRON = _load_engine()
"""The engine module and the environment copy its Pascal runtime reads (process lifetime)."""


def new_engine_context() -> Any:
    """A fresh OpenDSS engine context (opendssdirect), for a caller that keeps it on one thread."""
    return _DSS.NewContext()


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
    """An OpenDSS model of a feeder, re-solved for each load level and PV outputs.

    Owns one engine thread (see the module docstring); call `close` when done.
    """

    def __init__(self, feeder: Feeder) -> None:
        self.feeder = feeder
        self._pv_phases: dict[str, list[tuple[str, float]]] = {}
        self._loads: list[tuple[str, float, float]] = []
        self._dss: Any = None
        self._thread_id: int | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"opendss-{feeder.feeder_id}")
        """The one thread that owns this instance's DSS context; await work on it from async code."""
        try:
            self.executor.submit(self._create).result()
        except BaseException:
            self.executor.shutdown(wait=True)
            raise

    def _create(self) -> None:
        self._thread_id = threading.get_ident()
        self._dss = _DSS.NewContext()
        self._build()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on this instance's engine thread and wait for it (blocking).

        Called on the engine thread itself (e.g. from work already handed to `executor`),
        `fn` runs directly. Raises SolverError after `close`.
        """
        if threading.get_ident() == self._thread_id:
            return fn(*args)
        if self._dss is None:
            raise SolverError("the AC power flow is closed")
        return self.executor.submit(fn, *args).result()

    def close(self) -> None:
        """Wait for the work in flight, release the DSS context on its thread, stop the thread.

        Idempotent. Must not be called from the engine thread.
        """
        if self._dss is not None and threading.get_ident() != self._thread_id:
            self.executor.submit(self._release).result()
        self.executor.shutdown(wait=True)

    def _release(self) -> None:
        self._dss = None

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
            if br.kind in ("regulator", "transformer"):
                self._transformer(br)
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
                        f"kv={f.kv_ln(bus.name):.6f} kw={kw} kvar={kvar} model=1 "
                        "vminpu=0.6 vmaxpu=1.4"
                    )
                    self._loads.append((name, kw, kvar))
                cap = bus.shunt_kvar.get(p, 0.0)
                if cap:
                    self._cmd(
                        f"new capacitor.cap_{bus.name}_{p} phases=1 "
                        f"bus1={bus.name}.{phase_index(p) + 1} kv={f.kv_ln(bus.name):.6f} kvar={cap}"
                    )
        for pv in f.pvs:
            parts: list[tuple[str, float]] = []
            for p, kw in pv.kw.items():
                name = f"{pv.id}_{p}"
                self._cmd(
                    f"new generator.{name} phases=1 bus1={pv.bus}.{phase_index(p) + 1} "
                    f"kv={f.kv_ln(pv.bus):.6f} kw={kw} pf=1 model=1 vminpu=0.6 vmaxpu=1.4"
                )
                parts.append((name, kw / pv.rating_kw))
            self._pv_phases[pv.id] = parts
        bases = sorted({round(f.kv_ln(b.name) * math.sqrt(3), 6) for b in f.buses})
        self._cmd(f"set voltagebases=[{' '.join(f'{kv:.6f}' for kv in bases)}]")
        self._cmd("calcvoltagebases")
        self._cmd("set mode=snap controlmode=off maxiterations=100 tolerance=1e-7")

    def _transformer(self, br: Branch) -> None:
        """One single-phase two-winding transformer per phase, at the branch's taps.

        The leakage impedance (ohm on the `to_bus` side, diagonal) becomes %R / %X on a 10 MVA
        per-phase rating; an ideal regulator (no impedance) gets a tiny one.
        """
        f = self.feeder
        kv1, kv2 = f.kv_ln(br.from_bus), f.kv_ln(br.to_bus)
        kva = 10_000.0
        zbase = kv2**2 * 1000 / kva
        for p in br.phases:
            k = phase_index(p)
            r_pct = max(br.r_ohm[k][k] / zbase * 100, 0.00001)
            x_pct = max(br.x_ohm[k][k] / zbase * 100, 0.0001)
            self._cmd(
                f"new transformer.{br.name}_{p} phases=1 windings=2 "
                f"buses=[{br.from_bus}.{k + 1} {br.to_bus}.{k + 1}] conns=[wye wye] "
                f"kvs=[{kv1:.6f} {kv2:.6f}] kvas=[{kva} {kva}] "
                f"xhl={x_pct:.8g} %Rs=[{r_pct / 2:.8g} {r_pct / 2:.8g}] "
                f"taps=[1 {br.tap.get(p, 1.0)}]"
            )

    def solve(self, load_mult: float, pv_output_kw: Mapping[str, float]) -> AcResult:
        """Solve for loads at `load_mult` x nominal and the given PV outputs (kW, generation > 0).

        Runs on the engine thread (from any thread; blocking). PVs missing from `pv_output_kw`
        produce nothing. Raises SolverError when OpenDSS fails or the flow is closed.
        """
        return self.run(self._solve, load_mult, dict(pv_output_kw))

    def _solve(self, load_mult: float, pv_output_kw: Mapping[str, float]) -> AcResult:
        d = self._dss
        if d is None:
            raise SolverError("the AC power flow is closed")
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
