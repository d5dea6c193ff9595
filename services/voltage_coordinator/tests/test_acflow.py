"""The IEEE 123 peak PV step through the OpenDSS AC power flow, before and after curtailment."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from derbus.errors import SolverError
from voltage_coordinator.acflow import AcFlow
from voltage_coordinator.correction import settle
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import compile_tree
from voltage_coordinator.optimizer import CentralisedSolver, Limits, StepInputs, linear_voltages


@pytest.fixture(scope="module")
def ac(ieee123: Feeder) -> Iterator[AcFlow]:
    flow = AcFlow(ieee123)
    yield flow
    flow.close()


def test_peak_step_violates_without_control_and_holds_after(
    ieee123: Feeder, ac: AcFlow, peak: tuple[float, dict[str, float]]
) -> None:
    load, avail = peak
    before = ac.solve(load, avail)
    assert before.converged
    assert before.max_pu > 1.07
    assert before.nodes_above(1.05) > 200

    solver = CentralisedSolver(ieee123, limits=Limits(margin_pu=0.0))
    fixed = settle(solver.solve, ac, ieee123, solver.tree, StepInputs(load, avail))
    after = ac.solve(load, fixed.curtailment.limit_kw)
    assert fixed.converged
    assert after.converged
    assert after.max_pu <= 1.05 + 1e-5  # the fixed point's tolerance
    assert after.nodes_above(1.05 + 1e-5) == 0
    assert after.max_pu > 1.049  # tight: no needless curtailment
    fractions = set(round(f, 9) for f in fixed.curtailment.fraction.values())
    assert len(fractions) == 1  # equal fraction for the whole feeder


def test_linear_model_tracks_the_ac_flow(
    ieee123: Feeder, ac: AcFlow, peak: tuple[float, dict[str, float]]
) -> None:
    load, avail = peak
    tree = compile_tree(ieee123)
    v_lin = linear_voltages(ieee123, tree, load, avail)
    v_ac = ac.solve(load, avail).vector(tree)
    assert np.max(np.abs(v_ac - v_lin)) < 0.005


def test_limits_are_applied_per_pv(ieee123: Feeder, ac: AcFlow) -> None:
    none = ac.solve(0.5, {})
    full = ac.solve(0.5, {pv.id: pv.rating_kw for pv in ieee123.pvs})
    assert full.max_pu > none.max_pu + 0.01


ENGINE_IN_FRESH_THREADS = """
import os
os.environ["DERBUS_VC_BEFORE_IMPORT"] = "1"  # libc now owns a heap copy of the environment
from voltage_coordinator.acflow import AcFlow
from voltage_coordinator.feeder import bundled_feeder
for i in range(64):  # libc reallocates (moves and frees) the environment array
    os.environ[f"DERBUS_VC_AFTER_{i}"] = "x" * 64
feeder = bundled_feeder()
flows = [AcFlow(feeder) for _ in range(3)]  # each on a new engine thread
print(max(flow.solve(1.0, {}).max_pu for flow in flows))
for flow in flows:
    flow.close()
"""


def test_engine_survives_environment_changes_in_new_threads() -> None:
    # the Pascal runtime reads the environment when a thread first enters it; before the fix a
    # changed environment made that read hit freed memory (segfault). In a child process, so a
    # regression fails this test instead of killing the suite.
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_IN_FRESH_THREADS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.9 < float(done.stdout.strip()) < 1.1


def test_one_engine_thread_serves_every_caller_and_close_waits(
    ieee123: Feeder, peak: tuple[float, dict[str, float]]
) -> None:
    load, avail = peak
    flow = AcFlow(ieee123)
    seen: set[str] = set()

    def solve_here() -> float:
        return flow.run(
            lambda: seen.add(threading.current_thread().name) or flow.solve(load, avail)
        ).max_pu

    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda _: solve_here(), range(8)))
    # serialised on one context (each solve starts from the last one's solution: 1e-8 apart)
    assert max(results) - min(results) < 1e-6
    assert len(seen) == 1
    assert next(iter(seen)).startswith("opendss-ieee123")
    in_flight = flow.executor.submit(flow.solve, load, avail)
    flow.close()  # waits for the solve in flight, then releases the context
    assert in_flight.done()
    assert in_flight.result().max_pu == pytest.approx(results[0], abs=1e-6)
    with pytest.raises(SolverError, match="closed"):
        flow.solve(load, avail)
    flow.close()  # idempotent
