"""The derbus CLI (topics) and the watch view's state."""

from datetime import UTC, datetime

from typer.testing import CliRunner

from derbus import topics
from derbus.bus import RawMessage
from derbus.cli import app
from derbus.messages import (
    BatteryTelemetry,
    FeederState,
    MeterReading,
    PvTelemetry,
    ServiceStatus,
)
from derbus.testing import setpoint_command, time_series
from derbus.watch import WatchState

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROOT = "w/t"


def raw(spec: topics.TopicSpec, site: str, device: str, message: object) -> RawMessage:  # type: ignore[type-arg]
    return RawMessage(spec.topic(site, device, ROOT), message.to_json_bytes())  # type: ignore[attr-defined]


def feeder(step: int, v_b1_pu: list[float | None]) -> RawMessage:
    """Feeder ieee123's state at `step`: bus b1's phase voltages, PV 7 of 10 kW."""
    state = FeederState(
        ts=T0,
        source="sim",
        feeder_id="ieee123",
        step=step,
        v_pu={"b1": v_b1_pu},
        pv_available_kw={"pv1": 10.0},
        pv_output_kw={"pv1": 7.0},
    )
    return raw(topics.FEEDER_STATE, "ieee123", "feeder", state)


def test_topics_markdown_is_the_catalogue() -> None:
    result = CliRunner().invoke(app, ["topics", "--markdown"])
    assert result.exit_code == 0
    assert result.output == topics.catalogue_markdown()


def test_watch_state_folds_messages_per_site() -> None:
    state = WatchState(root=ROOT)
    state.update(raw(topics.METER, "s1", "pcc", MeterReading(ts=T0, source="x", p_kw=-2.5)))
    state.update(raw(topics.PV, "s1", "pv", PvTelemetry(ts=T0, source="x", generation_kw=4.0)))
    state.update(
        raw(
            topics.BATTERY,
            "s2",
            "battery",
            BatteryTelemetry(ts=T0, source="x", p_kw=1.0, soc_pct=61.5),
        )
    )
    state.update(
        raw(
            topics.SERVICE_STATUS,
            "platform",
            "ps",
            ServiceStatus(ts=T0, source="ps", service="ps", state="degraded", reason="solver"),
        )
    )
    state.update(RawMessage(topics.METER.topic("s1", "pcc", ROOT), b"garbage"))
    assert state.sites["s1"].pcc_kw == -2.5
    assert state.sites["s1"].pv_kw == 4.0
    assert state.sites["s2"].soc_pct == 61.5
    assert state.services["ps"].state == "degraded"
    # an edge gateway on site credentials reports at its site: a service, not a site view
    state.update(
        raw(
            topics.SERVICE_STATUS,
            "s3",
            "meter_gateway",
            ServiceStatus(ts=T0, source="gw", service="meter_gateway", state="online"),
        )
    )
    assert state.services["meter_gateway@s3"].state == "online"
    assert "meter_gateway" not in state.services
    assert "s3" not in state.sites
    state.update(feeder(48, [1.01, None, 1.06]))
    assert state.invalid == 1
    assert state.messages == 7
    assert "ieee123" not in state.sites, "a feeder is shown as a feeder, not as a site"
    assert state.feeders["ieee123"].step == 48
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(state.render())
    text = console.export_text()
    assert "1.0600" in text  # the feeder's highest voltage
    assert "-2.50" in text  # site s1's PCC power


def test_a_feeder_never_shows_as_a_site_even_when_its_kpis_come_first() -> None:
    from derbus.messages import KpiReport

    state = WatchState(root=ROOT)
    kpi = KpiReport(ts=T0, source="vc", name="voltage_coordinator", values={"curtailed_kw": 3.0})
    state.update(raw(topics.KPI, "ieee123", "voltage_coordinator", kpi))
    state.update(feeder(3, [1.02, None, None]))
    state.update(raw(topics.KPI, "ieee123", "voltage_coordinator", kpi))
    assert state.shown_sites() == {}
    assert state.feeder_views["ieee123"].kpis == {"curtailed_kw": 3.0}
    summary = state.summary(T0)
    assert "feeder ieee123: step 3, max V 1.0200 pu, PV 7 of 10 kW" in summary
    assert "site ieee123" not in summary


def test_the_summary_follows_a_site_along_the_chain() -> None:
    from derbus.messages import JobPlan, SetpointAck

    state = WatchState(root=ROOT)
    state.update(
        raw(topics.METER, "s1", "pcc", MeterReading(ts=T0, source="meter_gateway", p_kw=3.0))
    )
    bands = {"p10": [0.5], "p50": [1.0], "p90": [2.0]}
    forecast = time_series([1.0], T0, source="forecaster", quantiles=bands, model="cold_start")
    state.update(raw(topics.FORECAST, "s1", "load", forecast))
    schedule = time_series(
        [-1.5],
        T0,
        kind="schedule",
        quantity="battery_p_kw",
        source="peak_shaving",
        meta={"plan_status": "ok"},
    )
    state.update(raw(topics.BATTERY_SCHEDULE, "s1", "battery", schedule))
    first = setpoint_command(-1.5, T0, ttl_s=3, source="peak_shaving", setpoint_id="a")
    state.update(raw(topics.SETPOINT, "s1", "battery", first))
    summary = state.summary(T0)
    assert "PCC 3.00 kW (via meter_gateway)" in summary
    assert "forecasts: load cold_start±" in summary
    assert "setpoint: -1.50 kW from peak_shaving: no ack yet" in summary
    ack = SetpointAck(ts=T0, source="sim", setpoint_id="a", status="accepted", applied_value=-1.5)
    state.update(raw(topics.SETPOINT_ACK, "s1", "battery", ack))
    second = first.model_copy(update={"setpoint_id": "b", "value": -1.0})
    state.update(raw(topics.SETPOINT, "s1", "battery", second))  # not acked yet
    replaced = ack.model_copy(update={"status": "superseded", "reason": "replaced by b"})
    state.update(raw(topics.SETPOINT_ACK, "s1", "battery", replaced))  # the end of its life
    assert "setpoint: -1.50 kW from peak_shaving: accepted" in state.summary(T0)
    plan = JobPlan(
        ts=T0,
        source="load_manager",
        plan_id="p",
        jobs=[],
        horizon_start=T0,
        step_s=900,
        solve_status="optimal",
    )
    state.update(raw(topics.JOB_PLAN, "s1", "jobs", plan))
    assert "load manager: 0 jobs optimal" in state.summary(T0)
    assert state.sites["s1"].schedule is not None
