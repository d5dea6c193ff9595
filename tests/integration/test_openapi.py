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
from derbus.bus import make_bus
from derbus.http import make_app
from derbus.service import Service
from derbus.settings import MqttSettings, ServiceSettings
from derbus.testing import free_port, wait_until

pytestmark = pytest.mark.integration

# the services whose API passes so far (the rest follow as their routes get their models)
CHECKED = {
    "peak_shaving",
    "console",
    "edge_simulator",
    "meter_gateway",
    "cloud_sync",
    "feature_engineering",
    "forecaster",
}
TOKEN = "schemathesis-token-0123456789"
MAX_EXAMPLES = 6
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
}
# settings a service needs to run in a test folder besides data_dir, mqtt and api_token
EXTRA: dict[str, dict[str, Any]] = {
    "ev_charging": {"ocpp_port": 0},
    "forecaster": {"train_at_start": False},
}


def _settings_class(name: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{name}.settings")
    return next(
        c for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, ServiceSettings) and c.__module__ == module.__name__
    )  # fmt: skip


@contextmanager
def _served(service: Service[Any, Any]) -> Iterator[str]:
    """The service's app under uvicorn on a free 127.0.0.1 port (its lifespan starts it)."""
    port = free_port()
    config = uvicorn.Config(
        make_app(service), host="127.0.0.1", port=port, lifespan="on", log_level="warning",
        access_log=False, log_config=None,
    )  # fmt: skip
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
        # server-sent event streams never end: read one event, or for 3 s at most
        "operations": [
            {
                "include-path-regex": "^/events/",
                "request-timeout": 3,
                "max-stream-events": 1,
                "generation": {"max-examples": 2},
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


def _run(name: str, url: str, token: str | None) -> tuple[int, list[str]]:
    """Run schemathesis over the served OpenAPI: (cases sent, unique failures)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=_config(name, token))
    problems: set[str] = set()
    cases = 0
    for event in from_schema(schema).execute():
        if isinstance(event, ScenarioFinished):
            cases += len(event.recorder.cases)
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
    return cases, sorted(problems)


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
@pytest.mark.parametrize("name", [s for s in acl.PLATFORM_SERVICES if s in CHECKED])
def test_the_api_keeps_its_openapi(
    name: str, token: str | None, tmp_path: Path, mqtt_settings: MqttSettings
) -> None:
    settings = _settings_class(name)(
        data_dir=tmp_path, mqtt=mqtt_settings, api_token=token, **EXTRA.get(name, {})
    )
    module = importlib.import_module(f"{name}.service")
    service: Service[Any, Any] = module.build_service(
        settings, make_bus(settings.mqtt, name, site_id=settings.site.id)
    )
    with _served(service) as url:
        cases, problems = _run(name, url, token)
    assert cases > 0, f"{name}: schemathesis sent nothing"
    assert not problems, f"{name}: {len(problems)} failures in {cases} cases:\n" + "\n".join(
        problems
    )
