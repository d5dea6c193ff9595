"""Sparkplug B 3.0 for the bridge: topic namespace, protobuf payloads, the edge node's session.

The topic strings of the `spBv1.0` namespace are built here and only here (they are not derbus
topics). Payloads are the Sparkplug protobuf, encoded with the classes `protoc` generated from
the published `sparkplug_b.proto` (Eclipse Tahu, EPL-2.0; see `proto/`).

Session rules kept here (Sparkplug 3.0 chapter 4/5/6 requirement ids in brackets):

* NBIRTH carries `seq` 0 [tck-id-topics-nbirth-seq-num], the `bdSeq` of the will registered in
  the CONNECT that opened the session [tck-id-topics-nbirth-bdseq-matching], and
  `Node Control/Rebirth` = false [tck-id-topics-nbirth-rebirth-metric];
* every later message from the node (DBIRTH, NDATA, DDATA, DDEATH) carries the previous `seq`
  + 1, 255 wrapping to 0 [tck-id-topics-ddata-seq-num];
* NDEATH carries only `bdSeq` and no `seq` [tck-id-topics-ndeath-payload, -seq]; it is the
  MQTT will, QoS 1, not retained [tck-id-payloads-ndeath-will-message-qos, -retain];
* births carry name, datatype and value of every metric, data messages only changed metrics
  without datatype [tck-id-payloads-metric-datatype-not-req].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Literal, get_args

from google.protobuf.message import DecodeError

from derbus.errors import DerbusError
from scada_bridge import sparkplug_b_pb2 as pb
from scada_bridge.metrics import MetricDef, MetricKind, MetricValue

NAMESPACE = "spBv1.0"
MessageType = Literal[
    "NBIRTH", "NDEATH", "DBIRTH", "DDEATH", "NDATA", "DDATA", "NCMD", "DCMD", "STATE"
]
MESSAGE_TYPES: tuple[str, ...] = get_args(MessageType)
DEVICE_MESSAGES = frozenset({"DBIRTH", "DDEATH", "DDATA", "DCMD"})

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
ENG_UNIT = "engUnit"
"""Property key of a metric's engineering unit (the key Ignition's MQTT Engine maps to a tag's
engineering units)."""

SEQ_MODULO = 256
BDSEQ_MODULO = 256


class DataType(IntEnum):
    """Sparkplug B datatypes the bridge uses (Sparkplug 3.0 §6.4.16)."""

    INT64 = 4
    UINT64 = 8
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12


DATATYPE_OF_KIND: dict[MetricKind, DataType] = {
    "double": DataType.DOUBLE,
    "boolean": DataType.BOOLEAN,
    "string": DataType.STRING,
    "int": DataType.INT64,
}


class SparkplugError(DerbusError):
    """A Sparkplug payload or topic the bridge cannot use."""


# --- topics ------------------------------------------------------------------------------------
def topic(group_id: str, message_type: MessageType, edge_node_id: str, device_id: str = "") -> str:
    """`spBv1.0/group/TYPE/node[/device]` (the device level only for D* messages)."""
    if (message_type in DEVICE_MESSAGES) != bool(device_id):
        raise ValueError(f"{message_type} {'needs' if device_id == '' else 'takes no'} device id")
    base = f"{NAMESPACE}/{group_id}/{message_type}/{edge_node_id}"
    return f"{base}/{device_id}" if device_id else base


def device_command_filter(group_id: str, edge_node_id: str) -> str:
    """Subscription filter for DCMD to every device of a node."""
    return f"{NAMESPACE}/{group_id}/DCMD/{edge_node_id}/+"


def state_topic(host_id: str) -> str:
    """The STATE topic of a (primary) host application."""
    return f"{NAMESPACE}/STATE/{host_id}"


@dataclass(frozen=True)
class SparkplugTopic:
    """The parts of a Sparkplug topic."""

    group_id: str
    message_type: MessageType
    edge_node_id: str
    device_id: str | None = None


def parse_topic(text: str) -> SparkplugTopic | None:
    """The parts of an edge-node topic (`spBv1.0/g/T/n[/d]`), None for anything else."""
    parts = text.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in MESSAGE_TYPES:
        return None
    kind: MessageType = parts[2]  # type: ignore[assignment]
    if (len(parts) == 5) != (kind in DEVICE_MESSAGES) or not all(parts[1:]):
        return None
    return SparkplugTopic(parts[1], kind, parts[3], parts[4] if len(parts) == 5 else None)


# --- payloads ----------------------------------------------------------------------------------
def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch, UTC (Sparkplug timestamps)."""
    return round(ts.timestamp() * 1000)


def _set_value(metric: pb.Payload.Metric, kind: MetricKind, value: MetricValue) -> None:
    if value is None:
        metric.is_null = True
    elif kind == "double":
        metric.double_value = float(value)
    elif kind == "boolean":
        metric.boolean_value = bool(value)
    elif kind == "string":
        metric.string_value = str(value)
    else:  # Int64: two's complement in the uint64 field
        metric.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF


