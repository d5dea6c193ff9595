"""The service runtime on both buses: typed handlers, dead letters, degraded on errors, tasks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from derbus import topics
from derbus.bus import Bus, InMemoryBus
from derbus.errors import ConfigError
from derbus.messages import DeadLetter, MeterReading, ServiceStatus
from derbus.service import Context, Service
from derbus.settings import ServiceSettings
from derbus.testing import BusRecorder, wait_for
from derbus.testing.example import Echo, EchoSettings, build_echo

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def reading(p_kw: float) -> bytes:
    return MeterReading(ts=T0, source="t", p_kw=p_kw).to_json_bytes()


@contextlib.asynccontextmanager
async def echo_with_publisher(
    harness: Any,
) -> AsyncIterator[tuple[Service[EchoSettings, Echo], Bus]]:
    """The echo service started on the harness's bus and a connected publisher, stopped after."""
    service = build_echo(EchoSettings(mqtt={"root": harness.root}), harness.client())
    await service.start()
    pub = harness.client()
    await pub.connect()
    try:
        yield service, pub
    finally:
        await service.stop()
        await pub.close()


async def test_handler_receives_validated_model_and_ids(harness: Any) -> None:
    async with echo_with_publisher(harness) as (service, pub):
        await pub.publish(topics.METER.topic("s9", "pcc", harness.root), reading(7.5))
        await wait_for(lambda: service.state.over == [("s9", "pcc", 7.5)], 10)


async def test_malformed_payload_is_dead_lettered_and_consumption_continues(harness: Any) -> None:
    async with echo_with_publisher(harness) as (service, pub):
        letters: BusRecorder[DeadLetter] = BusRecorder(topics.DEAD_LETTER, harness.root)
        await letters.attach(pub)
        topic = topics.METER.topic("s1", "pcc", harness.root)
        await pub.publish(topic, b"{not json")
        naive_ts = b'{"ts": "2026-06-01T12:00:00", "source": "x", "p_kw": 1}'
        await pub.publish(topic, naive_ts)
        await pub.publish(topic, reading(9.0))
        await wait_for(lambda: len(service.state.over) == 1, 10)
        got = await letters.wait(2)
        assert {d.original_topic for d in got} == {topic}
        assert any("timezone-aware" in d.error for d in got)
        assert got[0].payload == "{not json"
        invalid = service.metrics.registry.get_sample_value(
            "derbus_messages_invalid_total", {"topic": "telemetry.meter"}
        )
        assert invalid == 2


async def test_handler_exception_degrades_then_recovers(harness: Any) -> None:
    async with echo_with_publisher(harness) as (service, pub):
        statuses: BusRecorder[ServiceStatus] = BusRecorder(topics.SERVICE_STATUS, harness.root)
        await statuses.attach(pub)
        topic = topics.METER.topic("s1", "pcc", harness.root)
        await pub.publish(topic, reading(13))
        await wait_for(lambda: any(s.state == "degraded" for s in statuses.values), 10)
        assert "unlucky reading" in (service.status().reason or "")
        await pub.publish(topic, reading(6))
        await wait_for(lambda: service.state.over == [("s1", "pcc", 6.0)], 10)
        await wait_for(lambda: statuses.values[-1].state == "online", 10)
        assert (
            service.metrics.registry.get_sample_value(
                "derbus_handler_errors_total", {"handler": "on_meter"}
            )
            == 1
        )


async def test_periodic_task_runs_and_failure_degrades(harness: Any) -> None:
    service = Service("ticker", EchoSettings(mqtt={"root": harness.root}), harness.client())
    calls: list[int] = []

    @service.every(0.01)
    def tick(ctx: Context) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("third tick fails")

    await service.start()
    await wait_for(lambda: len(calls) >= 5, 10)
    assert service.status().state == "online"  # recovered on the next good tick
    assert (
        service.metrics.registry.get_sample_value(
            "derbus_handler_errors_total", {"handler": "tick"}
        )
        == 1
    )
    await service.stop()


