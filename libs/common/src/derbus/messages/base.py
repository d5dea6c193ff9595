"""Base message model: frozen pydantic v2, timezone-aware UTC `ts`, a `source`, `Z` on the wire."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (UTC); naive timestamps are rejected")
    return value.astimezone(UTC)


def format_utc(value: datetime) -> str:
    """Format an aware datetime as UTC ISO 8601 with a trailing `Z`."""
    text = _to_utc(value).isoformat()
    return text.replace("+00:00", "Z")


UtcDatetime = Annotated[
    datetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_utc, return_type=str, when_used="json"),
]
"""A timezone-aware datetime normalised to UTC; naive values fail validation."""


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """Each problem of a payload that failed its model: (field, reason).

    The field is dotted (`quantiles.p10`), `(payload)` for the payload as a whole (not JSON, not
    an object); the reason is pydantic's message without its "Value error, " prefix.
    """
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(payload)"
        ctx_error = (e.get("ctx") or {}).get("error")
        reason = str(ctx_error) if e["type"] == "value_error" and ctx_error else e["msg"]
        problems.append((where, reason))
    return problems


def describe_problems(err: ValidationError) -> str:
    """One line naming every invalid field of a payload and why (`ttl_s: …; unit: …`)."""
    return "; ".join(f"{where}: {reason}" for where, reason in validation_problems(err))


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Every message on the bus: immutable, with an aware UTC timestamp and its producer."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    ts: UtcDatetime = Field(description="time of the measurement or decision, UTC")
    source: str = Field(min_length=1, max_length=200, description="producing service or device")

    def to_json_bytes(self) -> bytes:
        """Serialise to compact JSON bytes for the wire."""
        return self.model_dump_json(exclude_none=False).encode()

    @classmethod
    def from_json_bytes(cls, payload: bytes | str) -> Self:
        """Parse and validate a wire payload (raises pydantic.ValidationError)."""
        return cls.model_validate_json(payload)

    def with_changes(self, **changes: Any) -> Self:
        """Return a validated copy with some fields changed."""
        return type(self).model_validate({**self.model_dump(), **changes})
