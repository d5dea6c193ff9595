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
from derbus.watch import WatchState

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROOT = "w/t"


def raw(spec: topics.TopicSpec, site: str, device: str, message: object) -> RawMessage:  # type: ignore[type-arg]
    return RawMessage(spec.topic(site, device, ROOT), message.to_json_bytes())  # type: ignore[attr-defined]


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
    state.update(raw(topics.SERVICE_STATUS, "platform", "ps",
                     ServiceStatus(ts=T0, source="ps", service="ps", state="degraded", reason="solver")))  # fmt: skip
    state.update(RawMessage(topics.METER.topic("s1", "pcc", ROOT), b"garbage"))
    assert state.sites["s1"].pcc_kw == -2.5
    assert state.sites["s1"].pv_kw == 4.0
    assert state.sites["s2"].soc_pct == 61.5
    assert state.services["ps"].state == "degraded"
    state.update(raw(topics.FEEDER_STATE, "ieee123", "feeder", FeederState(
        ts=T0, source="sim", feeder_id="ieee123", step=48, v_pu={"b1": [1.01, None, 1.06]},
        pv_available_kw={"pv1": 10.0}, pv_output_kw={"pv1": 7.0})))  # fmt: skip
    assert state.invalid == 1
    assert state.messages == 6
    assert "ieee123" not in state.sites, "a feeder is shown as a feeder, not as a site"
    assert state.feeders["ieee123"].step == 48
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(state.render())
    text = console.export_text()
    assert "1.0600" in text  # the feeder's highest voltage
    assert "-2.50" in text  # site s1's PCC power
