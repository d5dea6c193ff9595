"""The fast telemetry payloads against the derbus models (every message type, whole days)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from edge_simulator.fleet import Overrides, run
from edge_simulator.output import StepView
from edge_simulator.settings import ALL_DEVICES
from edge_simulator.sim_config import SimConfig
from edge_simulator.testing import T0, make_fleet
from edge_simulator.wire import DEVICE_IDS, DEVICES, encode_step


def test_device_table_is_the_contract() -> None:
    assert DEVICE_IDS == ALL_DEVICES


def test_every_payload_validates_and_equals_the_model_of_the_same_step() -> None:
    fleet = make_fleet(n_sites=3, config=SimConfig.model_validate({"size_spread": 0.3}))
    results = run(fleet, T0, T0 + timedelta(days=2), 1800)
    ovr = Overrides.none(3)
    ovr.pv_limit_kw[1] = 1.5  # one site curtailed: limit_kw is a number there, null elsewhere
    ovr.load1_on[2] = 1.0
    results.append(fleet.step(T0 + timedelta(days=2, hours=1), 600, ovr))
    checked = 0
    for r in results:
        payloads = encode_step(r, "edge_simulator")
        view = StepView(r)
        for i in range(3):
            reference = view.messages(i, "edge_simulator", validate=True)
            for k, (device, ref) in enumerate(zip(DEVICES, reference, strict=True)):
                assert (device.spec, device.device_id) == (ref.spec, ref.device_id)
                parsed = device.spec.model.from_json_bytes(payloads[k][i])  # validates
                assert parsed == ref.message
                checked += 1
    assert checked == len(results) * 3 * 8
    assert b'"limit_kw":1.5' in encode_step(results[-1], "s")[1][1]


def test_a_subset_of_sites_and_devices() -> None:
    fleet = make_fleet(n_sites=4)
    r = fleet.step(T0 + timedelta(hours=12), 60)
    meter = [d for d in DEVICES if d.device_id == "pcc"]
    (payloads,) = encode_step(r, "x", meter, sites=[3, 1])
    values = [meter[0].spec.model.from_json_bytes(p).p_kw for p in payloads]
    assert values == [r.pcc_p_kw[3], r.pcc_p_kw[1]]


def test_an_infinite_value_is_refused_not_sent() -> None:
    fleet = make_fleet(n_sites=2)
    r = fleet.step(T0 + timedelta(hours=12), 60)
    r.pcc_p_kw[0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        encode_step(r, "x")
