"""Sparkplug namespace, payload encoding and the session's seq / bdSeq rules (no broker)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scada_bridge import sparkplug as spb
from scada_bridge import sparkplug_b_pb2 as pb
from scada_bridge.metrics import MetricDef, unit_of
from scada_bridge.testing import compile_payload_class

T = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)
SRC = Path(__file__).resolve().parents[1] / "src" / "scada_bridge"


def test_topics_follow_the_namespace() -> None:
    assert spb.topic("g", "NBIRTH", "n") == "spBv1.0/g/NBIRTH/n"
    assert spb.topic("g", "DDATA", "n", "site-1") == "spBv1.0/g/DDATA/n/site-1"
    with pytest.raises(ValueError, match="needs device"):
        spb.topic("g", "DBIRTH", "n")
    with pytest.raises(ValueError, match="takes no"):
        spb.topic("g", "NDATA", "n", "d")
    assert spb.parse_topic("spBv1.0/g/DCMD/n/site-1") == spb.SparkplugTopic(
        "g", "DCMD", "n", "site-1"
    )
    assert spb.parse_topic("spBv1.0/g/NCMD/n") == spb.SparkplugTopic("g", "NCMD", "n")
    for bad in ("spBv1.0/g/DCMD/n", "spBv1.0/g/NCMD/n/d", "spAv1.0/g/NCMD/n", "spBv1.0/g/XX/n"):
        assert spb.parse_topic(bad) is None, bad


def test_units_are_read_from_the_names() -> None:
    assert [unit_of(n) for n in ("p_kw", "e_import_kwh", "q_kvar", "soc_pct", "v_l1_v")] == [
        "kW",
        "kWh",
        "kvar",
        "%",
        "V",
    ]
    assert unit_of("price_per_kwh", "CHF") == "CHF/kWh"
    assert unit_of("carbon_g_per_kwh") == "g/kWh"
    assert unit_of("irradiance_w_m2") == "W/m²"
    assert unit_of("cycles") is None


def test_birth_sets_seq_zero_bdseq_and_rebirth_then_counts_to_255_and_wraps() -> None:
    session = spb.EdgeNodeSession(bd_seq=7)
    d = MetricDef("battery/p_kw", "double", "kW", False, "p_kw")
    birth = pb.Payload.FromString(session.node_birth(T, [(d, 1.5)]))
    assert birth.seq == 0
    assert birth.timestamp == spb.epoch_ms(T)
    by_name = {m.name: m for m in birth.metrics}
    assert (by_name["bdSeq"].datatype, by_name["bdSeq"].long_value) == (spb.DataType.UINT64, 7)
    rebirth = by_name["Node Control/Rebirth"]
    assert (rebirth.datatype, rebirth.boolean_value) == (spb.DataType.BOOLEAN, False)
    p_kw = by_name["battery/p_kw"]
    assert (p_kw.datatype, p_kw.double_value) == (spb.DataType.DOUBLE, 1.5)
    assert dict(
        zip(p_kw.properties.keys, [v.string_value for v in p_kw.properties.values], strict=True)
    ) == {"engUnit": "kW"}
    seqs = [
        pb.Payload.FromString(session.message(T, [(d, 2.0)], birth=False)).seq for _ in range(300)
    ]
    assert seqs[:3] == [1, 2, 3]
    assert seqs[254:257] == [255, 0, 1]
    data = pb.Payload.FromString(session.message(T, [(d, None)], birth=False))
    assert not data.metrics[0].HasField("datatype")  # no datatype outside births
    assert data.metrics[0].is_null


def test_death_has_only_bdseq_and_no_seq() -> None:
    death = pb.Payload.FromString(spb.death_payload(12, T))
    assert not death.HasField("seq")
    assert [(m.name, m.datatype, m.long_value) for m in death.metrics] == [("bdSeq", 8, 12)]


def test_bdseq_starts_at_zero_increments_per_connect_survives_restarts_and_wraps(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bdseq"
    counter = spb.BdSeqCounter(path)
    assert [counter.next(), counter.next()] == [0, 1]
    again = spb.BdSeqCounter(path)  # a restarted bridge
    assert again.next() == 2
    path.write_text("255\n")
    assert spb.BdSeqCounter(path).next() == 0


def test_written_values_are_read_from_any_numeric_field() -> None:
    metric = pb.Payload.Metric(name="x", long_value=(1 << 64) - 3)
    assert spb.metric_number(metric) == -3.0
    assert spb.metric_number(pb.Payload.Metric(name="x", float_value=1.5)) == 1.5
    assert spb.metric_number(pb.Payload.Metric(name="x", is_null=True)) is None
    with pytest.raises(spb.SparkplugError):
        spb.metric_number(pb.Payload.Metric(name="x", string_value="2"))
    with pytest.raises(spb.SparkplugError, match="not a Sparkplug B payload"):
        spb.decode(b"\xff\xff\xff")


def test_an_independent_decoder_reads_what_the_bridge_encodes() -> None:
    host_payload = compile_payload_class()
    assert host_payload is not pb.Payload
    session = spb.EdgeNodeSession(bd_seq=3)
    d = MetricDef("pv/generation_kw", "double", "kW", False, "generation_kw")
    decoded = host_payload.FromString(session.node_birth(T, [(d, 4.25)]))
    assert [m.name for m in decoded.metrics] == [
        "bdSeq",
        "Node Control/Rebirth",
        "pv/generation_kw",
    ]  # type: ignore[attr-defined]
    assert decoded.metrics[2].double_value == 4.25  # type: ignore[attr-defined]


def test_generated_code_is_what_protoc_makes_of_the_shipped_proto(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{SRC / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(SRC / "proto" / "sparkplug_b.proto"),
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi"):
        assert (tmp_path / name).read_text() == (SRC / name).read_text(), (
            f"{name} is stale: run `make proto` (python -m grpc_tools.protoc …)"
        )
