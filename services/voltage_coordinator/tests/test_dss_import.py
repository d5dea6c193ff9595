"""OpenDSS models in: the IEEE feeders imported, checked against OpenDSS and the DEC JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from derbus.errors import ConfigError
from derbus.messages import FeederState
from voltage_coordinator.acflow import AcFlow
from voltage_coordinator.areas import auto_areas, balanced, read_areas, with_areas
from voltage_coordinator.coordinator import Coordinator
from voltage_coordinator.dss_import import OriginalModel, Study, day_profiles, import_dss
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.network import compile_tree
from voltage_coordinator.settings import Settings

FEEDERS = Path(__file__).resolve().parents[3] / "data" / "feeders"
IEEE13 = FEEDERS / "ieee13" / "IEEE13Nodeckt.dss"
IEEE34 = FEEDERS / "ieee34" / "ieee34Mod1.dss"
IEEE123 = FEEDERS / "ieee123-opendss" / "IEEE123Master.dss"
IEEE123_BASES = ("set voltagebases=[4.16, 0.48]", "calcv")
STUDY = Study(pv_share=1.0, load_scale=0.25, source_pu=1.0)
"""The bench's study, the same for every feeder."""


@pytest.fixture(scope="module")
def ieee13() -> Feeder:
    return import_dss(IEEE13, STUDY)


def test_ieee13_elements(ieee13: Feeder) -> None:
    kinds = {b.name: b.kind for b in ieee13.branches}
    assert kinds["reg1"] == "regulator"  # the three single-phase units: one bank
    assert kinds["sub"] == kinds["xfm1"] == "transformer"
    assert kinds["671692"] == "switch"
    reg = next(b for b in ieee13.branches if b.name == "reg1")
    assert set(reg.tap) == {"a", "b", "c"}
    assert all(1.0 <= t <= 1.1 for t in reg.tap.values())  # taps as solved, per phase
    assert ieee13.kv_ln("634") == pytest.approx(0.48 / 3**0.5, rel=1e-3)  # below xfm1
    assert ieee13.kv_ln("sourcebus") == pytest.approx(115 / 3**0.5, rel=1e-3)
    # the delta load 646 (b-c, 230 kW) is split over its two phases, scaled by the study
    assert ieee13.bus["646"].load_kw == pytest.approx({"b": 28.75, "c": 28.75})
    assert ieee13.bus["675"].shunt_kvar == pytest.approx({"a": 200.0, "b": 200.0, "c": 200.0})
    # PV = share x each load's modelled kW, per phase
    assert ieee13.total_pv_kw == pytest.approx(ieee13.total_load_kw / 0.25)
    assert len(ieee13.areas) >= 2


@pytest.mark.parametrize(
    ("master", "commands", "tolerance"),
    [(IEEE13, (), 1e-3), (IEEE34, (), 5e-3), (IEEE123, IEEE123_BASES, 2e-3)],
)
def test_imported_feeder_matches_the_original_model_in_ac(
    master: Path, commands: tuple[str, ...], tolerance: float
) -> None:
    """The rebuilt AC model agrees with OpenDSS on the original (its Z/I and delta loads and
    switched capacitors are constant-power / fixed in the feeder format)."""
    feeder = import_dss(master, STUDY, commands)
    level = min(feeder.profiles.load)
    ac = AcFlow(feeder)
    try:
        mine = ac.solve(level, {})
    finally:
        ac.close()
    original = OriginalModel(master, feeder, STUDY, commands).solve(level, {}).v_pu
    common = [k for k in mine.v_pu if k in original]
    assert len(common) == len(mine.v_pu)
    assert max(abs(mine.v_pu[k] - original[k]) for k in common) < tolerance