async def test_update_config_validates_and_names_the_field() -> None:
    from derbus.bus import InMemoryBus

    service = build_echo(EchoSettings(), InMemoryBus())
    new = await service.update_config({"limit_kw": 9.0})
    assert new.limit_kw == 9.0
    with pytest.raises(ConfigError, match="limit_kw") as info:
        await service.update_config({"limit_kw": -1})
    assert info.value.fields == ("limit_kw",)
    with pytest.raises(ConfigError, match="floor_kw must be below"):
        await service.update_config({"floor_kw": 10.0})
    assert service.settings.floor_kw == -5.0, "a refused change leaves the settings as they were"
    with pytest.raises(ConfigError, match="api_port: field cannot be changed"):
        await service.update_config({"api_port": 9})
    with pytest.raises(ConfigError, match="nonsense: unknown field"):
        await service.update_config({"nonsense": 1})


def test_service_carries_its_typed_state_object() -> None:
    """A service's state is the object its builder gives it (typed), not an ad-hoc dict."""

    class Counts:
        def __init__(self) -> None:
            self.seen = 0

    counts = Counts()
    service: Service[ServiceSettings, Counts] = Service(
        "typed", ServiceSettings(), InMemoryBus(), state=counts
    )
    service.state.seen += 1
    assert service.state is counts
    assert counts.seen == 1


async def test_raw_handler_gets_the_undecoded_payload_with_its_ids(harness: Any) -> None:
    service: Service[ServiceSettings] = Service(
        "rawsvc", ServiceSettings(mqtt={"root": harness.root}), harness.client()
    )
    got: list[tuple[bytes, str | None, str | None]] = []

    @service.on_raw(topics.METER)
    def on_meter(raw: Any, ctx: Context) -> None:  # validation is the handler's own business
        got.append((raw.payload, ctx.site_id, ctx.device_id))

    await service.start()
    pub = harness.client()
    await pub.connect()
    await pub.publish(topics.METER.topic("s3", "pcc", harness.root), b"{not json")
    await pub.publish(topics.METER.topic("s3", "pcc", harness.root), reading(1.0))
    await wait_for(lambda: len(got) == 2, 10)
    assert got[0] == (b"{not json", "s3", "pcc")
    assert got[1][0] == reading(1.0)
    counted = service.metrics.registry.get_sample_value(
        "derbus_messages_in_total", {"topic": "telemetry.meter"}
    )
    assert counted == 2
    assert (
        service.metrics.registry.get_sample_value(
            "derbus_messages_invalid_total", {"topic": "telemetry.meter"}
        )
        is None
    )
    assert [s["handler"] for s in service.subscriptions()] == ["on_meter"]
    await service.stop()
    await pub.close()


async def test_replicas_sharding_sites_each_handle_their_own_and_every_site_once(
    harness: Any,
) -> None:
    """Two replicas with `shard_sites(0, 2)` / `(1, 2)`: every site on exactly one of them,
    both busy; platform-wide messages reach both."""
    seen: list[list[str]] = [[], []]
    replicas = []
    for k in range(2):
        service: Service[ServiceSettings] = Service(
            "sharded", ServiceSettings(mqtt={"root": harness.root}), harness.client()
        )
        service.shard_sites(k, 2)

        @service.on(topics.METER)
        async def on_meter(msg: MeterReading, ctx: Context, k: int = k) -> None:
            seen[k].append(ctx.site_id)

        await service.start()
        replicas.append(service)
    pub = harness.client()
    await pub.connect()
    sites = [f"s{i}" for i in range(20)] + [topics.PLATFORM_SITE]
    for site in sites:
        await pub.publish(topics.METER.topic(site, "pcc", harness.root), reading(1.0))
    await wait_for(lambda: len(seen[0]) + len(seen[1]) == len(sites) + 1, 10)
    assert sorted(seen[0] + seen[1]) == sorted([*sites, topics.PLATFORM_SITE])
    assert set(seen[0]) & set(seen[1]) == {topics.PLATFORM_SITE}
    assert len(seen[0]) > 1
    assert len(seen[1]) > 1
    assert all(r.owns_site(s) for r, got in zip(replicas, seen, strict=True) for s in got)
    with pytest.raises(ValueError, match=r"index must be in 0\.\.1"):
        replicas[0].shard_sites(2, 2)
    for service in replicas:
        await service.stop()
    await pub.close()
