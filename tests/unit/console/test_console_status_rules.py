"""The console's status decisions: component status, traffic mode, transitions and departed instances."""

from __future__ import annotations

from services.console.status import (
    ComponentStatus,
    GoneInstances,
    by_latency,
    instance_status,
    is_urgent,
    overview,
    rate,
    traffic_mode,
    transitions,
)


def test_a_check_that_answers_slowly_is_degraded_not_healthy():
    assert by_latency(3.0) == "healthy"
    assert by_latency(251.0) == "degraded"
    assert by_latency(40.0, slow_ms=20.0) == "degraded"


def test_instance_status_follows_health_then_registration_then_breakers():
    assert instance_status("SERVING", "SERVING", 0) == "healthy"
    assert instance_status("SERVING", "SERVING", 1) == "degraded"
    assert instance_status("NOT_SERVING", "SERVING", 0) == "degraded"
    assert instance_status("SERVING", "NOT_SERVING", 0) == "degraded"
    assert instance_status("DOWN", "SERVING", 0) == "down"
    assert instance_status("SERVICE_UNKNOWN", "SERVING", 0) == "unknown"


def test_rates_need_an_interval_and_ignore_counter_resets():
    assert rate(30.0, 10.0, 2.0) == 10.0
    assert rate(5.0, 10.0, 1.0) is None
    assert rate(5.0, 1.0, 0.0) is None


def test_traffic_mode_comes_from_the_error_rate_and_reachability():
    assert traffic_mode(None, 0, 0) == "normal"
    assert traffic_mode(0.01, 2, 2) == "normal"
    assert traffic_mode(0.05, 2, 2) == "degraded"
    assert traffic_mode(0.6, 2, 2) == "isolated"
    assert traffic_mode(None, 0, 3) == "isolated"


def test_transitions_name_every_change_including_appearing_and_vanishing_components():
    changes = transitions({"a": "healthy", "b": "healthy"}, {"a": "down", "c": "healthy"}, 10.0)
    assert [(t.name, t.previous, t.current) for t in changes] == [
        ("a", "healthy", "down"),
        ("b", "healthy", None),
        ("c", None, "healthy"),
    ]
    assert all(t.at == 10.0 for t in changes)
    assert transitions({"a": "healthy"}, {"a": "healthy"}, 1.0) == []


def test_going_down_or_coming_back_is_urgent_but_a_new_or_degraded_component_is_not():
    assert is_urgent(transitions({"a": "healthy"}, {"a": "down"}, 0.0))
    assert is_urgent(transitions({"a": "down"}, {"a": "healthy"}, 0.0))
    assert not is_urgent(transitions({"a": "healthy"}, {"a": "degraded"}, 0.0))
    assert not is_urgent(transitions({}, {"a": "down"}, 0.0))


def test_an_instance_that_leaves_discovery_shows_as_down_until_retention_ends():
    gone = GoneInstances(retention_s=60.0)
    alive = ComponentStatus("alert/a1", "alert", "healthy", 1.0, {"version": "0.1.0"})
    assert gone.update([alive], now=100.0) == []
    [left] = gone.update([], now=101.0)
    assert (left.name, left.status, left.details["version"]) == ("alert/a1", "down", "0.1.0")
    assert left.error == "no longer registered"
    assert gone.update([], now=161.5) == []
    assert gone.update([], now=162.0) == []


def test_an_instance_that_comes_back_is_no_longer_listed_as_gone():
    gone = GoneInstances()
    alive = ComponentStatus("alert/a1", "alert", "healthy", 1.0)
    gone.update([alive], now=0.0)
    assert gone.update([alive], now=5.0) == []


def test_overview_counts_services_and_infrastructure_separately():
    components = [
        ComponentStatus("postgresql", "postgresql", "healthy", 1.0),
        ComponentStatus("redis", "redis", "down", None),
        ComponentStatus("kafka", "kafka", "degraded", 400.0),
        ComponentStatus("alert/a1", "alert", "healthy", 1.0),
        ComponentStatus("alert/a2", "alert", "down", None),
    ]
    assert overview(components) == {
        "services_up": 1,
        "services_total": 2,
        "infrastructure_up": 2,
        "infrastructure_total": 3,
    }
