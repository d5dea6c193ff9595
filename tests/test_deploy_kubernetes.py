"""Kubernetes manifests: valid YAML, one Deployment per service with the compose image, port and probes."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from derbus import acl

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append(doc)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    for doc in documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/kubernetes")


def container(name: str) -> dict[str, Any]:
    (found,) = find("Deployment", name.replace("_", "-"))["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = found
    return result


def test_every_manifest_parses_and_is_a_kubernetes_object() -> None:
    docs = documents()
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)
        assert doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
def test_deployment_matches_compose_image_port_and_probes(name: str) -> None:
    meta = tomllib.loads((REPO / "services" / name / "pyproject.toml").read_text())["tool"][
        "derbus"
    ]
    port = meta["api_port"]
    # other listeners ([tool.derbus] extra_ports, e.g. OCPP_PORT) are named after the setting
    extra = [
        {"name": k.lower().removesuffix("_port"), "containerPort": v}
        for k, v in meta.get("extra_ports", {}).items()
    ]
    c = container(name)
    assert c["image"] == COMPOSE["services"][name]["image"].replace(
        "${DERBUS_VERSION:-latest}", "latest"
    )
    assert c["ports"] == [{"name": "api", "containerPort": port}, *extra]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    service = find("Service", name.replace("_", "-"))
    pod_labels = find("Deployment", name.replace("_", "-"))["spec"]["template"]["metadata"][
        "labels"
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == port


@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
def test_deployment_takes_secrets_from_the_secret_only(name: str) -> None:
    env = {e["name"]: e for e in container(name)["env"]}
    assert env["MQTT_USERNAME"]["value"] == name
    assert env["MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == acl.password_env_var(name)
    for key, item in env.items():
        if any(s in key for s in ("PASSWORD", "TOKEN", "DATABASE_URL", "SECRET")):
            assert "value" not in item, f"{name}: {key} has a literal value"
            assert item["valueFrom"]["secretKeyRef"]["name"] == "derbus-secrets"
    pod = find("Deployment", name.replace("_", "-"))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_persistent_volume_claims_exist_for_what_must_persist() -> None:
    claims = {d["metadata"]["name"] for d in documents() if d["kind"] == "PersistentVolumeClaim"}
    for doc in documents():
        if doc["kind"] != "Deployment":
            continue
        for volume in doc["spec"]["template"]["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert {"sync-outbox", "forecaster-models", "mosquitto-data"} <= claims


def test_broker_uses_the_generated_acl_and_services_find_it() -> None:
    broker = find("Deployment", "mosquitto")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in broker["containers"][0]["volumeMounts"]}
    assert {
        "/mosquitto/config/acl",
        "/mosquitto/config/passwd",
        "/mosquitto/config/mosquitto.conf",
    } <= mounts
    config = find("ConfigMap", "derbus-config")["data"]
    assert config["MQTT_HOST"] == find("Service", "mosquitto")["metadata"]["name"]
    assert config["MQTT_PORT"] == str(find("Service", "mosquitto")["spec"]["ports"][0]["port"])


def test_readme_explains_the_clustered_broker_and_shared_subscriptions() -> None:
    text = (K8S / "README.md").read_text()
    assert "$share/" in text
    assert "EMQX" in text


# --- schema, resources, and the same environment as compose --------------------------------------


def test_every_manifest_validates_against_the_kubernetes_openapi_schemas() -> None:
    """kubernetes-validate (PyPI) ships the JSON schemas generated from Kubernetes' OpenAPI
    document; strict mode also refuses fields the schema does not know (typos)."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    errors = []
    for doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(
                f"{doc['kind']} {doc['metadata']['name']}: {err.message} at {list(err.path)}"
            )
    assert not errors, "\n".join(errors)


def test_a_manifest_with_a_typo_is_refused_by_the_validator() -> None:
    import kubernetes_validate

    doc = find("Deployment", "peak-shaving")
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_every_container_has_requests_and_limits() -> None:
    for doc in documents():
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            resources = c.get("resources", {})
            where = f"{doc['metadata']['name']}/{c['name']}"
            # requests place the pod; a memory limit bounds a leak. No CPU limit is required:
            # CFS throttling would stretch the control loops' latency.
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


# compose mounts deploy/gateway from the repository; in Kubernetes the devices file is the
# site's own ConfigMap (deploy/kubernetes/README.md), so the gateway runs on its default until then
K8S_ONLY_ELSEWHERE = {"meter_gateway": {"METER_GATEWAY_DEVICES_FILE"}}


def _k8s_env_names(name: str) -> set[str]:
    c = container(name)
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(find("ConfigMap", source["configMapRef"]["name"])["data"])
    return names


@pytest.mark.parametrize("name", acl.PLATFORM_SERVICES)
def test_deployment_sets_every_variable_compose_sets(name: str) -> None:
    compose_env = set(COMPOSE["services"][name]["environment"])
    # the compose healthcheck's port variable is compose-only (Kubernetes probes name the port)
    missing = (
        compose_env
        - _k8s_env_names(name)
        - {"DERBUS_HEALTH_PORT"}
        - K8S_ONLY_ELSEWHERE.get(name, set())
    )
    assert not missing, f"{name}: set in docker-compose.yml but not in deploy/kubernetes: {missing}"
