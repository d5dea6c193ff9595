"""The bus as an AsyncAPI 3.0 document, generated from the topic catalogue (`derbus asyncapi`).

Each catalogue entry is a channel (its address with `{site_id}` / `{device_id}` parameters), a
`send` operation (who publishes it) and a `receive` operation (who reads it), both with the MQTT
binding's QoS and retain flag; each payload model is a message whose JSON schema comes from its
pydantic model (all schemas in `components.schemas`, referenced, never repeated).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from derbus.messages import Message
from derbus.topics import CATALOGUE, DEFAULT_ROOT, PLATFORM_SITE, TopicSpec

ASYNCAPI_VERSION = "3.0.0"
MQTT_BINDING_VERSION = "0.2.0"
REF = "#/components/schemas/{model}"


def _address(spec: TopicSpec[Any], root: str) -> str:
    return f"{root}/{{site_id}}/{spec.category}/{{device_id}}/{spec.name}"


def _channel_id(spec: TopicSpec[Any]) -> str:
    return spec.key.replace(".", "_")


def _parties(names: tuple[str, ...]) -> str:
    if "*" in names:
        return "every service (each on its own device level)"
    return ", ".join(names) or "nobody in the platform"


def document(root: str = DEFAULT_ROOT, version: str = "0.1.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus under a topic root.

    Args:
        root: the topic root (`MQTT_ROOT`).
        version: the API version written in `info`.
    """
    models: list[type[Message]] = []
    for spec in CATALOGUE:
        if spec.model not in models:
            models.append(spec.model)
    _, schemas = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for model in models:
        messages[model.__name__] = {
            "name": model.__name__,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=model.__name__)},
        }
    for spec in CATALOGUE:
        cid = _channel_id(spec)
        message_ref = {"$ref": f"#/components/messages/{spec.model.__name__}"}
        channels[cid] = {
            "address": _address(spec, root),
            "title": spec.key,
            "description": spec.description,
            "parameters": {
                "site_id": {"description": f"site id (`{PLATFORM_SITE}` for platform-wide topics)"},
                "device_id": {"description": "device id (a service name for status topics)"},
            },
            "messages": {spec.model.__name__: message_ref},
        }
        binding = {
            "mqtt": {"qos": spec.qos, "retain": spec.retain, "bindingVersion": MQTT_BINDING_VERSION}
        }
        channel_ref = {"$ref": f"#/channels/{cid}"}
        operation_message = [{"$ref": f"#/channels/{cid}/messages/{spec.model.__name__}"}]
        operations[f"{cid}_send"] = {
            "action": "send",
            "channel": channel_ref,
            "title": f"publish {spec.key}",
            "summary": f"published by {_parties(spec.publishers)}",
            "messages": operation_message,
            "bindings": binding,
            "x-derbus-publishers": list(spec.publishers),
        }
        operations[f"{cid}_receive"] = {
            "action": "receive",
            "channel": channel_ref,
            "title": f"read {spec.key}",
            "summary": f"read by {_parties(spec.subscribers)}",
            "messages": operation_message,
            "bindings": binding,
            "x-derbus-subscribers": list(spec.subscribers),
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "derbus bus",
            "version": version,
            "description": (
                "Every topic of the derbus platform, generated from `derbus.topics` by "
                "`derbus asyncapi` (do not edit). Payloads are JSON; timestamps are UTC ISO 8601 "
                "with `Z`; power is load-referenced (+ import / charging / consumption)."
            ),
            "license": {"name": "see the repository"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "the broker `make run` starts (compose: mosquitto:1883, with a login)",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas.get("$defs", {}), "messages": messages},
    }


def document_yaml(root: str = DEFAULT_ROOT) -> str:
    """The document as YAML (what `derbus asyncapi --output docs/asyncapi.yaml` writes)."""
    import yaml

    header = "# Generated from derbus.topics by `make topics` (derbus asyncapi); do not edit.\n"
    body: str = yaml.safe_dump(document(root), sort_keys=False, allow_unicode=True, width=100)
    return header + body
