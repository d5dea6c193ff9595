"""Both MQTT buses on a 3-node NATS JetStream cluster (MQTT 3.1.1): failover when a node dies.

The bus takes the cluster's endpoints (`MQTT_BROKERS`); its session (subscriptions, QoS 1
messages queued for it) lives in JetStream, replicated on the three nodes, so a client that
loses its node reconnects to another and misses nothing. What was published during the failover
is queued by the publisher's bus and sent once it is connected again.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from derbus import topics
from derbus.bus import Bus, GmqttBus, MqttBus, RawMessage
from derbus.settings import MqttSettings
from derbus.testing import ComponentUnavailableError, NatsCluster, free_port, wait_for
from derbus.testing.servers import NatsNode


class Inbox:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    async def __call__(self, message: RawMessage) -> None:
        self.payloads.append(message.payload)


def make(kind: str, cluster: NatsCluster, root: str, client_id: str, first: int) -> Bus:
    """A bus on the cluster whose endpoint list starts at node `first`."""
    nodes = cluster.nodes[first:] + cluster.nodes[:first]
    settings = MqttSettings(
        brokers=",".join(n.endpoint for n in nodes),
        protocol="3.1.1",
        root=root,
        connect_retries=5,
        reconnect_min_delay_s=0.2,
        reconnect_max_delay_s=1.0,
        keepalive_s=5,
    )
    if kind == "gmqtt":
        return GmqttBus(settings, client_id=client_id)
    return MqttBus(settings, client_id=client_id)


@pytest.mark.parametrize("kind", ["gmqtt", "paho"])
async def test_failover_when_the_node_of_both_clients_is_killed(
    nats_cluster: NatsCluster, topic_root: str, kind: str
) -> None:
    sub = make(kind, nats_cluster, topic_root, f"sub-{kind}-{topic_root[-6:]}", 0)
    pub = make(kind, nats_cluster, topic_root, f"pub-{kind}-{topic_root[-6:]}", 0)
    inbox = Inbox()
    await sub.connect()
    await sub.subscribe(topics.METER.filter(root=topic_root), 1, inbox)
    await pub.connect()
    node = nats_cluster.node_at(sub.stats.endpoint)
    assert pub.stats.endpoint == node.endpoint
    topic = topics.METER.topic("s1", "pcc", topic_root)
    sent = [f"m{i}".encode() for i in range(30)]
    for payload in sent[:10]:
        await pub.publish(topic, payload, qos=1)
    await wait_for(lambda: len(set(inbox.payloads)) == 10, 30, message="before the kill")

    nats_cluster.kill_node(node)
    for payload in sent[10:20]:
        await pub.publish(topic, payload, qos=1)  # queued by the bus until it has failed over
    await wait_for(
        lambda: all(b.connected and b.stats.endpoint != node.endpoint for b in (sub, pub)),
        60,
        message="both failed over to another node",
    )
    for payload in sent[20:]:
        await pub.publish(topic, payload, qos=1)
    await wait_for(lambda: set(inbox.payloads) == set(sent), 60, message="every message, none lost")
    await wait_for(lambda: pub.stats.queued == 0, 30, message="every publish acknowledged")
    assert sub.stats.reconnects >= 1
    await sub.close()
    await pub.close()


@pytest.mark.parametrize("kind", ["gmqtt", "paho"])
async def test_session_kept_on_another_node_while_the_client_is_away(
    nats_cluster: NatsCluster, topic_root: str, kind: str
) -> None:
    """A client that comes back on another node finds what was sent while it was away."""
    client_id = f"away-{kind}-{topic_root[-6:]}"
    first = make(kind, nats_cluster, topic_root, client_id, 0)
    await first.connect()
    await first.subscribe(topics.SETPOINT.filter(root=topic_root), 1, Inbox())
    await first.close()
    pub = make(kind, nats_cluster, topic_root, f"pub-{kind}-{topic_root[-6:]}", 1)
    await pub.connect()
    await pub.publish(topics.SETPOINT.topic("s1", "bat", topic_root), b"held", qos=1)
    await wait_for(lambda: pub.stats.queued == 0, 30, message="the cluster took the message")
    back = make(kind, nats_cluster, topic_root, client_id, 2)
    inbox = Inbox()
    await back.connect()
    await back.subscribe(topics.SETPOINT.filter(root=topic_root), 1, inbox)
    assert back.stats.endpoint == nats_cluster.nodes[2].endpoint
    await wait_for(lambda: inbox.payloads == [b"held"], 30, message="the held message")
    await back.close()
    await pub.close()


def test_a_node_that_cannot_bind_fails_the_start_at_once_with_its_reason() -> None:
    """The CI failure "n1 did not accept MQTT sessions within 60 s": another node had died.

    The MQTT streams need all 3 replicas, so with one node gone the others never accept a
    session. A port taken between the choice and the bind kills a node; the start says so.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster = NatsCluster()
        for i in range(3):
            cluster.nodes.append(
                NatsNode(
                    f"n{i + 1}",
                    free_port(),
                    free_port(),
                    free_port(),
                    cluster.base_dir / f"n{i + 1}",
                )
            )
        cluster.nodes[1].client_port = taken.getsockname()[1]
        try:
            with pytest.raises(
                ComponentUnavailableError, match=r"n2 exited .*address already in use"
            ):
                cluster.start()
        finally:
            cluster.cleanup()


def test_free_ports_lie_below_the_ephemeral_range_and_differ() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p < low for p in ports)
