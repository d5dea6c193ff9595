"""Three-phase LinDistFlow in matrix form for a radial (sub)tree of a feeder.

Per node n = (bus, phase), with P_n / Q_n the flow into n from its parent node (MW / Mvar,
load-referenced: positive towards the loads) and v_n the squared voltage magnitude (pu^2):

    P_n = p_net_n + sum_{children c of n} P_c                       (power balance, lossless)
    v_n = tap_n^2 v_parent(n) - sum_m (Cp[n, m] P_m + Cq[n, m] Q_m)  (voltage drop)

where m runs over the phases of the branch into n's bus and, with gamma_km = e^{j(theta_k -
theta_m)} the ratio of balanced phase voltages and z the 3x3 branch impedance,
Cp[k, m] = 2 Re(gamma_km conj(z_km)) / Zbase and Cq[k, m] = -2 Im(gamma_km conj(z_km)) / Zbase
(Gan & Low 2014; Arnold et al. 2016). Each injection enters the balance of exactly one node, once.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from voltage_coordinator.feeder import PHASES, Feeder, phase_index

FloatArray = npt.NDArray[np.float64]

_ANGLE = {0: 0.0, 1: -2 * math.pi / 3, 2: 2 * math.pi / 3}


def gamma(k: int, m: int) -> complex:
    """Ratio V_k / V_m of balanced phase voltages (phases 0, 1, 2 = a, b, c)."""
    return cmath.exp(1j * (_ANGLE[k] - _ANGLE[m]))


def drop_coefficients(
    r_ohm: Sequence[Sequence[float]], x_ohm: Sequence[Sequence[float]], k: int, m: int
) -> tuple[float, float]:
    """(Cp, Cq) of phase m's flow in phase k's squared-voltage drop, in ohm (divide by Zbase)."""
    g = gamma(k, m) * complex(r_ohm[k][m], -x_ohm[k][m])
    return 2 * g.real, -2 * g.imag


@dataclass(frozen=True)
class Tree:
    """A compiled radial (sub)tree: nodes in topological order, root bus first.

    Attributes:
        buses: bus names in topological order (root first).
        nodes: (bus, phase index) per node.
        parent: parent node index per node (-1 for root nodes).
        tap2: squared tap ratio of the branch into each node (1 for lines and root nodes).
        child: sparse matrix, child[n, c] = 1 when c is a child node of n.
        parent_map: sparse matrix, parent_map[n, parent(n)] = tap2[n].
        cp, cq: sparse drop matrices (pu^2 per MW / Mvar).
        root_nodes: indices of the root bus's nodes.
        load_mw, load_mvar: nominal load per node.
        shunt_mvar: fixed reactive generation per node (capacitors; not scaled with the load).
        pv_ids: PVs on the tree's owned buses.
        pv_share: (nodes x pvs) share of each PV's output on each node (columns sum to 1).
        pv_rating_mw: nameplate per PV.
        ghost_nodes: indices of nodes of ghost buses (a child area's root seen from its parent).
    """

    buses: list[str]
    nodes: list[tuple[str, int]]
    parent: npt.NDArray[np.int64]
    tap2: FloatArray
    child: sp.csr_matrix
    parent_map: sp.csr_matrix
    cp: sp.csr_matrix
    cq: sp.csr_matrix
    root_nodes: list[int]
    load_mw: FloatArray
    load_mvar: FloatArray
    shunt_mvar: FloatArray
    pv_ids: list[str]
    pv_share: FloatArray
    pv_rating_mw: FloatArray
    ghost_nodes: list[int]

    @property
    def size(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    def index(self) -> dict[tuple[str, int], int]:
        """Node index by (bus, phase index)."""
        return {node: i for i, node in enumerate(self.nodes)}

    def nodes_of(self, bus: str) -> list[int]:
        """Node indices of one bus."""
        return [i for i, (b, _) in enumerate(self.nodes) if b == bus]

    def q_net_mvar(self, load_mult: float) -> FloatArray:
        """Net reactive load per node at a load level (loads scaled, capacitors not), Mvar."""
        q: FloatArray = self.load_mvar * load_mult - self.shunt_mvar
        return q

    def node_names(self) -> list[str]:
        """`bus.a`-style names of the nodes."""
        return [f"{b}.{PHASES[p]}" for b, p in self.nodes]


def compile_tree(
    feeder: Feeder, buses: Sequence[str] | None = None, ghosts: Sequence[str] = ()
) -> Tree:
    """Compile the LinDistFlow matrices of the whole feeder or of a connected part of it.

    Args:
        feeder: the feeder.
        buses: the owned buses (a connected subtree; default: all). Their root is the one whose
            parent is not in the set.
        ghosts: buses just below the owned set whose whole downstream is replaced by one
            injection per phase (a neighbouring area's boundary); no load or PV of their own.
    """
    tree_graph: nx.DiGraph = feeder.graph
    owned = set(buses) if buses is not None else set(feeder.bus)
    keep = owned | set(ghosts)
    order = [b for b in nx.topological_sort(tree_graph) if b in keep]
    nodes: list[tuple[str, int]] = []
    for bus in order:
        nodes.extend((bus, phase_index(p)) for p in feeder.bus[bus].phases)
    idx = {node: i for i, node in enumerate(nodes)}
    n = len(nodes)
    parent = np.full(n, -1, dtype=np.int64)
    tap2 = np.ones(n)
    rows_c, cols_c = [], []
    cp_r, cp_c, cp_v, cq_v = [], [], [], []
    root_bus = order[0]
    for bus in order[1:]:
        (up,) = tree_graph.predecessors(bus)
        if up not in keep:
            raise ValueError(f"buses: {bus} is not connected to the root {root_bus} inside the set")
        br = tree_graph.edges[up, bus]["branch"]
        br_phases = [phase_index(p) for p in br.phases]
        # ohm -> pu on the base of the branch's downstream side, (V_ln)^2 / 1 MVA per phase
        zbase = (feeder.kv_ln(bus) * 1000) ** 2 / 1e6
        for p in feeder.bus[bus].phases:
            k = phase_index(p)
            i = idx[(bus, k)]
            parent[i] = idx[(up, k)]
            rows_c.append(parent[i])
            cols_c.append(i)
            tap2[i] = br.tap.get(p, 1.0) ** 2  # regulators and transformers (pu ratio)
            for m in br_phases:
                c_p, c_q = drop_coefficients(br.r_ohm, br.x_ohm, k, m)
                if c_p or c_q:
                    cp_r.append(i)
                    cp_c.append(idx[(bus, m)])
                    cp_v.append(c_p / zbase)
                    cq_v.append(c_q / zbase)
    child = sp.csr_matrix((np.ones(len(rows_c)), (rows_c, cols_c)), shape=(n, n))
    has_parent = parent >= 0
    parent_map = sp.csr_matrix(
        (tap2[has_parent], (np.nonzero(has_parent)[0], parent[has_parent])), shape=(n, n)
    )
    cp = sp.csr_matrix((cp_v, (cp_r, cp_c)), shape=(n, n))
    cq = sp.csr_matrix((cq_v, (cp_r, cp_c)), shape=(n, n))
    load_mw = np.zeros(n)
    load_mvar = np.zeros(n)
    shunt_mvar = np.zeros(n)
    for (bus, k), i in idx.items():
        if bus in owned:
            ph = PHASES[k]
            load_mw[i] = feeder.bus[bus].load_kw.get(ph, 0.0) / 1000  # type: ignore[call-overload]
            load_mvar[i] = feeder.bus[bus].load_kvar.get(ph, 0.0) / 1000  # type: ignore[call-overload]
            shunt_mvar[i] = feeder.bus[bus].shunt_kvar.get(ph, 0.0) / 1000  # type: ignore[call-overload]
    pvs = [pv for pv in feeder.pvs if pv.bus in owned]
    share = np.zeros((n, len(pvs)))
    for j, pv in enumerate(pvs):
        for ph, kw in pv.kw.items():
            share[idx[(pv.bus, phase_index(ph))], j] = kw / pv.rating_kw
    return Tree(
        buses=order,
        nodes=nodes,
        parent=parent,
        tap2=tap2,
        child=child,
        parent_map=parent_map,
        cp=cp,
        cq=cq,
        root_nodes=[idx[(root_bus, phase_index(p))] for p in feeder.bus[root_bus].phases],
        load_mw=load_mw,
        load_mvar=load_mvar,
        shunt_mvar=shunt_mvar,
        pv_ids=[pv.id for pv in pvs],
        pv_share=share,
        pv_rating_mw=np.array([pv.rating_kw / 1000 for pv in pvs]),
        ghost_nodes=[i for i, (b, _) in enumerate(nodes) if b in set(ghosts)],
    )


@dataclass(frozen=True)
class LinearFlow:
    """The LinDistFlow solution: flows into each node (MW, Mvar) and squared voltages (pu^2)."""

    p_mw: FloatArray
    q_mvar: FloatArray
    v2_pu: FloatArray

    @property
    def v_pu(self) -> FloatArray:
        """Voltage magnitudes, pu."""
        return np.sqrt(self.v2_pu)


def solve_linear(
    tree: Tree, p_net_mw: FloatArray, q_net_mvar: FloatArray, v2_root: FloatArray | float
) -> LinearFlow:
    """Evaluate LinDistFlow for given net loads (load - generation, MW) and root voltage (pu^2)."""
    n = tree.size
    eye = sp.identity(n, format="csc")
    p = sp.linalg.spsolve((eye - tree.child).tocsc(), p_net_mw)
    q = sp.linalg.spsolve((eye - tree.child).tocsc(), q_net_mvar)
    rhs = -(tree.cp @ p + tree.cq @ q)
    rhs[tree.root_nodes] = v2_root
    v2 = sp.linalg.spsolve((eye - tree.parent_map).tocsc(), rhs)
    return LinearFlow(np.asarray(p), np.asarray(q), np.asarray(v2))