def test_ieee123_opendss_and_dec_json_give_the_same_lindistflow_network(
    ieee123: Feeder,
) -> None:
    """Where they describe the same feeder (the DEC dropped the 0.48 kV transformer and ends
    sw7/sw8 at 300/94, the model at 300_open/94_open), lines, phases and LinDistFlow
    coefficients agree (the DEC's loads are its own, not a scaling of the model's)."""
    dss = import_dss(IEEE123, Study(), IEEE123_BASES)
    by_ends = {(b.from_bus, b.to_bus): b for b in dss.branches}
    compared = 0
    for br in ieee123.in_service:
        other = by_ends[(br.from_bus, br.to_bus)]
        assert other.phases == br.phases, br.name
        assert other.kind == br.kind, br.name
        if br.kind != "regulator":  # the DEC's regulators carry no taps
            assert np.allclose(other.r_ohm, br.r_ohm, rtol=1e-6, atol=1e-6), br.name
            assert np.allclose(other.x_ohm, br.x_ohm, rtol=1e-6, atol=1e-6), br.name
        compared += 1
    assert compared == len(ieee123.in_service) == 128
    assert dss.kv_ln("150") == pytest.approx(ieee123.base_kv_ln, rel=1e-6)
    t_dec, t_dss = compile_tree(ieee123), compile_tree(dss)
    i_dec, i_dss = t_dec.index(), t_dss.index()
    assert set(i_dec) <= set(i_dss)
    rows = [i_dec[n] for n in t_dec.nodes], [i_dss[n] for n in t_dec.nodes]
    # below a regulator the model has its leakage impedance, the DEC none: compare the rest
    below_reg = {b.to_bus for b in ieee123.branches if b.kind == "regulator"}
    lines = [k for k, (bus, _) in enumerate(t_dec.nodes) if bus not in below_reg]
    for m_dec, m_dss in ((t_dec.cp, t_dss.cp), (t_dec.cq, t_dss.cq)):
        a = m_dec.toarray()[np.ix_(rows[0], rows[0])][lines]
        b = m_dss.toarray()[np.ix_(rows[1], rows[1])][lines]
        assert np.max(np.abs(a - b)) < 1e-5 * np.max(np.abs(a))  # switches: 1e-6 ohm apart
    assert [t_dss.parent[i] for i in rows[1]] == [
        i_dss[t_dec.nodes[p]] if p >= 0 else -1 for p in t_dec.parent
    ]


def test_an_element_it_cannot_represent_is_named(tmp_path: Path) -> None:
    (tmp_path / "IEEELineCodes.dss").write_text((IEEE13.parent / "IEEELineCodes.dss").read_text())
    (tmp_path / "IEEE13Node_BusXY.csv").write_text("")
    controlled = tmp_path / "with_controls.dss"
    controlled.write_text(
        IEEE13.read_text().replace(
            "\nSet Voltagebases",
            "\nNew CapControl.cc1 Capacitor=Cap1 element=line.650632 type=kvar ON=100 OFF=50"
            "\nNew Fuse.f1 MonitoredObj=line.684611 RatedCurrent=1000\nSet Voltagebases",
        )
    )
    assert import_dss(controlled).bus["675"].shunt_kvar  # a control and a fuse: fine
    master = tmp_path / "with_reactor.dss"
    master.write_text(
        IEEE13.read_text().replace(
            "\nSet Voltagebases", "\nNew Reactor.R1 bus1=671 kvar=100\nSet Voltagebases"
        )
    )
    (tmp_path / "IEEELineCodes.dss").write_text((IEEE13.parent / "IEEELineCodes.dss").read_text())
    (tmp_path / "IEEE13Node_BusXY.csv").write_text("")
    with pytest.raises(ConfigError, match=r"Reactor\.r1 \(reactor\) cannot be represented"):
        import_dss(master)
    with pytest.raises(ConfigError, match="not found"):
        import_dss(tmp_path / "missing.dss")


