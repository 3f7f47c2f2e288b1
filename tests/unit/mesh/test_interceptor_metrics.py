"""Metric families, the breaker gauge and the exposition text, without a server."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mesh.breaker import BreakerState
from mesh.interceptors import (
    MeshMetrics,
    forget_breaker,
    mesh_metrics,
    metrics_asgi_app,
    render_metrics,
    server_interceptors,
    set_breaker_state,
)
from mesh.interceptors.metrics import LATENCY_BUCKETS

BREAKER = "itsmesh_breaker_state"


def test_each_registry_gets_its_metrics_once():
    registry = CollectorRegistry()
    assert mesh_metrics(registry) is mesh_metrics(registry)
    assert isinstance(mesh_metrics(registry), MeshMetrics)
    assert mesh_metrics(registry) is not mesh_metrics(CollectorRegistry())


def test_two_servers_of_one_process_share_the_registry_without_clashing():
    registry = CollectorRegistry()
    server_interceptors("streaming", registry=registry, max_concurrent=4)
    server_interceptors("streaming", registry=registry, max_concurrent=8)  # e.g. a restart in tests
    assert registry.get_sample_value("itsmesh_grpc_server_concurrency_limit", {"service": "streaming"}) == 8


@pytest.mark.parametrize(
    ("state", "value"),
    [
        (BreakerState.CLOSED, 0),
        (BreakerState.HALF_OPEN, 1),
        (BreakerState.OPEN, 2),
        ("closed", 0),
        ("half-open", 1),
        ("HALF_OPEN", 1),
        ("open", 2),
        (1, 1),
    ],
)
def test_breaker_states_map_to_0_closed_1_half_open_2_open(state, value):
    registry = CollectorRegistry()
    set_breaker_state("analytics", "10.0.0.5:50052", state, registry=registry)
    labels = {"service": "analytics", "endpoint": "10.0.0.5:50052"}
    assert registry.get_sample_value(BREAKER, labels) == value


@pytest.mark.parametrize("state", [3, -1, "ajar"])
def test_an_unknown_breaker_state_is_refused(state):
    with pytest.raises(ValueError, match="breaker state"):
        set_breaker_state("analytics", "a:1", state, registry=CollectorRegistry())


def test_a_forgotten_endpoint_leaves_no_stale_series():
    registry = CollectorRegistry()
    set_breaker_state("alert", "a:1", BreakerState.OPEN, registry=registry)
    forget_breaker("alert", "a:1", registry=registry)
    forget_breaker("alert", "never-seen:1", registry=registry)
    assert registry.get_sample_value(BREAKER, {"service": "alert", "endpoint": "a:1"}) is None


def test_the_exposition_text_names_every_family():
    registry = CollectorRegistry()
    set_breaker_state("alert", "a:1", BreakerState.HALF_OPEN, registry=registry)
    body, content_type = render_metrics(registry)
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'itsmesh_breaker_state{endpoint="a:1",service="alert"} 1.0' in text
    for family in (
        "itsmesh_grpc_server_requests_total",
        "itsmesh_grpc_server_latency_seconds",
        "itsmesh_grpc_server_in_flight",
        "itsmesh_grpc_client_requests_total",
        "itsmesh_grpc_client_latency_seconds",
        "itsmesh_grpc_client_in_flight",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text


def test_openmetrics_is_served_to_scrapers_that_ask_for_it():
    body, content_type = render_metrics(
        CollectorRegistry(), accept="application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_the_asgi_app_serves_the_registry_for_mounting_at_metrics():
    registry = CollectorRegistry()
    set_breaker_state("alert", "a:1", "open", registry=registry)
    transport = httpx.ASGITransport(app=metrics_asgi_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert 'itsmesh_breaker_state{endpoint="a:1",service="alert"} 2.0' in reply.text


def _samples(registry: CollectorRegistry, family: str) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if line.startswith(family) and "_created" not in line]


@pytest.mark.parametrize("seconds", [[], [0.0005], [0.0001, 0.003, 0.003, 0.75, 400.0]])
def test_lock_free_call_stats_expose_what_a_prometheus_histogram_would(seconds):
    ours, reference = CollectorRegistry(), CollectorRegistry()
    counts = mesh_metrics(ours).client_calls.series("alert", "x.Y/Z", "OK")
    histogram = Histogram(
        "itsmesh_grpc_client_latency_seconds",
        "reference",
        ["target_service", "method", "code"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    ).labels("alert", "x.Y/Z", "OK")
    for value in seconds:
        counts.observe(value)
        histogram.observe(value)
    family = "itsmesh_grpc_client_latency_seconds_"
    assert _samples(ours, family) == _samples(reference, family)
    labels = {"target_service": "alert", "method": "x.Y/Z", "code": "OK"}
    assert ours.get_sample_value("itsmesh_grpc_client_requests_total", labels) == len(seconds)
