"""infrastructure/k8s: valid Kubernetes objects that run every service the way the code expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mesh.events import TOPIC_PARTITIONS
from services.cli import ServiceName
from tests.unit.deploy.deploy_expectations import GRPC_PORTS, HTTP_PORTS, known_env_names

K8S = Path(__file__).resolve().parents[3] / "infrastructure" / "k8s"


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc)
    return docs


DOCS = _documents()


def _of(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in DOCS if doc["kind"] == kind}


def test_every_yaml_file_is_in_the_kustomization():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == listed


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_object_validates_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_every_service_has_a_deployment_service_and_disruption_budget():
    deployments, services, budgets = _of("Deployment"), _of("Service"), _of("PodDisruptionBudget")
    for name in (s.value for s in ServiceName):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["serve", name]
        assert name in services
        assert name in budgets


@pytest.mark.parametrize("name", [s.value for s in ServiceName])
def test_ports_and_probes_agree_with_the_code_defaults(name):
    container = _of("Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    prefix = f"ITSMESH_{name.upper()}_"
    if GRPC_PORTS[name] is not None:
        assert ports["grpc"] == GRPC_PORTS[name]
        assert env[prefix + "GRPC_PORT"]["value"] == str(GRPC_PORTS[name])
        assert container["readinessProbe"]["grpc"]["port"] == GRPC_PORTS[name]
        assert container["livenessProbe"]["grpc"]["port"] == GRPC_PORTS[name]
    else:
        assert container["readinessProbe"]["httpGet"]["port"] == HTTP_PORTS[name]
    if HTTP_PORTS[name] is not None:
        assert ports["http"] == HTTP_PORTS[name]
    # each pod registers its own address in discovery, so clients reach every replica
    assert env[prefix + "ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


@pytest.mark.parametrize("name", [s.value for s in ServiceName])
def test_env_names_are_settings_the_code_reads_and_references_resolve(name):
    container = _of("Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
    config_maps, secrets = _of("ConfigMap"), _of("Secret")
    names = {e["name"] for e in container["env"]}
    for source in container.get("envFrom", []):
        names |= set(config_maps[source["configMapRef"]["name"]]["data"])
    assert names - known_env_names() == set()
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["key"] in secrets[ref["name"]]["stringData"]
    for needed in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "ITSMESH_AUTH_URL"):
        assert needed in names
    if name == "auth":
        assert "ITSMESH_AUTH_SECRET_KEY" in names
    else:  # outgoing calls carry the service's own token
        assert {"ITSMESH_SERVICE_CLIENT_ID", "ITSMESH_SERVICE_CLIENT_SECRET"} <= names


def test_streaming_and_analytics_autoscale():
    hpas = _of("HorizontalPodAutoscaler")
    for name in ("streaming", "analytics"):
        assert hpas[name]["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpas[name]["spec"]["minReplicas"] >= 2


def test_ingress_is_denied_by_default():
    policies = _of("NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_kafka_has_three_brokers_replication_three_and_the_designed_topics():
    kafka = _of("StatefulSet")["kafka"]
    assert kafka["spec"]["replicas"] == 3
    env = {e["name"]: e["value"] for e in kafka["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
    assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    script = _of("Job")["kafka-topics"]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    for topic, partitions in TOPIC_PARTITIONS.items():
        assert f"{topic}:{partitions}" in script


def test_redis_is_watched_by_three_sentinels_that_services_use():
    assert _of("StatefulSet")["redis-sentinel"]["spec"]["replicas"] == 3
    url = _of("ConfigMap")["itsmesh-config"]["data"]["REDIS_URL"]
    assert url.startswith("redis+sentinel://")
