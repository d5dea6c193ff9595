"""The FastAPI app of a service: health, readiness, config (redacted, validated), topics, metrics, token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from derbus.bus import InMemoryBus
from derbus.http import TokenDep, make_app
from derbus.settings import MqttSettings
from derbus.testing.example import EchoSettings, build_echo


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = EchoSettings(
        api_token="s3cret-token", mqtt=MqttSettings(password="broker-pw", username="echo")
    )
    service = build_echo(settings, InMemoryBus())
    router = APIRouter()

    @router.post("/kick", status_code=202)
    def kick(_auth: TokenDep) -> dict[str, bool]:
        return {"kicked": True}

    service.include_router(router)
    with TestClient(make_app(service)) as test_client:
        yield test_client


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "online"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_ready_is_503_before_start() -> None:
    service = build_echo(EchoSettings(), InMemoryBus())
    with TestClient(make_app(service, manage_lifecycle=False)) as test_client:
        assert test_client.get("/readyz").status_code == 503


def test_config_redacts_secrets(client: TestClient) -> None:
    body = client.get("/config").text
    assert "s3cret-token" not in body
    assert "broker-pw" not in body
    assert client.get("/config").json()["mutable"] == ["floor_kw", "limit_kw"]


def test_put_config_needs_token_and_validates(client: TestClient) -> None:
    assert client.put("/config", json={"limit_kw": 7}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.put("/config", json={"limit_kw": 7}, headers=wrong).status_code == 403
    auth = {"Authorization": "Bearer s3cret-token"}
    ok = client.put("/config", json={"limit_kw": 7}, headers=auth)
    assert ok.status_code == 200
    assert ok.json()["config"]["limit_kw"] == 7
    bad = client.put("/config", json={"limit_kw": -3}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["detail"]["fields"] == ["limit_kw"]
    frozen = client.put("/config", json={"api_port": 1}, headers=auth)
    assert frozen.status_code == 422
    assert "api_port" in frozen.json()["detail"]["error"]


def test_service_routes_use_the_token(client: TestClient) -> None:
    assert client.post("/kick").status_code == 401
    assert client.post("/kick", headers={"Authorization": "Bearer s3cret-token"}).status_code == 202


def test_topics_and_metrics(client: TestClient) -> None:
    subs = client.get("/topics").json()["subscribes"]
    assert [s["key"] for s in subs] == ["telemetry.meter"]
    metrics = client.get("/metrics").text
    assert "derbus_messages_in_total" in metrics
    assert "derbus_bus_connected 1.0" in metrics
