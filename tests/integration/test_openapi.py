"""Every service's REST API against its own OpenAPI: schemathesis, all checks, bounded examples.

Each service runs as in production: `build_service` on a real Mosquitto, its FastAPI app under
uvicorn on 127.0.0.1, once without an API token and once with one. schemathesis loads the
served `/openapi.json` and runs its coverage, examples and fuzzing phases (valid and invalid
requests) with every check: no server error, every status code, content type, header and body
as documented, invalid requests refused, valid ones accepted, methods not declared answered 405
with `Allow`, and (with a token) no declared-secured route served without it.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from schemathesis.engine import Status, from_schema
from schemathesis.engine.events import FatalError, NonFatalError, ScenarioFinished

from derbus import acl
from derbus.bus import InMemoryBus, make_bus
from derbus.bus.base import Bus
from derbus.http import make_app
from derbus.service import Service
from derbus.settings import MqttSettings, ServiceSettings
from derbus.testing import free_port, wait_until

pytestmark = pytest.mark.integration

TOKEN = "schemathesis-token-0123456789"
MAX_EXAMPLES = 4
SEED = 22
# Routes that check rules between fields JSON Schema cannot express answer a schema-valid body
# breaking one with 422 naming the field: for them (only) 422 is an accepted answer to valid data.
CROSS_FIELD_RULES: dict[str, list[tuple[str, str]]] = {
    "*": [
        ("PUT", "/config"),  # settings validators: soc_min < soc_max, export < import limit…
        # a setpoint the device refuses (beyond its rating, a target it lacks) is answered with
        # its `rejected` ack and 422: the setpoint contract
        ("POST", "/devices/{device_id}/setpoints"),
    ],
    # a job's window against now and its profile; a scenario's ids, windows and files
    "load_manager": [
        ("POST", "/jobs"),
        ("POST", "/planner/check"),
        ("POST", "/planner/simulate"),
        ("POST", "/planner/import"),
    ],
}
# settings a service needs to run in a test folder besides data_dir, mqtt and api_token
EXTRA: dict[str, dict[str, Any]] = {
    "ev_charging": {"ocpp_port": 0},
    "forecaster": {"train_at_start": False},
}


def _build(name: str, settings: ServiceSettings, bus: Bus) -> Service[Any, Any]:
    service: Service[Any, Any] = importlib.import_module(f"{name}.service").build_service(
        settings, bus
    )
    return service


def _settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{name}.settings")
    return next(
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c.__module__ == module.__name__
    )


@contextmanager
def _served(service: Service[Any, Any]) -> Iterator[str]:
    """The service's app under uvicorn on a free 127.0.0.1 port (its lifespan starts it)."""
    port = free_port()
    config = uvicorn.Config(
        make_app(service),
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{service.name}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 60, 0.05, "uvicorn started")
        assert server.started, f"{service.name}'s API did not start"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, 0.05, f"{service.name} ready")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), f"{service.name}'s API did not stop"


def _config(name: str, token: str | None) -> schemathesis.Config:
    data: dict[str, Any] = {
        "seed": SEED,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "mode": "all",
            "deterministic": True,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 20,
        "suppress-health-check": ["all"],
        "cache": {"enabled": False},
        # server-sent event streams never end: one valid request each, read for an event or 2 s
        "operations": [
            # a simulation solves a MILP per run: its valid bodies are few and costly
            {
                "include-path": "/planner/simulate",
                "generation": {"max-examples": 2},
                "phases": {"coverage": {"enabled": False}},
            },
            {
                "include-path-regex": "^/events/",
                "request-timeout": 2,
                "max-stream-events": 1,
                "generation": {"max-examples": 1, "mode": "positive"},
                "phases": {"coverage": {"enabled": False}},
            },
            *(
                {
                    "include-method": method,
                    "include-path": path,
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
                        }
                    },
                }
                for method, path in [*CROSS_FIELD_RULES["*"], *CROSS_FIELD_RULES.get(name, [])]
            ),
        ],
    }
    if token is not None:
        data["auth"] = {"openapi": {"HTTPBearer": {"bearer": token}}}
    return schemathesis.Config.from_dict(data)


def _run(name: str, url: str, token: str | None) -> tuple[int, list[str], set[tuple[str, int]]]:
    """Run schemathesis over the served OpenAPI: cases sent, unique failures, (label, status)s."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=_config(name, token))
    if token is not None:  # the reads answer alike either way: the token run is for the writes
        schema = schema.include(method=["POST", "PUT", "DELETE"])
    problems: set[str] = set()
    answers: set[tuple[str, int]] = set()
    cases = 0
    for event in from_schema(schema).execute():
        if isinstance(event, ScenarioFinished):
            cases += len(event.recorder.cases)
            answers.update(
                (event.recorder.label, i.response.status_code)
                for i in event.recorder.interactions.values()
                if i.response is not None
            )
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.add(
                            f"{event.recorder.label}: {check.name}: {failure.title}: "
                            f"{failure.message[:300]}\n  {check.failure_info.code_sample}"
                        )
        elif isinstance(event, NonFatalError):
            problems.add(f"{event.label}: error: {event.info.format()[:500]}")
        elif isinstance(event, FatalError):
            problems.add(f"fatal: {event.exception!r}")
    return cases, sorted(problems), answers


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
def test_the_api_keeps_its_openapi(
    name: str, token: str | None, tmp_path: Path, mqtt_settings: MqttSettings
) -> None:
    settings = _settings_class(name)(
        data_dir=tmp_path, mqtt=mqtt_settings, api_token=token, **EXTRA.get(name, {})
    )
    service = _build(name, settings, make_bus(settings.mqtt, name, site_id=settings.site.id))
    with _served(service) as url:
        cases, problems, answers = _run(name, url, token)
    assert cases > 0, f"{name}: schemathesis sent nothing"
    # the generated requests got through: with the token configured, schemathesis sent it
    assert ("PUT /config", 200) in answers, f"{name}: no config change accepted: {answers}"
    assert not problems, f"{name}: {len(problems)} failures in {cases} cases:\n" + "\n".join(
        problems
    )


def _untyped(schema: dict[str, Any]) -> bool:
    """A JSON body schema that says nothing: `{}` or any object."""
    rest = {k: v for k, v in schema.items() if k not in ("title", "description")}
    return rest in ({}, {"type": "object"}, {"type": "object", "additionalProperties": True})


@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
def test_every_route_declares_its_bodies(name: str, tmp_path: Path) -> None:
    """Each operation's JSON request and 2xx bodies have a schema, each error status a body."""
    settings = _settings_class(name)(data_dir=tmp_path, api_token=TOKEN, **EXTRA.get(name, {}))
    doc = make_app(_build(name, settings, InMemoryBus())).openapi()
    untyped = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            label = f"{method.upper()} {path}"
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and _untyped(body["schema"]):
                untyped.append(f"{label}: request body")
            for status, response in op["responses"].items():
                media = response.get("content", {})
                if not media:
                    untyped.append(f"{label} {status}: no content declared")
                json_body = media.get("application/json")
                if status.startswith("2") and json_body and _untyped(json_body["schema"]):
                    untyped.append(f"{label} {status}: response body")
    assert len(doc["paths"]) >= 6, f"{name}: {sorted(doc['paths'])}"
    assert not untyped, f"{name}:\n" + "\n".join(untyped)
