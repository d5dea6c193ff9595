"""Layout check (in the spirit of Home Assistant's hassfest): every service is complete."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest
import yaml

from derbus.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "pyproject.toml").exists())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_the_platform_services_exist() -> None:
    assert (
        sorted(
            [
                "edge_simulator",
                "meter_gateway",
                "cloud_sync",
                "feature_engineering",
                "forecaster",
                "peak_shaving",
                "load_manager",
                "voltage_coordinator",
                "console",
                "scada_bridge",
                "ev_charging",
            ]
        )
        == SERVICES
    )


def test_repository_layout() -> None:
    for path in (
        "docker-compose.yml",
        "Makefile",
        "README.md",
        "pyproject.toml",
        "uv.lock",
        "libs/common",
        "deploy",
        "tests/integration",
        "bench",
        "BENCHMARKS.md",
        ".ci/run",
        "docs/topics.md",
    ):
        assert (REPO / path).exists(), f"missing {path}"


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_complete(name: str) -> None:
    root = REPO / "services" / name
    for part in (
        "pyproject.toml",
        "Dockerfile",
        "README.md",
        f"src/{name}/__main__.py",
        f"src/{name}/settings.py",
        f"src/{name}/service.py",
    ):
        assert (root / part).exists(), f"services/{name} lacks {part}"
    assert list((root / "tests").glob("test_*.py")), f"services/{name}/tests has no tests"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_entry_with_readyz_healthcheck(name: str) -> None:
    entry = COMPOSE["services"].get(name)
    assert entry is not None, f"docker-compose.yml has no service {name}"
    assert entry["build"]["dockerfile"] == f"services/{name}/Dockerfile"
    # derbus.health asks /readyz (libs/common/tests/test_health.py)
    assert entry["healthcheck"]["test"] == ["CMD", "python", "-m", "derbus.health"]


@pytest.mark.parametrize("name", SERVICES)
def test_env_prefix_matches_settings(name: str) -> None:
    meta = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())["tool"][
        "derbus"
    ]
    module = importlib.import_module(f"{name}.settings")
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, ServiceSettings)
        and c is not ServiceSettings
        and c.__module__ == module.__name__
    ]
    assert classes, f"{name}.settings defines no ServiceSettings subclass"
    for cls in classes:
        assert cls.model_config.get("env_prefix") == meta["env_prefix"], cls
        # the port in [tool.derbus] (make run, compose) is the one the service defaults to alone
        assert cls.model_fields["api_port"].default == meta["api_port"], cls
    compose_env = COMPOSE["services"][name]["environment"]
    assert f"{meta['env_prefix']}API_PORT" in compose_env
    assert str(compose_env[f"{meta['env_prefix']}API_PORT"]) == str(meta["api_port"])
