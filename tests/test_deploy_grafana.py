"""Grafana provisioning and dashboards: every query reads what derbus really writes to InfluxDB."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from derbus.storage import influx_schema

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SCHEMA = influx_schema()
OPEN_FIELD_SETS = {"kpi"}  # KPI fields are chosen by the controllers: select them by regex
BUILTIN_VARIABLES = {"__interval", "__interval_ms", "__range", "__from", "__to", "__rate_interval"}

MEASUREMENT = re.compile(r'r\._measurement\s*==\s*"([^"]+)"')
FIELD_EQ = re.compile(r'r\._field\s*==\s*"([^"]+)"')
FIELD_RE = re.compile(r"r\._field\s*=~\s*/((?:\\/|[^/])+)/")
TAG = re.compile(r"\br\.([A-Za-z][A-Za-z0-9_]*)\s*(?:==|!=|=~|!~)")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
TAG_VALUES = re.compile(
    r'schema\.tagValues\(.*?tag:\s*"([^"]+)".*?r\._measurement == "([^"]+)"', re.DOTALL
)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def provisioned_uids() -> set[str]:
    uids = set()
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml"):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            uids.add(source["uid"])
    return uids


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, Flux text) of every panel target and query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["query"]
    for variable in dashboard["templating"].get("list", []):
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]


def test_there_are_the_six_dashboards() -> None:
    titles = {load(p)["title"] for p in DASHBOARDS}
    for part in (
        "site overview",
        "peak shaving",
        "forecasts vs actuals",
        "load manager",
        "feeder voltages",
        "platform health",
    ):
        assert any(part in t for t in titles), f"no dashboard about {part}: {titles}"


def test_datasource_is_influxdb_flux_with_a_fixed_uid_and_env_secrets() -> None:
    path = GRAFANA / "provisioning" / "datasources" / "influxdb.yaml"
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    assert source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "Flux"
    assert source["uid"] == "derbus-influxdb"
    assert source["secureJsonData"]["token"] == "${INFLUXDB_TOKEN}"
    assert source["jsonData"]["defaultBucket"] == "${INFLUXDB_BUCKET}"


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/derbus.yaml").read_text())
    (entry,) = provider["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{entry['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_is_complete(path: Path) -> None:
    dashboard = load(path)
    assert re.fullmatch(r"derbus-[a-z-]+", dashboard["uid"])
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert ids
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_datasource_is_provisioned(path: Path) -> None:
    uids = provisioned_uids()
    dashboard = load(path)
    refs = [p.get("datasource") for p in panels(dashboard)]
    refs += [t.get("datasource") for p in panels(dashboard) for t in p.get("targets", [])]
    refs += [
        v.get("datasource") for v in dashboard["templating"].get("list", []) if v["type"] == "query"
    ]
    for ref in refs:
        assert ref is not None
        assert ref["uid"] in uids, f"{path.name} uses unprovisioned datasource {ref}"


def check_flux(where: str, flux: str) -> None:
    """Every measurement, field and tag the query filters on exists in the writer's schema."""
    measurements = set(MEASUREMENT.findall(flux))
    assert measurements, f"{where}: no measurement filter"
    unknown = measurements - set(SCHEMA)
    assert not unknown, f"{where}: measurements {unknown} are not written by derbus"
    fields = set().union(*(SCHEMA[m][1] for m in measurements))
    tags = set().union(*(SCHEMA[m][0] for m in measurements))
    for field in FIELD_EQ.findall(flux):
        assert field in fields, f"{where}: field {field!r} not in {sorted(measurements)}"
    for pattern in FIELD_RE.findall(flux):
        if measurements <= OPEN_FIELD_SETS:
            continue
        assert any(re.search(pattern, f) for f in fields), f"{where}: /{pattern}/ matches no field"
    if measurements & OPEN_FIELD_SETS:
        assert not FIELD_EQ.findall(flux) or measurements - OPEN_FIELD_SETS, (
            f"{where}: KPI fields are an open set; select them by regex (documented names)"
        )
    for tag in TAG.findall(flux):
        if tag in ("_measurement", "_field", "_value", "_time"):
            continue
        assert tag in tags, f"{where}: tag {tag!r} not in {sorted(measurements)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_reads_what_derbus_writes(path: Path) -> None:
    found = list(queries(load(path)))
    assert found
    for where, flux in found:
        assert "v.timeRangeStart" in flux or "schema.tagValues" in flux, where
        check_flux(where, flux)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables_are_defined_and_site_dashboards_have_a_site_variable(path: Path) -> None:
    dashboard = load(path)
    defined = {v["name"] for v in dashboard["templating"].get("list", [])}
    for where, flux in queries(dashboard):
        for a, b in VARIABLE.findall(flux):
            name = a or b
            assert name in defined | BUILTIN_VARIABLES, f"{where}: ${name} is not defined"
    uses_site = any("r.site_id" in flux for _, flux in queries(dashboard))
    if uses_site:
        site = next(v for v in dashboard["templating"].get("list", []) if v["name"] == "site")
        assert TAG_VALUES.search(site["query"]).groups() == ("site_id", "meter")  # type: ignore[union-attr]
    for variable in dashboard["templating"].get("list", []):
        if variable["type"] == "query":
            match = TAG_VALUES.search(variable["query"])
            assert match, variable["name"]
            tag, measurement = match.groups()
            assert tag in SCHEMA[measurement][0]


def test_forecast_dashboard_reaches_into_the_future_with_bands() -> None:
    dashboard = load(GRAFANA / "dashboards" / "forecasts.json")
    assert dashboard["time"]["to"].startswith("now+")
    fills = [
        prop
        for panel in panels(dashboard)
        for override in panel["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "custom.fillBelowTo"
    ]
    assert fills
    assert load(GRAFANA / "dashboards" / "peak-shaving.json")["time"]["to"].startswith("now+")


def test_the_checker_rejects_what_derbus_does_not_write() -> None:
    good = 'r._measurement == "meter" and r.site_id == "x"\n r._field == "p_kw"'
    check_flux("good", good)
    for bad in (
        'r._measurement == "meters"',
        'r._measurement == "meter" and r._field == "power_kw"',
        'r._measurement == "meter" and r.feeder_id == "f"',
        'r._measurement == "pv" and r._field =~ /^nothing$/',
        'r._measurement == "kpi" and r._field == "time_on_limit_s"',
        "no measurement at all",
    ):
        with pytest.raises(AssertionError):
            check_flux("bad", bad)


def test_committed_dashboards_are_what_the_builder_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.DASHBOARDS.items():
        committed = load(GRAFANA / "dashboards" / f"{name}.json")
        assert committed == build(), f"{name}.json differs: run deploy/grafana/build_dashboards.py"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_validates_against_the_sdk_schema(path: Path) -> None:
    """Each file parses into grafana-foundation-sdk's typed Dashboard model (panels by their
    plugin's options and field config) and serialises back to the same JSON: nothing in it is
    outside the schema, and nothing the schema requires is missing."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and field config by plugin type
    data = load(path)
    model = Dashboard.from_json(data)
    assert json.loads(json.dumps(model, cls=JSONEncoder)) == data
    for panel in model.panels or []:
        assert panel.type_val in {"timeseries", "stat", "state-timeline", "table", "bargauge"}
        assert not isinstance(panel.options, dict), f"{panel.title}: options not typed"


def test_the_committed_dashboards_are_what_the_builder_writes(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.DASHBOARDS.items():
        committed = load(GRAFANA / "dashboards" / f"{name}.json")
        assert build() == committed, f"{name}.json is stale: run deploy/grafana/build_dashboards.py"
