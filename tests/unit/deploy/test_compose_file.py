"""docker-compose.complete.yml and the Dockerfile: every service, port, env var and file they name exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.events import TOPIC_PARTITIONS
from services.cli import ServiceName, app
from tests.unit.deploy.deploy_expectations import GRPC_PORTS, HTTP_PORTS, known_env_names

ROOT = Path(__file__).resolve().parents[3]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.complete.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "infrastructure" / "docker" / "Dockerfile").read_text()
ITSMESH = [name for name, svc in SERVICES.items() if svc.get("image", "").startswith("itsmesh:")]
INFRA_ENV = re.compile(r"^(KAFKA_|POSTGRES_|GF_|COLLECTOR_|BOOTSTRAP$|REPLICATION$)")


def _commands() -> set[str]:
    return {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}


def test_every_service_runs_from_the_image_with_serve():
    for name in (s.value for s in ServiceName):
        assert SERVICES[name]["image"] == "itsmesh:0.1.0"
        assert SERVICES[name]["command"] == ["serve", name]


def test_itsmesh_commands_used_by_the_file_exist():
    used = {SERVICES[n]["command"][0] for n in ITSMESH}
    used |= {SERVICES[n]["healthcheck"]["test"][2] for n in ITSMESH if "healthcheck" in SERVICES[n]}
    assert used - _commands() == set()


@pytest.mark.parametrize("name", [s.value for s in ServiceName])
def test_ports_and_health_checks_agree_with_the_code_defaults(name):
    env = SERVICES[name]["environment"]
    prefix = f"ITSMESH_{name.upper()}_"
    check = SERVICES[name]["healthcheck"]["test"]
    if GRPC_PORTS[name] is not None:
        assert env[prefix + "GRPC_PORT"] == str(GRPC_PORTS[name])
        assert check[-1] == f"127.0.0.1:{GRPC_PORTS[name]}"
    else:
        assert check[-1].startswith(f"http://127.0.0.1:{HTTP_PORTS[name]}/")
    if HTTP_PORTS[name] is not None:
        assert env[prefix + "HTTP_PORT"] == str(HTTP_PORTS[name])
    assert env[prefix + "ADVERTISE_HOST"] == "auto"  # replicas register their own container address


def test_env_names_are_settings_the_code_reads():
    for name in ITSMESH:
        names = set(SERVICES[name]["environment"])
        assert names - known_env_names() == set(), name
        for needed in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "ITSMESH_AUTH_URL"):
            assert needed in names, (name, needed)


def test_services_have_health_checks_limits_and_restart_policies():
    for name, svc in SERVICES.items():
        if svc.get("restart") == "no":
            continue  # one-shot jobs: topic creation, migrations, the simulator
        assert svc["restart"] == "unless-stopped", name
        if "deploy" in svc:
            assert svc["deploy"]["resources"]["limits"], name
    for name in (s.value for s in ServiceName):
        assert "healthcheck" in SERVICES[name]
        assert "limits" in SERVICES[name]["deploy"]["resources"]


def test_streaming_and_analytics_are_replicated():
    for name in ("streaming", "analytics"):
        assert SERVICES[name]["deploy"]["replicas"] >= 2
        assert "ports" not in SERVICES[name]  # replicas cannot share a published port


def test_depends_on_and_volumes_refer_to_things_that_exist():
    for name, svc in SERVICES.items():
        depends = svc.get("depends_on", {})
        for target in depends if isinstance(depends, list) else depends.keys():
            assert target in SERVICES, (name, target)
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in COMPOSE["volumes"], source


def test_profiles_for_monitoring_dev_and_ha():
    profiles = {p for svc in SERVICES.values() for p in svc.get("profiles", [])}
    assert {"monitoring", "dev", "ha"} <= profiles
    for needed in ("prometheus", "grafana", "otel-collector", "jaeger"):
        assert "monitoring" in SERVICES[needed]["profiles"]


def test_topics_are_created_with_the_designed_partitions():
    script = SERVICES["kafka-init"]["command"][0]
    for topic, partitions in TOPIC_PARTITIONS.items():
        assert f"{topic}:{partitions}" in script


def test_ha_profile_has_three_brokers_with_min_insync_two_and_three_sentinels():
    brokers = [n for n, s in SERVICES.items() if "ha" in s.get("profiles", []) and n.startswith("kafka-")]
    assert len(brokers) == 3
    for name in brokers:
        env = SERVICES[name]["environment"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
    sentinels = [n for n in SERVICES if n.startswith("sentinel-")]
    assert len(sentinels) == 3


def test_infrastructure_env_is_not_mistaken_for_itsmesh_settings():
    for name, svc in SERVICES.items():
        if name in ITSMESH:
            continue
        for key in svc.get("environment", {}):
            assert INFRA_ENV.match(key) or key.startswith("CLUSTER_ID"), (name, key)


def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists():
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.MULTILINE)) >= 2
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert user
    assert not user[-1].startswith(("root", "0"))
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    assert "requirements.lock" in DOCKERFILE  # the image installs the same pinned versions as CI
