"""What broker security costs: Mosquitto throughput and latency, anonymous vs passwords + the generated ACL.

One publisher (a service user) sends N telemetry-sized JSON messages at QoS 1 on its own topics,
one subscriber (the SCADA user, `der/v1/#`) receives them; the same run on an anonymous broker
without ACL is the baseline. Also times a connect + CONNACK with a password (PBKDF2 check).

    .venv/bin/python bench/bench_security.py            # 20 000 messages x 3 runs
    .venv/bin/python bench/bench_security.py --quick    # 5 000 messages x 1 run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from derbus import acl, topics
from derbus.testing import MosquittoServer

PAYLOAD = (
    b'{"ts": "2026-06-01T12:00:00Z", "source": "edge_simulator", "p_kw": 3.217, '
    b'"q_kvar": 0.41, "v_l1_v": 231.2, "v_l2_v": 230.8, "v_l3_v": 232.0, "f_hz": 50.01}'
)


def client(port: int, user: str | None, password: str | None) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if user:
        c.username_pw_set(user, password)
    c.max_inflight_messages_set(1000)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("no CONNACK")
    return c


def run(port: int, n: int, creds: dict[str, str] | None) -> tuple[float, float, float]:
    """(msg/s, p50 latency ms, p99 latency ms) for n QoS 1 messages publisher -> subscriber."""
    sub = client(port, "scada" if creds else None, creds["scada"] if creds else None)
    got: list[float] = []
    sent: dict[int, float] = {}
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(time.perf_counter() - sent[int(msg.topic.split("/")[-2].split("-")[1])])
        if len(got) >= n:
            done.set()

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.subscribe(topics.all_topics_filter(), 1)
    subscribed.wait(10)
    pub = client(
        port, "edge_simulator" if creds else None, creds["edge_simulator"] if creds else None
    )
    start = time.perf_counter()
    for i in range(n):
        sent[i] = time.perf_counter()
        pub.publish(topics.METER.topic("site-1", f"m-{i}", topics.DEFAULT_ROOT), PAYLOAD, qos=1)
    if not done.wait(120):
        raise RuntimeError(f"only {len(got)} of {n} messages arrived")
    elapsed = time.perf_counter() - start
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    lat = sorted(x * 1000 for x in got)
    return n / elapsed, lat[len(lat) // 2], lat[int(len(lat) * 0.99)]


def connect_ms(port: int, creds: dict[str, str] | None, count: int = 20) -> float:
    times = []
    for _ in range(count):
        t = time.perf_counter()
        c = client(port, "scada" if creds else None, creds["scada"] if creds else None)
        times.append((time.perf_counter() - t) * 1000)
        c.disconnect()
        c.loop_stop()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, runs = (5_000, 1) if args.quick else (20_000, 3)
    folder = Path(tempfile.mkdtemp(prefix="derbus-bench-sec-"))
    creds = {u: acl.new_secret() for u in acl.broker_users()}
    (folder / "acl").write_text(acl.acl_text())
    acl.write_password_file(folder / "passwd", creds)
    secured = MosquittoServer(
        allow_anonymous=False,
        extra_conf=f"password_file {folder / 'passwd'}\nacl_file {folder / 'acl'}\n",
    ).start()
    plain = MosquittoServer().start()
    try:
        print(
            f"{n} x {len(PAYLOAD)}-byte messages, QoS 1, one publisher -> one subscriber, "
            f"{runs} run(s); median of runs"
        )
        print(f"{'broker':34s} {'msg/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'connect ms':>11s}")
        for label, server, c in (
            ("anonymous, no ACL", plain, None),
            ("passwords + generated ACL", secured, creds),
        ):
            results = [run(server.port, n, c) for _ in range(runs)]
            rate = statistics.median(r[0] for r in results)
            p50 = statistics.median(r[1] for r in results)
            p99 = statistics.median(r[2] for r in results)
            print(
                f"{label:34s} {rate:9.0f} {p50:8.2f} {p99:8.2f} {connect_ms(server.port, c):11.2f}"
            )
    finally:
        secured.cleanup()
        plain.cleanup()


if __name__ == "__main__":
    main()
