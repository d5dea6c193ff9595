"""The fast telemetry decoder accepts exactly what the pydantic models accept, with the same values."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from cloud_sync.decode import InvalidPayload, TelemetryDecoder
from cloud_sync.readings import to_epoch_us
from derbus import topics
from derbus.messages import (
    BatteryTelemetry,
    LoadTelemetry,
    MeterReading,
    PriceTelemetry,
    PvTelemetry,
)
from derbus.storage import reading_rows
from derbus.topics import TopicIds

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
IDS = TopicIds("site-1", "dev-1")

VALID = {
    "telemetry.meter": MeterReading(ts=T0, source="t", p_kw=-1.5, q_kvar=0.25, v_l1_v=231.0),
    "telemetry.pv": PvTelemetry(ts=T0, source="t", generation_kw=4.0, limit_kw=3.5),
    "telemetry.battery": BatteryTelemetry(ts=T0, source="t", p_kw=2.0, soc_pct=55.0, cycles=3.0),
    "telemetry.load": LoadTelemetry(ts=T0, source="t", p_kw=1.2, kind="switchable", on=True),
    "telemetry.price": PriceTelemetry(ts=T0, source="t", price_per_kwh=0.21, tou_period="peak"),
}

# (field, value) replacements that the models must refuse or coerce; the decoder must agree
MUTATIONS: list[tuple[str, Any]] = [
    ("ts", "2026-06-01T12:00:00"),  # naive
    ("ts", 1780315200),  # a number: pydantic reads it as a Unix time
    ("ts", "2026-06-01T14:00:00+02:00"),  # another zone: same instant
    ("ts", "yesterday"),
    ("source", ""),
    ("source", "x" * 201),
    ("p_kw", "lots"),
    ("p_kw", "1.5"),  # a numeric string: pydantic coerces it
    ("p_kw", True),  # a bool: pydantic coerces it
    ("p_kw", None),
    ("p_kw", 1e400),  # out of the float range
    ("p_kw", -3),
    ("soc_pct", 140),
    ("soc_pct", -1),
    ("generation_kw", -0.5),
    ("capacity_kwh", 0),
    ("kind", "rocket"),
    ("on", "yes"),
    ("on", 1),
    ("tou_period", "night"),
    ("unknown_field", 1.0),
    ("v_l1_v", -230.0),
]


def cases() -> list[tuple[str, bytes]]:
    out = []
    for key, message in VALID.items():
        body = json.loads(message.to_json_bytes())
        out.append((key, message.to_json_bytes()))
        for name, value in MUTATIONS:
            if name in body or name in ("unknown_field",) or name in type(message).model_fields:
                changed = {**body, name: value}
                out.append((key, json.dumps(changed).encode()))
        for name in list(body):
            out.append((key, json.dumps({k: v for k, v in body.items() if k != name}).encode()))
    out += [(k, b"\xff not json") for k in VALID] + [(k, b"[]") for k in VALID]
    return out


def model_outcome(key: str, payload: bytes) -> tuple[int, list[tuple[str, float]]] | str:
    spec = topics.by_key(key)
    try:
        message = spec.model.model_validate_json(payload)
    except ValueError as err:
        return f"refused: {type(err).__name__}"
    rows = reading_rows(spec, IDS, message)
    return to_epoch_us(message.ts), [(r.metric, r.value) for r in rows]


@pytest.mark.parametrize(("key", "payload"), cases())
def test_the_decoder_agrees_with_the_model(key: str, payload: bytes) -> None:
    decoder = TelemetryDecoder(topics.by_key(key))
    assert decoder.fast
    expected = model_outcome(key, payload)
    try:
        got = decoder.decode(payload)
    except InvalidPayload:
        assert isinstance(expected, str), f"refused what the model accepts: {payload!r}"
        return
    assert not isinstance(expected, str), f"accepted what the model refuses: {payload!r}"
    assert (got.time_us, got.values) == expected


def test_random_payloads_never_pass_the_fast_path_when_the_model_refuses_them() -> None:
    rng = random.Random(20)
    values: list[Any] = [None, True, 0, -1, 1.5, -7.25, 101.0, 1e308, "x", "", [], {}, "1"]
    checked = 0
    for key, message in VALID.items():
        decoder = TelemetryDecoder(topics.by_key(key))
        names = list(type(message).model_fields)
        base = json.loads(message.to_json_bytes())
        for _ in range(300):
            body = dict(base)
            for name in rng.sample(names, k=rng.randint(1, 3)):
                if rng.random() < 0.2:
                    body.pop(name, None)
                else:
                    body[name] = rng.choice(values)
            payload = json.dumps(body).encode()
            expected = model_outcome(key, payload)
            try:
                got = decoder.decode(payload)
            except InvalidPayload:
                assert isinstance(expected, str), payload
            else:
                assert not isinstance(expected, str), payload
                assert (got.time_us, got.values) == expected
            checked += 1
    assert checked == 1500


def test_refusals_carry_the_models_reason() -> None:
    decoder = TelemetryDecoder(topics.BATTERY)
    with pytest.raises(InvalidPayload, match="soc_pct"):
        decoder.decode(b'{"ts": "2026-06-01T12:00:00Z", "source": "x", "p_kw": 1, "soc_pct": 140}')
    with pytest.raises(InvalidPayload, match="timezone-aware"):
        decoder.decode(b'{"ts": "2026-06-01T12:00:00", "source": "x", "p_kw": 1, "soc_pct": 40}')
