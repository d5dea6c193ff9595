"""The AsyncAPI document: generated from the catalogue, valid AsyncAPI 3.0, not stale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from derbus import asyncapi, topics
from derbus.messages import BatteryTelemetry

REPO = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "asyncapi-3.0.0.schema.json").read_text())


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(SCHEMA)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_document_is_valid_asyncapi_3() -> None:
    doc = asyncapi.document()
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in validator().iter_errors(doc)]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "change"),
    [
        (("operations", "telemetry_meter_send", "action"), "publish"),
        (("channels", "telemetry_meter", "address"), 42),
        (("asyncapi",), "2.9.9"),
    ],
)
def test_the_validator_rejects_a_broken_document(where: tuple[str, ...], change: Any) -> None:
    doc = json.loads(json.dumps(asyncapi.document()))
    node = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = change
    assert list(validator().iter_errors(doc))


def test_every_reference_resolves_inside_the_document() -> None:
    doc = asyncapi.document()
    found = refs(doc)
    assert found
    for ref in found:
        assert resolve(doc, ref) is not None, ref


def test_channels_operations_and_bindings_follow_the_catalogue() -> None:
    doc = asyncapi.document(root="acme/der")
    assert set(doc["channels"]) == {s.key.replace(".", "_") for s in topics.CATALOGUE}
    for spec in topics.CATALOGUE:
        cid = spec.key.replace(".", "_")
        channel = doc["channels"][cid]
        assert (
            channel["address"] == f"acme/der/{{site_id}}/{spec.category}/{{device_id}}/{spec.name}"
        )
        for action in ("send", "receive"):
            op = doc["operations"][f"{cid}_{action}"]
            assert op["bindings"]["mqtt"]["qos"] == spec.qos
            assert op["bindings"]["mqtt"]["retain"] is spec.retain
        assert doc["operations"][f"{cid}_send"]["x-derbus-publishers"] == list(spec.publishers)
        assert doc["operations"][f"{cid}_receive"]["x-derbus-subscribers"] == list(spec.subscribers)


def test_payload_schemas_are_the_models_and_accept_real_messages() -> None:
    doc = asyncapi.document()
    schemas = doc["components"]["schemas"]
    battery = schemas["BatteryTelemetry"]
    assert battery["properties"]["soc_pct"]["maximum"] == 100
    assert set(battery["required"]) >= {"ts", "source", "p_kw", "soc_pct"}
    # a real message validates against its schema; a wrong one does not
    schema = {"$ref": "#/components/schemas/BatteryTelemetry", "components": doc["components"]}
    msg = BatteryTelemetry.model_validate(
        {"ts": "2026-06-21T10:00:00Z", "source": "x", "p_kw": 1.0, "soc_pct": 50.0}
    )
    jsonschema.validate(json.loads(msg.to_json_bytes()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"ts": "2026-06-21T10:00:00Z", "source": "x", "p_kw": 1.0, "soc_pct": 150.0}, schema
        )


def test_docs_asyncapi_yaml_is_current() -> None:
    doc = REPO / "docs" / "asyncapi.yaml"
    assert doc.exists(), "docs/asyncapi.yaml is missing: run `make topics`"
    assert doc.read_text() == asyncapi.document_yaml(), (
        "docs/asyncapi.yaml is stale: run `make topics`"
    )
    assert yaml.safe_load(doc.read_text()) == json.loads(json.dumps(asyncapi.document()))
