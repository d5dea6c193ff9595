"""`make run` without Docker: the embedded amqtt broker works, and `derbus up` brings every API up."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from derbus import topics
from derbus.bus import MqttBus, RawMessage
from derbus.settings import MqttSettings
from derbus.testing import free_port, wait_for
from derbus.testing.servers import _wait_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def amqtt_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "derbus.embedded_broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port("127.0.0.1", port, 20, "amqtt", proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_embedded_amqtt_broker_carries_retained_qos1(
    amqtt_port: int, topic_root: str
) -> None:
    settings = MqttSettings(port=amqtt_port, root=topic_root, protocol="3.1.1")  # amqtt: no MQTT 5
    pub, sub = MqttBus(settings), MqttBus(settings)
    await pub.connect()
    topic = topics.METER.topic("s1", "pcc", topic_root)
    await pub.publish(topic, b"retained", qos=1, retain=True)
    await sub.connect()
    got: list[RawMessage] = []

    async def record(message: RawMessage) -> None:
        got.append(message)

    await sub.subscribe(topics.METER.filter(root=topic_root), 1, record)
    await wait_for(lambda: [m.payload for m in got] == [b"retained"], 10)
    await pub.publish(topic, b"live", qos=1)
    await wait_for(lambda: [m.payload for m in got] == [b"retained", b"live"], 10)
    await pub.close()
    await sub.close()


def test_derbus_up_every_api_ready_within_30_s() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "derbus.cli",
            "up",
            "--repo",
            str(REPO),
            "--mqtt-port",
            str(free_port()),
            "--free-ports",  # so a `make run` on 8101… does not collide with the test
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    ready_lines = [line for line in result.stdout.splitlines() if line.endswith("/docs  ready")]
    assert len(ready_lines) == 9, result.stdout  # eight services and the feeder simulation
    assert "NOT READY" not in result.stdout
