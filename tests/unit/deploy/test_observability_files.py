"""Prometheus and Grafana provisioning: datasources the dashboards use exist, and the dashboards query
metric names and columns the code actually produces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[3] / "infrastructure"
GRAFANA = INFRA / "grafana"
METRICS_SOURCE = (INFRA.parent / "mesh" / "interceptors" / "metrics.py").read_text()
TABLES_SQL = (INFRA / "sql" / "0002_time_series.sql").read_text()


def _datasources() -> dict[str, str]:
    found = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            found[source["uid"]] = source["type"]
    return found


def _dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}


def _queries(dashboard: dict) -> list[str]:
    return [t.get("expr") or t.get("rawSql", "") for p in dashboard["panels"] for t in p["targets"]]


def test_prometheus_and_timescaledb_datasources_are_provisioned():
    types = set(_datasources().values())
    assert "prometheus" in types
    assert "grafana-postgresql-datasource" in types


def test_every_panel_uses_a_provisioned_datasource():
    uids = set(_datasources())
    for name, dashboard in _dashboards().items():
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids, (name, panel["title"])


def test_golden_signal_queries_use_metrics_the_mesh_exports():
    exported = set(re.findall(r'"(itsmesh_[a-z_]+)"', METRICS_SOURCE))
    queries = _queries(_dashboards()["itsmesh-overview.json"])
    used = {
        re.sub(r"_(total|bucket|sum|count)$", "", m) for q in queries for m in re.findall(r"itsmesh_\w+", q)
    }
    assert used
    assert used <= exported


def test_traffic_queries_use_columns_of_the_analytics_tables():
    columns = set(re.findall(r"^\s{4}(\w+)\s", TABLES_SQL, re.MULTILINE))
    sql = " ".join(_queries(_dashboards()["itsmesh-traffic.json"]))
    for column in (
        "vehicle_count",
        "mean_speed_kmh",
        "p85_speed_kmh",
        "occupancy",
        "congestion_level",
        "lane",
    ):
        assert column in sql
        assert column in columns


def test_prometheus_scrapes_every_service():
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    names = {
        n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]
    }
    assert {"streaming", "analytics", "alert", "auth", "console"} <= names
