"""Latency percentiles from histogram scrapes, and the per-service rows of the status vector."""

from __future__ import annotations

import math

from itsmesh.v1 import streaming_pb2  # noqa: F401  # registers StreamingService in the descriptor pool
from services.console.checks import is_stream_method
from services.console.status import (
    ComponentStatus,
    histogram_quantile,
    is_server_error,
    service_summaries,
    unchecked,
    worst,
)

INF = math.inf


def test_the_p99_interpolates_inside_the_bucket_of_the_observations_between_two_scrapes():
    earlier = {0.01: 100.0, 0.1: 100.0, 1.0: 100.0, INF: 100.0}
    # 100 new observations: 90 under 10 ms, 10 between 10 ms and 100 ms.
    later = {0.01: 190.0, 0.1: 200.0, 1.0: 200.0, INF: 200.0}
    p99 = histogram_quantile(0.99, later, earlier)
    assert p99 is not None
    assert math.isclose(p99, 0.01 + 0.09 * (99 - 90) / 10)
    assert math.isclose(histogram_quantile(0.5, later, earlier) or 0, 0.01 * 50 / 90)


def test_no_new_observations_or_a_reset_counter_give_no_percentile():
    same = {0.01: 5.0, INF: 5.0}
    assert histogram_quantile(0.99, same, same) is None
    assert histogram_quantile(0.99, {0.01: 1.0, INF: 1.0}, {0.01: 5.0, INF: 5.0}) is None
    assert histogram_quantile(0.99, {}, {}) is None


def test_a_percentile_beyond_the_last_finite_bound_is_that_bound():
    assert histogram_quantile(0.99, {0.5: 1.0, INF: 10.0}, {}) == 0.5


def test_streaming_methods_are_told_apart_from_unary_ones():
    assert is_stream_method("itsmesh.v1.StreamingService", "StreamFrames")
    assert is_stream_method("", "itsmesh.v1.StreamingService/StreamTelemetry")
    assert not is_stream_method("itsmesh.v1.StreamingService", "GetCamera")
    assert not is_stream_method("no.such.Service", "Anything")


def instance(service: str, status: str, rps: float | None, error_rate: float | None, p99: float | None):
    details = {"rps": rps, "error_rate": error_rate, "latency_p99_ms": p99}
    return ComponentStatus(f"{service}/{rps}", service, status, 1.0, details)  # type: ignore[arg-type]


def test_a_service_row_adds_rates_weights_errors_and_shows_the_worst_instance():
    rows = service_summaries(
        [
            ComponentStatus("postgresql", "postgresql", "down", None),
            instance("alert", "healthy", 30.0, 0.0, 4.0),
            instance("alert", "degraded", 10.0, 0.4, 12.0),
            instance("alert", "down", None, None, None),
        ]
    )
    assert set(rows) == {"alert"}, "infrastructure is not a service"
    alert = rows["alert"]
    assert alert["status"] == "down"
    assert alert["instances_up"] == 2
    assert alert["instances_total"] == 3
    assert alert["rps"] == 40.0
    assert alert["error_rate"] == 0.1  # 4 errors/s out of 40 requests/s
    assert alert["latency_p99_ms"] == 12.0


def test_a_service_without_samples_yet_shows_n_a_rather_than_zero():
    rows = service_summaries([instance("analytics", "healthy", None, None, None)])
    assert rows["analytics"]["rps"] is None
    assert rows["analytics"]["error_rate"] is None
    assert rows["analytics"]["latency_p99_ms"] is None
    idle = service_summaries([instance("analytics", "healthy", 0.0, None, None)])
    assert idle["analytics"]["error_rate"] == 0.0


def test_worst_orders_down_degraded_unknown_healthy():
    assert worst(["healthy", "unknown", "degraded"]) == "degraded"
    assert worst(["healthy", "down", "degraded"]) == "down"
    assert worst([]) == "healthy"


def test_only_the_services_own_failures_count_as_errors_not_the_callers_mistakes():
    for code in (
        "INTERNAL",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "UNKNOWN",
        "DATA_LOSS",
        "RESOURCE_EXHAUSTED",
    ):
        assert is_server_error(code), code
    for code in ("OK", "NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "CANCELLED"):
        assert not is_server_error(code), code


def test_instances_not_listed_this_tick_stay_listed_as_unknown_without_stale_figures():
    known = [instance("alert", "healthy", 30.0, 0.0, 4.0)]
    (again,) = unchecked(known, "no answer within 0.80 s")
    assert again.name == known[0].name
    assert again.status == "unknown"
    assert again.latency_ms is None
    assert "rps" not in again.details
    assert "no answer" in again.error
