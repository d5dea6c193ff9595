"""SunSpec discovery on a register image built from the pysunspec2 model definitions."""

from __future__ import annotations

import pytest

from derbus.errors import DeviceError
from meter_gateway.device_map import load_sunspec_map, parse_config, resolve
from meter_gateway.devsim import MemoryLink, sunspec_addresses, sunspec_image
from meter_gateway.readings import decode_points
from meter_gateway.registers import plan_reads
from meter_gateway.sunspec import discover, model_points, read_model, read_points, scaled

MODELS = [
    (1, {"Mn": "derbus", "Md": "test"}),
    (103, {"W": 4200, "W_SF": 0, "WH": 123456, "WH_SF": 0, "TmpCab": 415, "Tmp_SF": -1}),
    (
        203,
        {
            "W": -1500,
            "W_SF": 0,
            "PhVphA": 2305,
            "PhVphB": 2310,
            "PhVphC": 2298,
            "V_SF": -1,
            "Hz": 5001,
            "Hz_SF": -2,
            "TotWhImp": 5000,
            "TotWhExp": 2000,
            "TotWh_SF": 3,
        },
    ),
    (124, {"WChaMax": 5000, "WChaMax_SF": 0, "ChaState": 64, "ChaState_SF": 0}),
]


def device(kind: str, controls: str = "[]") -> object:
    cfg = parse_config(
        {
            "devices": [
                {
                    "id": "d",
                    "kind": kind,
                    "connection": {"type": "tcp", "host": "h"},
                    "sunspec": "auto",
                    "controls": __import__("yaml").safe_load(controls),
                }
            ]
        }
    )
    return resolve(cfg, "site-1")[0]


@pytest.mark.parametrize("base", [40000, 50000, 0])
async def test_discovery_scans_the_three_bases_and_walks_the_chain(base: int) -> None:
    link = MemoryLink({})
    link.load(1, base, sunspec_image(MODELS))
    found, models = await discover(link, 1)
    assert found == base
    assert [m.model_id for m in models] == [1, 103, 203, 124]
    expected = sunspec_addresses([1, 103, 203, 124], base)
    assert {m.model_id: m.address for m in models} == expected
    assert models[1].name == "inverter_three_phase"
    assert models[1].length == 50


async def test_no_marker_is_a_device_error() -> None:
    link = MemoryLink({})
    link.load(1, 40000, [0, 0])
    with pytest.raises(DeviceError, match="no SunSpec marker"):
        await discover(link, 1)


async def test_meter_and_pv_fields_from_the_models() -> None:
    link = MemoryLink({})
    link.load(1, 40000, sunspec_image(MODELS))
    _, models = await discover(link, 1)
    for kind, expected in [
        (
            "meter",
            {
                "p_kw": -1.5,
                "v_l1_v": 230.5,
                "v_l2_v": 231.0,
                "v_l3_v": 229.8,
                "f_hz": 50.01,
                "e_import_kwh": 5000.0,
                "e_export_kwh": 2000.0,
            },
        ),
        ("pv", {"generation_kw": 4.2, "e_total_kwh": 123.456, "temp_c": 41.5}),
    ]:
        dev = device(kind)
        points = read_points(dev, models)  # type: ignore[arg-type]
        blocks = plan_reads([s for p in points for s in p.spans()])
        raw = {b: await link.read(b.function, b.address, b.count, 1) for b in blocks}
        values, drops = decode_points(points, raw)
        assert drops == []
        assert values == pytest.approx(expected)
        assert len(blocks) == 1  # one model, one request


async def test_a_required_field_without_a_model_is_reported() -> None:
    link = MemoryLink({})
    link.load(1, 40000, sunspec_image(MODELS))
    _, models = await discover(link, 1)
    with pytest.raises(DeviceError, match="feed no p_kw for a battery"):
        read_points(device("battery"), models)  # type: ignore[arg-type]


async def test_read_model_and_scaled_values() -> None:
    link = MemoryLink({})
    link.load(1, 40000, sunspec_image(MODELS))
    _, models = await discover(link, 1)
    values = await read_model(link, 1, models[1])
    assert values["W"] == 4200
    assert values["A"] is None
    assert scaled(values, 103, "TmpCab") == pytest.approx(41.5)
    common = await read_model(link, 1, models[0])
    assert common["Mn"] == "derbus"


def test_the_shipped_map_only_names_points_pysunspec2_defines() -> None:
    sunspec_map = load_sunspec_map("sunspec_inverter_storage")
    for fields in sunspec_map.kinds.values():
        for spec in fields.values():
            for ref in spec.points:
                mid, _, name = ref.partition(".")
                assert name in model_points(int(mid)), ref
