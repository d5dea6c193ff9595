"""Service status on a real broker: the `offline` of a lost connection never orders before `online`.

A service process is killed with SIGKILL (no goodbye): the broker publishes its last will, built
when the connection was made, whose (incarnation, seq) orders after every status the service
published on that connection. After a broker restart the service says `online` again, ordered
after the previous connection's will.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from derbus import topics
from derbus.bus import GmqttBus, MqttBus, RawMessage
from derbus.messages import ServiceStatus
from derbus.service import Service
from derbus.settings import MqttSettings
from derbus.testing import MosquittoServer, wait_for
from derbus.testing.example import EchoSettings, build_echo

SERVICE_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from derbus.bus import make_bus
    from derbus.settings import MqttSettings
    from derbus.testing.example import EchoSettings, build_echo

    async def main() -> None:
        mqtt = MqttSettings(
            host="127.0.0.1", port=int(sys.argv[1]), root=sys.argv[2], client=sys.argv[3],
            will_delay_s=0, keepalive_s=5,
        )
        settings = EchoSettings(mqtt=mqtt)
        service = build_echo(settings, make_bus(mqtt, "echo", site_id=settings.site.id))
        await service.start()
        print("started", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


class Statuses:
    def __init__(self) -> None:
        self.items: list[ServiceStatus] = []

    async def __call__(self, message: RawMessage) -> None:
        if message.payload:
            self.items.append(ServiceStatus.model_validate_json(message.payload))

    def states(self) -> list[str]:
        return [s.state for s in self.items]


def settings_for(server: MosquittoServer, root: str, client: str) -> MqttSettings:
    return MqttSettings(
        host=server.host,
        port=server.port,
        root=root,
        client=client,  # type: ignore[arg-type]
        reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=1.0,
        keepalive_s=5,
        will_delay_s=0,
    )


@pytest.mark.parametrize("client", ["gmqtt", "paho"])
async def test_offline_of_a_killed_process_orders_after_its_online(
    restartable_broker: MosquittoServer, topic_root: str, client: str
) -> None:
    settings = settings_for(restartable_broker, topic_root, client)
    watcher = GmqttBus(settings)
    await watcher.connect()
    statuses = Statuses()
    status_topic = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "echo", topic_root)
    await watcher.subscribe(status_topic, 1, statuses)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE_PROCESS, str(restartable_broker.port), topic_root, client],
        stdout=subprocess.PIPE,
    )
    try:
        await wait_for(lambda: "online" in statuses.states(), 60, message="the service online")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        await wait_for(lambda: "offline" in statuses.states(), 30, message="the last will")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    online = next(s for s in statuses.items if s.state == "online")
    offline = statuses.items[-1]
    assert offline.state == "offline"
    assert offline.reason == "connection lost (last will)"
    assert offline.incarnation == online.incarnation
    assert offline.order_key() > online.order_key()
    # the newest by (incarnation, seq) is the offline, whatever the timestamps say
    assert max(statuses.items, key=ServiceStatus.order_key).state == "offline"

    late = GmqttBus(settings)
    retained = Statuses()
    await late.connect()
    await late.subscribe(status_topic, 1, retained)
    await wait_for(lambda: retained.states() == ["offline"], 10, message="retained offline")
    await late.close()
    await watcher.close()


@pytest.mark.parametrize("bus_class", [GmqttBus, MqttBus])
async def test_status_after_a_broker_restart_orders_after_the_previous_will(
    restartable_broker: MosquittoServer, topic_root: str, bus_class: Any
) -> None:
    settings = settings_for(restartable_broker, topic_root, "gmqtt")
    echo = EchoSettings(mqtt=settings)
    service: Service[EchoSettings] = build_echo(
        echo, bus_class(settings, client_id=settings.derived_client_id("echo", echo.site.id))
    )
    await service.start()
    restartable_broker.stop()
    await wait_for(lambda: not service.bus.connected, 15, message="the outage noticed")
    restartable_broker.start()
    await wait_for(lambda: service.bus.connected, 30, message="reconnected")

    late = GmqttBus(settings)
    retained = Statuses()
    await late.connect()
    status_topic = topics.SERVICE_STATUS.topic(topics.PLATFORM_SITE, "echo", topic_root)
    await late.subscribe(status_topic, 1, retained)
    # Mosquitto may publish the lost connection's will after its restart; the service's own
    # status of the new connection comes after it and orders after it.
    await wait_for(
        lambda: bool(retained.items) and retained.items[-1].state == "online",
        15,
        message="online retained again",
    )
    newest = retained.items[-1]
    assert newest.seq is not None
    assert newest.seq >> 32 == 2  # numbered on the second connection
    will_of_first = (1 << 32) | 0xFFFFFFFF
    assert newest.order_key() > (service.incarnation, will_of_first)
    await late.close()
    await service.stop()


async def test_bus_counters_are_on_the_service_metrics() -> None:
    from prometheus_client import generate_latest

    from derbus.bus import InMemoryBroker, InMemoryBus

    broker = InMemoryBroker()
    bus = InMemoryBus(broker, client_id="echo", max_queued=5)
    service = build_echo(EchoSettings(), bus)
    await service.start()
    broker.stop()
    for _ in range(3):
        await bus.publish("der/v1/s1/telemetry/pcc/meter", b"{}", qos=1)
    await bus.publish("der/v1/s1/telemetry/pcc/meter", b"{}", qos=0)
    text = generate_latest(service.metrics.registry).decode()
    assert "derbus_bus_queued 3.0" in text
    assert "derbus_bus_queue_limit 5.0" in text
    assert "derbus_bus_dropped_qos0 1.0" in text
    assert "derbus_bus_connections 1.0" in text
    broker.start()
    text = generate_latest(service.metrics.registry).decode()
    assert "derbus_bus_queued 0.0" in text
    assert "derbus_bus_connections 2.0" in text
    await service.stop()
