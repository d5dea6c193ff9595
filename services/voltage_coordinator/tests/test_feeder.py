"""The converter on the shipped IEEE 123 data and the feeder graph checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from derbus.errors import ConfigError
from voltage_coordinator.feeder import Feeder, convert_dec

DATA = Path(__file__).resolve().parents[3] / "data" / "ieee123"


@pytest.fixture(scope="module")
def converted() -> Feeder:
    return convert_dec(
        DATA / "bus_info_ieee123_pri.json",
        DATA / "branch_sw_xfmr_ieee123_pri.json",
        DATA / "loadshape_15min.csv",
        DATA / "pvshape_15min.csv",
    )


def test_counts_pv_and_load(converted: Feeder) -> None:
    assert len(converted.buses) == 129
    assert len(converted.branches) == 130
    assert len(converted.in_service) == 128  # sw7 and sw8 normally open
    assert sum(1 for b in converted.branches if b.kind == "regulator") == 4
    assert len({pv.bus for pv in converted.pvs}) == 84
    assert converted.total_pv_kw == pytest.approx(3470.0)
    assert converted.total_load_kw == pytest.approx(897.47, abs=0.01)
    assert converted.steps == 96
    assert max(converted.profiles.pv) == pytest.approx(0.951665)
    assert "BSD 2-Clause" in converted.attribution


def test_graph_is_radial_and_areas_cover_every_bus(converted: Feeder) -> None:
    g = converted.graph
    assert g.number_of_nodes() == 129
    assert g.number_of_edges() == 128
    owner = converted.area_of()
    assert set(owner.values()) == {"area1", "area2", "area3", "area4", "area5"}
    assert len(owner) == 129


def test_bundled_file_is_the_converted_data(converted: Feeder, ieee123: Feeder) -> None:
    assert ieee123 == converted


def test_closing_a_tie_switch_is_refused(converted: Feeder) -> None:
    branches = [b.model_copy(update={"normally_open": False}) for b in converted.branches]
    looped = converted.model_copy(update={"branches": branches})
    with pytest.raises(ConfigError, match="not radial"):
        Feeder.model_validate(looped.model_dump()).graph  # noqa: B018


def test_round_trip_json(converted: Feeder, tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text(converted.to_json())
    assert Feeder.load(path) == converted
