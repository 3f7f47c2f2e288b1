"""The mesh client's pure parts: outcome verdicts, retry codes, policies, breaker records, static lists."""

from __future__ import annotations

import pytest

from mesh.breaker import BreakerConfig
from mesh.client import (
    DEFAULT_FAILURE_CODES,
    DEFAULT_POLICY,
    BreakerKeys,
    BreakerRecord,
    BudgetConfig,
    ClientConfig,
    ServicePolicy,
    StaticEndpoints,
    breaker_verdict,
    retry_code,
)
from mesh.retry import STATUS_CODES


@pytest.mark.parametrize("code", sorted(DEFAULT_FAILURE_CODES))
def test_codes_that_mean_the_endpoint_is_down_or_broken_count_as_failures(code):
    assert breaker_verdict(code, DEFAULT_FAILURE_CODES) == "failure"


@pytest.mark.parametrize("code", ["CANCELLED", "DEADLINE_EXCEEDED"])
def test_the_caller_giving_up_says_nothing_about_the_endpoint(code):
    assert breaker_verdict(code, DEFAULT_FAILURE_CODES) == "neutral"


@pytest.mark.parametrize(
    "code", ["OK", "NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "ABORTED"]
)
def test_an_answer_from_the_application_proves_the_endpoint_is_up(code):
    assert breaker_verdict(code, DEFAULT_FAILURE_CODES) == "success"


def test_every_status_code_gets_exactly_one_verdict():
    verdicts = {name: breaker_verdict(name, DEFAULT_FAILURE_CODES) for name in STATUS_CODES.values()}
    assert set(verdicts.values()) == {"success", "failure", "neutral"}


def test_configured_failure_codes_win_over_neutral():
    assert breaker_verdict("DEADLINE_EXCEEDED", frozenset({"DEADLINE_EXCEEDED"})) == "failure"


def test_a_cancelled_status_counts_as_unavailable_for_retries_and_nothing_else_changes():
    assert retry_code("CANCELLED") == "UNAVAILABLE"
    for name in STATUS_CODES.values():
        if name != "CANCELLED":
            assert retry_code(name) == name


def test_budget_floor_and_validation():
    budget = BudgetConfig(ratio=0.2, min_retries_per_second=1.0, ttl_seconds=10.0)
    assert budget.floor == 10.0
    assert budget.build().available(0.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="ratio"):
        BudgetConfig(ratio=-0.1)


def test_policy_defaults_and_normalised_failure_codes():
    assert DEFAULT_POLICY.balancer == "p2c"
    assert DEFAULT_POLICY.retry.max_attempts == 3
    assert ServicePolicy(failure_codes=frozenset({"unavailable", 13})).failure_codes == {
        "UNAVAILABLE",
        "INTERNAL",
    }
    with pytest.raises(ValueError, match="balancer"):
        ServicePolicy(balancer="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ewma_decay_seconds"):
        ServicePolicy(ewma_decay_seconds=0.0)
    with pytest.raises(ValueError, match="unknown gRPC status code"):
        ServicePolicy(failure_codes=frozenset({"BROKEN"}))


def test_per_service_policies_override_the_default():
    alert = ServicePolicy(breaker=BreakerConfig(consecutive_failures=2))
    policies = {"alert": alert}
    config = ClientConfig(policies=policies)
    policies["auth"] = alert  # a later edit of the caller's dict does not leak in
    assert config.policy_for("alert") is alert
    assert config.policy_for("auth") is DEFAULT_POLICY
    with pytest.raises(ValueError, match="channel_close_grace_s"):
        ClientConfig(channel_close_grace_s=-1.0)


def test_breaker_records_round_trip_through_json():
    record = BreakerRecord(
        service="alert",
        endpoint="10.0.0.7:50054",
        instance_id="alert-1",
        state="open",
        previous="closed",
        reason="5 consecutive failures",
        at=1_700_000_000.5,
        client="edge-7-123",
    )
    assert BreakerRecord.from_json(record.to_json()) == record
    assert BreakerRecord.from_json(record.to_json().encode()) == record
    for bad in ("", "[]", '{"service": "alert"}', b"\xff"):
        with pytest.raises(ValueError, match="not a breaker record"):
            BreakerRecord.from_json(bad)


def test_breaker_keys():
    keys = BreakerKeys("itsmesh:breakers")
    assert keys.service("alert") == "itsmesh:breakers:alert"
    assert keys.events == "itsmesh:breakers:events"


def test_static_endpoints_list_fixed_instances_and_never_change():
    static = StaticEndpoints({"alert": ["10.0.0.1:50054", "10.0.0.2:50054"]})
    assert [i.address for i in static.endpoints("alert")] == ["10.0.0.1:50054", "10.0.0.2:50054"]
    assert [i.instance_id for i in static.endpoints("alert")] == ["10.0.0.1:50054", "10.0.0.2:50054"]
    assert static.endpoints("auth") == []
    static.mark_failed("alert", "10.0.0.1:50054")
    assert len(static.endpoints("alert")) == 2, "only the breaker ejects a static endpoint"
    remove = static.add_listener(lambda change: None)
    remove()
    with pytest.raises(TypeError, match="list of host:port"):
        StaticEndpoints({"alert": "10.0.0.1:50054"})
    with pytest.raises(ValueError, match="host:port"):
        StaticEndpoints({"alert": ["no-port"]})