def add_metric(
    payload: pb.Payload, d: MetricDef, value: MetricValue, ts_ms: int, *, birth: bool
) -> None:
    """Append one metric: name, timestamp and value; datatype and unit only in a birth."""
    metric = payload.metrics.add()
    metric.name = d.name
    metric.timestamp = ts_ms
    if birth:
        metric.datatype = DATATYPE_OF_KIND[d.kind]
        if d.unit is not None:
            metric.properties.keys.append(ENG_UNIT)
            prop = metric.properties.values.add()
            prop.type = DataType.STRING
            prop.string_value = d.unit
    _set_value(metric, d.kind, value)


def death_payload(bd_seq: int, ts: datetime) -> bytes:
    """NDEATH: a timestamp and the single `bdSeq` metric (UInt64), no `seq`."""
    payload = pb.Payload(timestamp=epoch_ms(ts))
    metric = payload.metrics.add()
    metric.name = BDSEQ
    metric.datatype = DataType.UINT64
    metric.long_value = bd_seq
    return bytes(payload.SerializeToString())


def decode(data: bytes) -> pb.Payload:
    """Parse a Sparkplug B payload (raises SparkplugError when it is not one)."""
    payload = pb.Payload()
    try:
        payload.ParseFromString(data)
    except DecodeError as err:
        raise SparkplugError(f"not a Sparkplug B payload: {err}") from err
    return payload


def metric_number(metric: pb.Payload.Metric) -> float | None:
    """A written metric's value as a number (any numeric or boolean field), None when absent."""
    which = metric.WhichOneof("value")
    if metric.is_null or which is None:
        return None
    if which in ("double_value", "float_value", "int_value", "long_value", "boolean_value"):
        number = getattr(metric, which)
        if which == "long_value" and number >= 1 << 63:
            number -= 1 << 64
        return float(number)
    raise SparkplugError(f"metric {metric.name!r}: {which} is not a number")


def metric_bool(metric: pb.Payload.Metric) -> bool | None:
    """A written metric's value as a boolean (Node Control/Rebirth), None when absent."""
    if metric.is_null or metric.WhichOneof("value") is None:
        return None
    if metric.WhichOneof("value") != "boolean_value":
        raise SparkplugError(f"metric {metric.name!r} is not a boolean")
    return bool(metric.boolean_value)


# --- the session -------------------------------------------------------------------------------
class EdgeNodeSession:
    """One Sparkplug session of the edge node: from an MQTT CONNECT (with its bdSeq) on.

    Args:
        bd_seq: the bdSeq registered in the will of the CONNECT that opened the session.
    """

    def __init__(self, bd_seq: int) -> None:
        self.bd_seq = bd_seq
        self._seq: int | None = None

    @property
    def seq(self) -> int | None:
        """The seq of the last message sent in this session (None before the NBIRTH)."""
        return self._seq

    def next_seq(self) -> int:
        """The seq of the next message after the NBIRTH (previous + 1, 255 → 0)."""
        if self._seq is None:
            raise SparkplugError("no NBIRTH sent in this session yet")
        self._seq = (self._seq + 1) % SEQ_MODULO
        return self._seq

    def node_birth(self, ts: datetime, metrics: Sequence[tuple[MetricDef, MetricValue]]) -> bytes:
        """NBIRTH: seq 0, bdSeq, Node Control/Rebirth = false, then every node metric."""
        self._seq = 0
        ts_ms = epoch_ms(ts)
        payload = pb.Payload(timestamp=ts_ms, seq=0)
        bd = payload.metrics.add()
        bd.name, bd.timestamp, bd.datatype, bd.long_value = (
            BDSEQ,
            ts_ms,
            DataType.UINT64,
            self.bd_seq,
        )
        rebirth = payload.metrics.add()
        rebirth.name, rebirth.timestamp, rebirth.datatype, rebirth.boolean_value = (
            REBIRTH,
            ts_ms,
            DataType.BOOLEAN,
            False,
        )
        for d, value in metrics:
            add_metric(payload, d, value, ts_ms, birth=True)
        return bytes(payload.SerializeToString())

    def message(
        self, ts: datetime, metrics: Sequence[tuple[MetricDef, MetricValue]], *, birth: bool
    ) -> bytes:
        """DBIRTH (birth) or NDATA / DDATA / DDEATH (not birth; DDEATH has no metrics)."""
        ts_ms = epoch_ms(ts)
        payload = pb.Payload(timestamp=ts_ms, seq=self.next_seq())
        for d, value in metrics:
            add_metric(payload, d, value, ts_ms, birth=birth)
        return bytes(payload.SerializeToString())


class BdSeqCounter:
    """The birth/death sequence number: 0 on the first CONNECT ever, + 1 (mod 256) on each next.

    Kept in a file so that a restarted bridge does not reuse the bdSeq of its previous session
    (a host could then match a late NDEATH of the old session to the new NBIRTH).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.last: int | None = None
        if self.path is not None and self.path.exists():
            text = self.path.read_text().strip()
            self.last = int(text) % BDSEQ_MODULO if text.isdigit() else None

    def next(self) -> int:
        """The bdSeq for the next CONNECT (stored before it is used)."""
        value = 0 if self.last is None else (self.last + 1) % BDSEQ_MODULO
        self.last = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"{value}\n")
        return value
