"""The coordinator and the feeder simulation wired on an in-memory bus; the REST endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from paho.mqtt.client import topic_matches_sub

from derbus import acl, topics
from derbus.bus import InMemoryBroker, InMemoryBus
from derbus.errors import ConfigError, SolverError
from derbus.http import make_app
from derbus.messages import PvCurtailmentSet
from derbus.settings import load_settings
from derbus.testing import BusRecorder, wait_for
from voltage_coordinator.agents import build_area_agent
from voltage_coordinator.feeder import Feeder
from voltage_coordinator.service import build_service
from voltage_coordinator.settings import Settings
from voltage_coordinator.sim_service import build_feeder_sim
from voltage_coordinator.state import setpoint_dir


@pytest.mark.parametrize("mode", ["centralised", "distributed"])
async def test_state_in_limits_out(ieee123: Feeder, mode: str, tmp_path: Path) -> None:
    broker = InMemoryBroker()
    # the bias settles on the coordinator's AC model: one cycle from an uncurtailed start
    settings = Settings(
        mode=mode, sim_start_step=58, sim_hold_step=True, sim_interval_s=3600, data_dir=tmp_path
    )
    sim = build_feeder_sim(settings, InMemoryBus(broker), ieee123)
    vc = build_service(settings, InMemoryBus(broker), ieee123)
    probe = InMemoryBus(broker)
    await probe.connect()
    sent: BusRecorder[PvCurtailmentSet] = BusRecorder(topics.PV_CURTAILMENT, settings.mqtt.root)
    await sent.attach(probe, "ieee123", "coordinator")
    await vc.start()
    await sim.start()  # publishes the first state at once
    await wait_for(lambda: vc.state.latest is not None, 10, message="state")
    await vc.run_task("solve")
    await sent.wait(1)
    assert len(sent.values) == 1
    batch = sent.values[0]
    assert batch.priority.value == "grid_operator"
    assert batch.ttl_s == settings.setpoint_ttl_s
    state = sim.state
    # the sim applies the limits and re-solves: inside the band
    await wait_for(lambda: state.last is not None and state.last.max_pu <= 1.05, 10)
    decision = vc.state.decision
    assert decision.method == ("centralised" if mode == "centralised" else "distributed-sweep")
    assert len(set(round(f, 9) for f in decision.curtailment.fraction.values())) == 1
    # one setpoint file per area, together every PV with the limit that was sent
    files = sorted(setpoint_dir(settings, "ieee123").glob("*.json"))
    assert [f.stem for f in files] == sorted(a.id for a in ieee123.areas)
    sent_pvs: dict[str, float] = {}
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["area_id"] == f.stem
        assert doc["step"] == 58
        sent_pvs.update({pid: pv["limit_kw"] for pid, pv in doc["pvs"].items()})
    assert sent_pvs == batch.limits_kw
    await sim.stop()
    await vc.stop()
    with pytest.raises(SolverError, match="closed"):  # stop released the engine (after its solve)
        state.ac.solve(1.0, {})


@pytest.fixture
def client(ieee123: Feeder) -> Iterator[TestClient]:
    service = build_service(Settings(), InMemoryBus(), ieee123)
    with TestClient(make_app(service)) as test_client:
        yield test_client


def test_rest_before_any_state(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/setpoints").json() == {"feeder_id": "ieee123", "published": False}
    assert "measured_pu" not in client.get("/voltages").json()
    assert client.get("/plot.png").status_code == 404


def test_config_change_and_refusal(client: TestClient) -> None:
    assert client.put("/config", json={"margin_pu": 0.004}).status_code == 200
    refused = client.put("/config", json={"v_max_pu": 0.9})
    assert refused.status_code == 422


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="distributed_method"):
        load_settings(Settings, mode="distributed", distributed_method="admm", fairness="equal_kw")
    assert load_settings(Settings, mode="agents", fairness="equal_kw").fairness == "equal_kw"


def _may(user: str, access: str, topic: str) -> bool:
    return any(
        access in rule.access and topic_matches_sub(rule.topic, topic)
        for rule in acl.user_rules(user)
    )


def test_sim_and_area_agents_run_as_users_the_generated_acl_allows(ieee123: Feeder) -> None:
    sim = build_feeder_sim(Settings(), InMemoryBus(), ieee123)
    sim.state.close()
    agent = build_area_agent(Settings(), InMemoryBus(), "area3", ieee123)
    vc = build_service(Settings(), InMemoryBus(), ieee123)
    assert (sim.name, agent.name, vc.name) == ("feeder_sim", "voltage_area", "voltage_coordinator")
    root = topics.DEFAULT_ROOT
    writes = {
        sim.name: [
            topics.FEEDER_STATE.topic("ieee123", "feeder", root),
            topics.SETPOINT_ACK.topic("ieee123", "feeder", root),
        ],
        agent.name: [topics.AREA_EXCHANGE.topic("ieee123", "area3", root)],
        vc.name: [
            topics.PV_CURTAILMENT.topic("ieee123", "coordinator", root),
            topics.AREA_EXCHANGE.topic("ieee123", "coordinator", root),
        ],
    }
    reads = {
        sim.name: [topics.PV_CURTAILMENT.topic("ieee123", "coordinator", root)],
        agent.name: [
            topics.FEEDER_STATE.topic("ieee123", "feeder", root),
            topics.AREA_EXCHANGE.topic("ieee123", "area1", root),
        ],
        vc.name: [
            topics.FEEDER_STATE.topic("ieee123", "feeder", root),
            topics.AREA_EXCHANGE.topic("ieee123", "area1", root),
        ],
    }
    for user, names in writes.items():
        status = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, user, root)
        assert all(_may(user, "write", t) for t in [*names, status]), user
    for user, names in reads.items():
        assert all(_may(user, "read", t) for t in names), user
    # the simulation does not impersonate the coordinator
    assert not _may(sim.name, "write", topics.PV_CURTAILMENT.topic("ieee123", "coordinator", root))
