"""The SunSpec image: layout from pysunspec2, encoding, and control writes read as setpoints."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sunspec2 import device as ss_device

from derbus.messages import Priority
from edge_simulator.modbus import fill_image, init_image, request_from_image
from edge_simulator.output import StepView
from edge_simulator.sunspec import END_MODEL_ID, MODEL_IDS, SUNS_MARKER, Image, build_layout
from edge_simulator.testing import T0, make_fleet


def test_layout_follows_the_model_definitions() -> None:
    layout = build_layout()
    assert [b.model_id for b in layout.blocks] == list(MODEL_IDS)
    addr = 40002
    for block in layout.blocks:
        points = ss_device.get_model_def(block.model_id, mapping=False)["group"]["points"]
        assert block.address == addr
        assert block.length == sum(int(p.get("size", 1)) for p in points) - 2
        addr += block.length + 2
    assert {b.model_id: b.length for b in layout.blocks}[103] == 50  # the standard lengths
    assert {b.model_id: b.length for b in layout.blocks}[203] == 105


def test_image_scans_like_a_sunspec_device() -> None:
    layout = build_layout()
    fleet = make_fleet()
    image = init_image(layout, fleet, 0)
    fill_image(image, StepView(fleet.step(T0 + timedelta(hours=10), 60.0)), 0, fleet)
    regs = image.registers
    assert tuple(regs[0:2]) == SUNS_MARKER
    # walk the chain of models the way a SunSpec client does
    off, seen = 2, []
    while regs[off] != END_MODEL_ID:
        seen.append(regs[off])
        off += regs[off + 1] + 2
    assert seen == list(MODEL_IDS)
    assert regs[off + 1] == 0


def test_values_round_trip_with_their_scale_factors() -> None:
    layout = build_layout()
    fleet = make_fleet()
    r = fleet.step(T0 + timedelta(hours=10), 60.0)
    image = init_image(layout, fleet, 0)
    fill_image(image, StepView(r), 0, fleet)
    assert image.get(203, "W") == pytest.approx(round(r.pcc_p_kw[0] * 1000))
    assert image.get(802, "SoC") == pytest.approx(r.battery_soc_pct[0], abs=0.05)
    assert image.get(103, "W") == pytest.approx(round(r.pv_generation_kw[0] * 1000))
    assert image.get(802, "W") == pytest.approx(round(r.battery_p_kw[0] * 1000))
    assert image.get(124, "WChaMax") == 5000


@pytest.mark.parametrize(
    ("mode", "in_pct", "out_pct", "expected_kw"),
    [(1, 40.0, 0.0, 2.0), (2, 0.0, 60.0, -3.0), (0, 40.0, 0.0, None)],
)
def test_storage_control_writes_become_battery_setpoints(
    mode: int, in_pct: float, out_pct: float, expected_kw: float | None
) -> None:
    layout = build_layout()
    image = init_image(layout, make_fleet(), 0)
    image.set(124, "InWRte", in_pct)
    image.set(124, "OutWRte", out_pct)
    image.set_raw(124, "InOutWRte_RvrtTms", 90)
    image.set_raw(124, "StorCtl_Mod", mode)
    req = request_from_image(image, 124, 1, T0, Priority.MANUAL, 60.0)
    assert req.device_id == "battery"
    if expected_kw is None:
        assert req.command is None  # a cancellation
    else:
        assert req.command is not None
        assert req.command.value == pytest.approx(expected_kw)
        assert req.command.ttl_s == 90


def test_both_storage_modes_at_once_are_refused_and_pv_limit_reads_percent() -> None:
    layout = build_layout()
    image = init_image(layout, make_fleet(), 0)
    image.set_raw(124, "StorCtl_Mod", 3)
    assert request_from_image(image, 124, 1, T0, Priority.MANUAL, 60.0).error
    image.set(123, "WMaxLimPct", 42.5)
    image.set_raw(123, "WMaxLim_Ena", 1)
    req = request_from_image(image, 123, 1, T0, Priority.GRID_OPERATOR, 60.0)
    assert req.command is not None
    assert (req.command.target, req.command.value, req.command.ttl_s) == (
        "pv_limit_pct",
        42.5,
        60.0,
    )
    assert req.command.priority == Priority.GRID_OPERATOR


def test_empty_image_marks_unimplemented_points() -> None:
    image = Image(build_layout())
    point = image.layout.point(103, "TmpSnk")
    assert image.registers[point.address - 40000] == 0x8000  # int16 "not implemented"