def test_areas_cut_at_regulators_and_switches_or_balanced(tmp_path: Path) -> None:
    dss = import_dss(IEEE123, Study(), IEEE123_BASES)
    cut = auto_areas(dss)
    roots = set(cut.values())
    assert "150" in roots  # the source roots the first area
    assert {"149", "152", "135", "197"} <= roots  # below sw1, sw2, sw3, sw5
    owner = with_areas(dss, cut).area_of()
    assert set(owner.values()) == set(cut)  # every area owns buses
    sizes = {}
    for bus, area in owner.items():
        sizes[area] = sizes.get(area, 0) + len(dss.bus[bus].phases)
    assert min(sizes.values()) >= 6  # small cuts merged into their parent
    four = balanced(dss, 4)
    assert len(four) == 4
    owner4 = with_areas(dss, {f"a{i}": r for i, r in enumerate(four)}).area_of()
    counts = [
        sum(len(dss.bus[b].phases) for b, a in owner4.items() if a == f"a{i}") for i in range(4)
    ]
    assert max(counts) < 2.5 * min(counts)  # about balanced
    override = tmp_path / "areas.json"
    override.write_text('{"north": "150", "south": "60"}')
    assert read_areas(override) == {"north": "150", "south": "60"}
    assert [
        a.id for a in import_dss(IEEE123, Study(areas=read_areas(override)), IEEE123_BASES).areas
    ] == ["north", "south"]
    with pytest.raises(ConfigError, match="source bus"):
        with_areas(dss, {"x": "60"})


@pytest.mark.parametrize(
    ("master", "original", "gain"),
    [(IEEE13, False, 0.1), (IEEE34, False, 0.1), (IEEE34, True, 0.1)],
)
def test_coordinator_keeps_an_imported_feeder_in_the_band_from_a_cold_start(
    master: Path, original: bool, gain: float
) -> None:
    """The feeder is the import, or the original model (what the import approximates moves
    with the operating point: the residual bound covers it)."""
    feeder = import_dss(master, STUDY)
    ac = AcFlow(feeder)
    plant = OriginalModel(master, feeder, STUDY) if original else ac
    try:
        step = max(range(feeder.steps), key=lambda s: feeder.profiles.pv[s])
        load = feeder.profiles.load[step]
        avail = {pv.id: pv.rating_kw * feeder.profiles.pv[step] for pv in feeder.pvs}
        measured = plant.solve(load, avail)
        assert measured.max_pu > 1.05  # the study's high-PV peak
        state = FeederState(
            ts=datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
            source="test",
            feeder_id=feeder.feeder_id,
            step=step,
            v_pu=measured.by_bus(),
            pv_available_kw=avail,
            pv_output_kw=avail,
            load_p_kw=feeder.total_load_kw * load,
        )
        settings = Settings(mode="distributed", fairness="none", residual_gain=gain)
        decision = Coordinator(feeder, settings, model=ac).decide(state)
        after = plant.solve(load, {p: min(a, decision.limits_kw[p]) for p, a in avail.items()})
        assert after.max_pu <= 1.05
        assert min(after.v_pu.values()) >= 0.95
        assert decision.curtailment.curtailed_kw > 0
        if original:  # without the bound the first decision overshoots on the original model
            plain = Settings(mode="distributed", fairness="none", residual_gain=0.0)
            first = Coordinator(feeder, plain, model=ac).decide(state)
            out = {p: min(a, first.limits_kw[p]) for p, a in avail.items()}
            assert plant.solve(load, out).max_pu > 1.05
    finally:
        ac.close()


def test_day_profiles_from_a_profile_table(tmp_path: Path) -> None:
    table = tmp_path / "profiles.csv"
    table.write_text(
        "time,load,pv\n2016-06-20T23:45:00,0.9,0.0\n"
        "2016-06-21T00:00:00,0.5,0.0\n2016-06-21T12:00:00,0.4,0.8\n2016-06-22T00:00:00,0.7,0.0\n"
    )
    assert day_profiles(table, "2016-06-21", "load", "pv") == ([0.5, 0.4], [0.0, 0.8])
    with pytest.raises(ConfigError, match="no column"):
        day_profiles(table, "2016-06-21", "load", "wind")
    with pytest.raises(ConfigError, match="no rows"):
        day_profiles(table, "2017-01-01", "load", "pv")
    feeder = import_dss(IEEE13, Study(load_profile=[0.5, 0.4], pv_profile=[0.0, 0.8]))
    assert feeder.profiles.load == [0.5, 0.4]


def test_the_coordinator_reads_a_dss_file_directly() -> None:
    feeder = Settings(feeder_file=IEEE13).load_feeder()
    assert feeder.feeder_id == "ieee13nodeckt"
    assert not feeder.pvs  # as modelled: the IEEE 13 model has no PV system
    assert len(feeder.areas) >= 2
