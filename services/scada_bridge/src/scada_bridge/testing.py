"""Test support: an independent Sparkplug host application and Home Assistant's discovery rules.

`SparkplugHost` does not use the bridge's generated classes: it compiles the published
`sparkplug_b.proto` itself (protoc from grpcio-tools, a dev dependency) into its own descriptor
pool and decodes every message with that, as a host written from the specification would.
`check_discovery` checks one discovery config against the rules transcribed from Home
Assistant's source (`tests/fixtures/ha_discovery_rules.json`, with attribution).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message as PbMessage

from derbus.bus.base import Bus, RawMessage

PROTO = Path(__file__).resolve().parent / "proto" / "sparkplug_b.proto"
RULES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ha_discovery_rules.json"


def compile_payload_class(proto: Path = PROTO) -> type[PbMessage]:
    """The `Payload` message class built from the .proto in a private descriptor pool."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sparkplug.desc"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{proto.parent}",
                f"--descriptor_set_out={out}",
                str(proto),
            ],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"protoc failed: {result.stderr.decode(errors='replace')}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    descriptor = pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
    cls: type[PbMessage] = message_factory.GetMessageClass(descriptor)
    return cls


@dataclass
class Received:
    """One Sparkplug message as the host got it."""

    topic: str
    message_type: str
    device_id: str | None
    qos: int
    retain: bool
    payload: Any
    """The decoded `Payload` (the host's own class)."""

    def metrics(self) -> dict[str, Any]:
        """Metrics by name."""
        return {m.name: m for m in self.payload.metrics}

    def value(self, name: str) -> Any:
        """A metric's value (None when null or absent)."""
        metric = self.metrics().get(name)
        if metric is None or metric.is_null or metric.WhichOneof("value") is None:
            return None
        return getattr(metric, metric.WhichOneof("value"))

    @property
    def seq(self) -> int | None:
        """The payload's seq (None when absent)."""
        return int(self.payload.seq) if self.payload.HasField("seq") else None


@dataclass
class SparkplugHost:
    """A host application on a real broker: records one group's messages, sends commands."""

    group_id: str
    payload_class: type[PbMessage] = field(default_factory=compile_payload_class)
    received: list[Received] = field(default_factory=list)

    async def attach(self, bus: Bus) -> None:
        """Subscribe to the whole group (QoS 1, so the publish QoS shows in deliveries)."""
        self.bus = bus
        await bus.subscribe(f"spBv1.0/{self.group_id}/#", 1, self._record)

    async def _record(self, raw: RawMessage) -> None:
        parts = raw.topic.split("/")
        payload = self.payload_class()
        payload.ParseFromString(raw.payload)
        self.received.append(
            Received(
                raw.topic,
                parts[2],
                parts[4] if len(parts) > 4 else None,
                raw.qos,
                raw.retain,
                payload,
            )
        )

    def of(self, message_type: str, device_id: str | None = None) -> list[Received]:
        """Messages of one type (and device)."""
        return [
            r
            for r in self.received
            if r.message_type == message_type and (device_id is None or r.device_id == device_id)
        ]

    def command(self, metrics: dict[str, tuple[int, str, Any]]) -> bytes:
        """A command payload: name → (datatype, value field, value), timestamped now."""
        ts_ms = int(datetime.now(UTC).timestamp() * 1000)
        payload = self.payload_class()
        payload.timestamp = ts_ms  # type: ignore[attr-defined]
        for name, (datatype, value_field, value) in metrics.items():
            metric = payload.metrics.add()  # type: ignore[attr-defined]
            metric.name, metric.timestamp, metric.datatype = name, ts_ms, datatype
            setattr(metric, value_field, value)
        return bytes(payload.SerializeToString())

    async def rebirth(self, edge_node_id: str) -> None:
        """NCMD Node Control/Rebirth = true (QoS 0, not retained)."""
        body = self.command({"Node Control/Rebirth": (11, "boolean_value", True)})
        await self.bus.publish(f"spBv1.0/{self.group_id}/NCMD/{edge_node_id}", body, qos=0)

    async def write(self, edge_node_id: str, device_id: str, name: str, value: float) -> None:
        """DCMD writing a Double metric of a device."""
        body = self.command({name: (10, "double_value", value)})
        topic = f"spBv1.0/{self.group_id}/DCMD/{edge_node_id}/{device_id}"
        await self.bus.publish(topic, body, qos=0)


# --- Home Assistant discovery rules -------------------------------------------------------------
def load_rules(path: Path = RULES) -> dict[str, Any]:
    """Home Assistant's discovery rules (fixture transcribed from HA's source)."""
    rules: dict[str, Any] = json.loads(path.read_text())
    return rules


def check_discovery(
    topic: str, config: dict[str, Any], rules: dict[str, Any], prefix: str = "homeassistant"
) -> list[str]:
    """Every way a discovery config breaks Home Assistant's rules (empty: accepted)."""
    problems: list[str] = []
    head = prefix + "/"
    rest = topic[len(head) :] if topic.startswith(head) else ""
    match = re.fullmatch(rules["discovery_topic_pattern"], rest)
    if match is None:
        return [f"{topic}: not a discovery topic"]
    component = match["component"]
    for key in rules["required_keys"].get(component, []):
        if not config.get(key):
            problems.append(f"{component} needs {key}")
    device = config.get("device")
    if device is not None:
        if not any(device.get(k) for k in rules["device_requires_one_of"]):
            problems.append("device has neither identifiers nor connections")
        for key in rules["entity_with_device_requires"]:
            if not config.get(key):
                problems.append(f"an entity with a device needs {key}")
    origin = config.get("origin")
    if origin is not None:
        problems += [f"origin needs {k}" for k in rules["origin_required"] if not origin.get(k)]
    for item in config.get("availability", []):
        problems += [
            f"availability item needs {k}"
            for k in rules["availability_item_required"]
            if not item.get(k)
        ]
    mode = config.get("availability_mode")
    if mode is not None and mode not in rules["availability_modes"]:
        problems.append(f"availability_mode {mode!r}")
    if component == "sensor":
        problems += _check_sensor(config, rules["sensor"])
    if component == "number":
        problems += _check_unit(config, rules["number"]["device_class_units"], "number")
    return problems


def _check_sensor(config: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    problems = []
    device_class = config.get("device_class")
    state_class = config.get("state_class")
    classes = rules["device_class_state_classes"]
    if device_class is not None and device_class not in classes:
        problems.append(f"unknown sensor device_class {device_class!r}")
    if state_class is not None and state_class not in rules["state_classes"]:
        problems.append(f"unknown state_class {state_class!r}")
    if (
        device_class in classes
        and state_class is not None
        and state_class not in classes[device_class]
    ):
        problems.append(f"state_class {state_class!r} not allowed for {device_class!r}")
    reset_needs = rules["last_reset_value_template_requires_state_class"]
    if "last_reset_value_template" in config and state_class != reset_needs:
        problems.append("last_reset_value_template needs state_class total")
    if "options" in config and device_class != rules["options_require_device_class"]:
        problems.append("options need device_class enum")
    return problems + _check_unit(config, rules["device_class_units"], "sensor")


def _check_unit(config: dict[str, Any], units: dict[str, list[str | None]], kind: str) -> list[str]:
    device_class = config.get("device_class")
    if device_class is None:
        return []
    if device_class not in units:
        return [f"{kind} device_class {device_class!r}: no unit rule to check against"]
    unit = config.get("unit_of_measurement")
    if unit not in units[device_class]:
        return [f"unit {unit!r} not allowed for {kind} device_class {device_class!r}"]
    return []
