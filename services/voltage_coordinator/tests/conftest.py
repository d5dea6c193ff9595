"""Shared fixtures: hand-checkable small feeders and the bundled IEEE 123."""

from __future__ import annotations

import pytest

from voltage_coordinator.feeder import Area, Branch, Bus, Feeder, Profiles, Pv, bundled_feeder

DIAG = [[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]]
DIAG_X = [[0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2]]


def three_bus() -> Feeder:
    """s -(r 0.1, x 0.2 per phase)- 1 -(phase a, r 0.05, x 0.1)- 2; Zbase = 1 ohm (1 kV, 1 MVA).

    Loads: bus 1 phase a 100 kW + 50 kvar, bus 2 phase a 200 kW; PV 500 kW at bus 2 phase a.
    """
    return Feeder(
        feeder_id="tiny",
        base_kv_ln=1.0,
        source_bus="s",
        source_v_pu=1.0,
        buses=[
            Bus(name="s", phases=["a", "b", "c"]),
            Bus(name="1", phases=["a", "b", "c"], load_kw={"a": 100.0}, load_kvar={"a": 50.0}),
            Bus(name="2", phases=["a"], load_kw={"a": 200.0}),
        ],
        branches=[
            Branch(
                name="l1",
                kind="line",
                from_bus="s",
                to_bus="1",
                phases=["a", "b", "c"],
                r_ohm=DIAG,
                x_ohm=DIAG_X,
            ),
            Branch(
                name="l2",
                kind="line",
                from_bus="1",
                to_bus="2",
                phases=["a"],
                r_ohm=[[0.05, 0, 0], [0, 0, 0], [0, 0, 0]],
                x_ohm=[[0.1, 0, 0], [0, 0, 0], [0, 0, 0]],
            ),
        ],
        pvs=[Pv(id="pv2", bus="2", kw={"a": 500.0})],
        profiles=Profiles(load=[1.0], pv=[1.0]),
    )


def two_area() -> Feeder:
    """s - 1 - (switch) - 2 - 3, three-phase; area A rooted at s, area B at 2; PV at 1 and 3."""
    phases: list = ["a", "b", "c"]
    sw = [[1e-6, 0, 0], [0, 1e-6, 0], [0, 0, 1e-6]]
    return Feeder(
        feeder_id="duo",
        base_kv_ln=1.0,
        source_bus="s",
        source_v_pu=1.0,
        buses=[
            Bus(name="s", phases=phases),
            Bus(name="1", phases=phases, load_kw={"a": 20.0, "b": 20.0, "c": 20.0}),
            Bus(name="2", phases=phases),
            Bus(name="3", phases=phases, load_kw={"a": 10.0, "b": 30.0}),
        ],
        branches=[
            Branch(
                name="l1",
                kind="line",
                from_bus="s",
                to_bus="1",
                phases=phases,
                r_ohm=[[0.1, 0.02, 0.02], [0.02, 0.1, 0.02], [0.02, 0.02, 0.1]],
                x_ohm=[[0.2, 0.05, 0.05], [0.05, 0.2, 0.05], [0.05, 0.05, 0.2]],
            ),
            Branch(
                name="sw",
                kind="switch",
                from_bus="1",
                to_bus="2",
                phases=phases,
                r_ohm=sw,
                x_ohm=sw,
            ),
            Branch(
                name="l3",
                kind="line",
                from_bus="2",
                to_bus="3",
                phases=phases,
                r_ohm=DIAG,
                x_ohm=DIAG_X,
            ),
        ],
        pvs=[
            Pv(id="pv1", bus="1", kw={"a": 100.0, "b": 100.0, "c": 100.0}),
            Pv(id="pv3", bus="3", kw={"a": 150.0, "b": 100.0}),
        ],
        areas=[Area(id="A", root_bus="s"), Area(id="B", root_bus="2")],
        profiles=Profiles(load=[1.0], pv=[1.0]),
    )


@pytest.fixture(scope="session")
def ieee123() -> Feeder:
    return bundled_feeder()


def peak_inputs(feeder: Feeder, step: int = 58) -> tuple[float, dict[str, float]]:
    """Load level and PV availability of one step of the day."""
    return feeder.profiles.load[step], {
        pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs
    }


@pytest.fixture
def tiny() -> Feeder:
    return three_bus()


@pytest.fixture
def duo() -> Feeder:
    return two_area()


@pytest.fixture(scope="session")
def peak(ieee123: Feeder) -> tuple[float, dict[str, float]]:
    return peak_inputs(ieee123)
