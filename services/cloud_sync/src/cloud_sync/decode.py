"""Telemetry payloads decoded without a pydantic model per message: msgspec structs from the catalogue.

The hot path of the intake decodes each payload with a msgspec struct *derived from* the
catalogue's pydantic model (same fields, types, defaults, bounds, `extra="forbid"`), which is
~50x cheaper than building the frozen pydantic model. msgspec is the stricter of the two (no
int-for-bool or number-for-datetime coercions, no naive timestamps here), so whatever it refuses
is handed to the pydantic model itself: the model has the last word. A payload the model also
refuses is dead-lettered with the model's own message, exactly as before; one it accepts is
stored from the model. A struct is derived only for models whose validation it can reproduce
(known constraint kinds, no validators besides the finite-number check); any other model is
always decoded by pydantic.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import annotated_types as at
import msgspec
from pydantic import ValidationError

from cloud_sync.readings import to_epoch_us
from derbus.messages import Message, Telemetry, describe_problems
from derbus.storage import metric_name, telemetry_fields
from derbus.topics import TopicSpec

FieldValues = list[tuple[str, float]]
"""(metric, value) pairs of one message, in the model's field order, None and non-finite left out."""

_ALLOWED_VALIDATORS = {"_reject_non_finite"}  # Telemetry's finite check (JSON cannot carry NaN)
_META_KEYS = {at.Ge: "ge", at.Gt: "gt", at.Le: "le", at.Lt: "lt"}


class InvalidPayload(ValueError):
    """The payload does not validate against the topic's model; `str()` is the model's reason."""


@dataclass(frozen=True)
class Decoded:
    """One valid telemetry message as the intake needs it."""

    time_us: int
    """µs since the Unix epoch (UTC)."""
    values: FieldValues
    seq: int | None = None
    """The stream's sequence number (None: the publisher does not number its readings)."""


class UnsupportedModel(TypeError):
    """The model has validation the derived struct cannot reproduce (pydantic decodes it)."""


def _constraint_meta(metadata: list[Any]) -> msgspec.Meta | None:
    kwargs: dict[str, Any] = {}
    for item in metadata:
        if type(item) in _META_KEYS:
            key = _META_KEYS[type(item)]
            kwargs[key] = getattr(item, key)
        elif isinstance(item, at.MinLen):
            kwargs["min_length"] = item.min_length
        elif isinstance(item, at.MaxLen):
            kwargs["max_length"] = item.max_length
        else:
            raise UnsupportedModel(f"constraint {item!r}")
    return msgspec.Meta(**kwargs) if kwargs else None


def _struct_type(annotation: Any, metadata: list[Any]) -> Any:
    """The msgspec type of one pydantic field (constraints on the non-None member)."""
    meta = _constraint_meta(metadata)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise UnsupportedModel(f"union {annotation!r}")
        base = _struct_type(inner[0], []) if meta is None else Annotated[inner[0], meta]
        return base | None
    if annotation in (float, int, bool, str) or origin is typing.Literal:
        return annotation if meta is None else Annotated[annotation, meta]
    raise UnsupportedModel(f"type {annotation!r}")


def derive_struct(model: type[Message]) -> type[msgspec.Struct]:
    """A msgspec struct validating like `model` (raises UnsupportedModel when it cannot)."""
    decorators = model.__pydantic_decorators__
    names = set(decorators.field_validators) | set(decorators.model_validators)
    if names - _ALLOWED_VALIDATORS or decorators.root_validators:
        raise UnsupportedModel(f"{model.__name__} validators {sorted(names)}")
    if model.model_config.get("extra") != "forbid":
        raise UnsupportedModel(f"{model.__name__} does not forbid extra fields")
    fields: list[Any] = []
    for name, info in model.model_fields.items():
        if info.alias not in (None, name):
            raise UnsupportedModel(f"{model.__name__}.{name} has an alias")
        if name == "ts":
            kind: Any = datetime  # tz-awareness is checked after decoding
        else:
            kind = _struct_type(info.annotation, list(info.metadata))
        if info.is_required():
            fields.append((name, kind))
        else:
            fields.append((name, kind, info.default))
    required = [f for f in fields if len(f) == 2]
    optional = [f for f in fields if len(f) == 3]
    return msgspec.defstruct(
        f"{model.__name__}Struct", required + optional, forbid_unknown_fields=True
    )


class TelemetryDecoder:
    """Decodes the payloads of one telemetry topic spec into a `Decoded` (see the module doc).

    Args:
        spec: a telemetry spec of the catalogue.
    """

    def __init__(self, spec: TopicSpec[Any]) -> None:
        if not issubclass(spec.model, Telemetry):
            raise TypeError(f"{spec.key} is not telemetry")
        self.spec = spec
        self.model: type[Message] = spec.model
        self.fields = telemetry_fields(spec.model)
        self.metrics = {name: metric_name(spec, name) for name in self.fields}
        try:
            struct = derive_struct(spec.model)
        except UnsupportedModel:
            self._fast: msgspec.json.Decoder[Any] | None = None
        else:
            self._fast = msgspec.json.Decoder(struct)
            names = list(struct.__struct_fields__)
            self._ts_pos = names.index("ts")
            self._seq_pos = names.index("seq")
            self._positions = [(self.metrics[f], names.index(f)) for f in self.fields]

    @property
    def fast(self) -> bool:
        """Whether this spec has the msgspec path (else every payload goes through pydantic)."""
        return self._fast is not None

    def decode(self, payload: bytes) -> Decoded:
        """The message's time and stored values.

        Raises:
            InvalidPayload: the topic's pydantic model refuses the payload (its reason).
        """
        if self._fast is not None:
            try:
                found = msgspec.structs.astuple(self._fast.decode(payload))
            except msgspec.MsgspecError:
                pass  # the model decides (it may coerce what msgspec refuses, or say why not)
            else:
                ts: datetime = found[self._ts_pos]
                if ts.tzinfo is not None and ts.utcoffset() is not None:
                    values = []
                    for metric, pos in self._positions:
                        v = found[pos]
                        if v is not None:
                            number = float(v)
                            if math.isfinite(number):
                                values.append((metric, number))
                    return Decoded(to_epoch_us(ts), values, found[self._seq_pos])
        return self.decode_model(payload)

    def decode_model(self, payload: bytes) -> Decoded:
        """`decode` through the pydantic model only (the reference; also the fallback)."""
        try:
            message = self.model.model_validate_json(payload)
        except ValidationError as err:
            raise InvalidPayload(describe_problems(err)) from err
        return self.from_message(message)

    def from_message(self, message: Message) -> Decoded:
        """The `Decoded` of a validated model (same values as `derbus.storage.reading_rows`)."""
        values = []
        for name in self.fields:
            v = getattr(message, name)
            if v is not None:
                number = float(v)
                if math.isfinite(number):
                    values.append((self.metrics[name], number))
        return Decoded(to_epoch_us(message.ts), values, getattr(message, "seq", None))
