"""Retry decisions: retryable codes, full-jitter backoff, the retry budget and the caller's deadline."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.retry import (
    DEFAULT_RETRYABLE_CODES,
    STATUS_CODES,
    Retrier,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
    code_name,
)
from mesh.testing import FakeClock


def retrier(policy: RetryPolicy | None = None, budget: RetryBudget | None = None, seed: int = 0) -> Retrier:
    return Retrier(policy or RetryPolicy(), budget or RetryBudget(), random.Random(seed))


# --- status codes -----------------------------------------------------------------------------------------


def test_codes_are_named_the_same_by_number_or_by_name_in_any_case():
    assert code_name(14) == code_name("UNAVAILABLE") == code_name("unavailable") == "UNAVAILABLE"
    assert code_name(8) == "RESOURCE_EXHAUSTED"


def test_the_code_table_matches_the_grpc_specification():
    assert len(STATUS_CODES) == 17
    assert (STATUS_CODES[0], STATUS_CODES[4], STATUS_CODES[16]) == (
        "OK",
        "DEADLINE_EXCEEDED",
        "UNAUTHENTICATED",
    )


@pytest.mark.parametrize("code", [17, -1, "UNAVAILIBLE", ""])
def test_unknown_codes_are_rejected(code):
    with pytest.raises(ValueError, match="unknown gRPC status code"):
        code_name(code)


# --- policy -----------------------------------------------------------------------------------------------


def test_default_policy_retries_unavailable_and_resource_exhausted_only():
    policy = RetryPolicy()
    assert policy.retryable_codes == DEFAULT_RETRYABLE_CODES == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert policy.is_retryable("UNAVAILABLE")
    assert policy.is_retryable(8)
    assert not policy.is_retryable("INVALID_ARGUMENT")
    assert not policy.is_retryable("DEADLINE_EXCEEDED")


def test_policy_normalises_its_code_names():
    assert RetryPolicy(retryable_codes=frozenset({"aborted"})).retryable_codes == {"ABORTED"}


def test_policy_rejects_a_misspelt_code_name():
    with pytest.raises(ValueError, match="UNAVALABLE"):
        RetryPolicy(retryable_codes=frozenset({"UNAVALABLE"}))


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"initial_backoff_seconds": -0.1},
        {"initial_backoff_seconds": float("nan")},
        {"backoff_multiplier": 0.5},
        {"max_backoff_seconds": -1.0},
    ],
)
def test_policy_rejects_nonsense(bad):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RetryPolicy(**bad)


def test_backoff_ceiling_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(initial_backoff_seconds=0.1, backoff_multiplier=2.0, max_backoff_seconds=1.0)
    assert [policy.backoff_ceiling(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_ceiling_survives_huge_attempt_numbers():
    assert RetryPolicy(max_backoff_seconds=2.0).backoff_ceiling(10_000) == 2.0


def test_backoff_uses_the_whole_jitter_range():
    policy = RetryPolicy(initial_backoff_seconds=1.0, max_backoff_seconds=1.0)
    rng = random.Random(1)
    delays = [policy.backoff(1, rng) for _ in range(2000)]
    assert min(delays) < 0.01
    assert max(delays) > 0.99
    assert 0.45 < sum(delays) / len(delays) < 0.55


def test_backoff_is_reproducible_from_the_rng_seed():
    policy = RetryPolicy()
    assert [policy.backoff(3, random.Random(7)) for _ in range(3)] == [
        policy.backoff(3, random.Random(7)) for _ in range(3)
    ]


def test_attempt_numbers_start_at_one():
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().backoff(0, random.Random(0))
    with pytest.raises(ValueError, match="start at 1"):
        retrier().decide(0, "UNAVAILABLE", 0.0, None)


# --- budget -----------------------------------------------------------------------------------------------


def test_budget_without_traffic_allows_only_its_floor():
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, ttl_seconds=10.0)
    assert budget.reserve == 10.0
    assert sum(budget.try_withdraw(0.0) for _ in range(50)) == 10


def test_budget_allows_its_ratio_of_live_traffic():
    budget = RetryBudget(ratio=0.2, min_retries_per_second=0.0)
    for _ in range(100):
        budget.deposit(0.0)
    assert budget.available(0.0) == pytest.approx(20.0)
    assert sum(budget.try_withdraw(0.0) for _ in range(100)) == 20
    assert not budget.try_withdraw(0.0)


def test_budget_tolerates_float_error_in_the_ratio():
    budget = RetryBudget(ratio=0.29, min_retries_per_second=0.0)
    for _ in range(100):
        budget.deposit(0.0)
    assert sum(budget.try_withdraw(0.0) for _ in range(100)) == 29


def test_budget_with_zero_ratio_and_no_floor_never_allows_a_retry():
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    for _ in range(1000):
        budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)


def test_budget_deposits_expire_after_the_ttl():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, ttl_seconds=10.0, min_retries_per_second=0.0)
    for _ in range(10):
        budget.deposit(clock.now())
    clock.advance(9.9)
    assert budget.available(clock.now()) == pytest.approx(5.0)
    clock.advance(0.1)
    assert budget.available(clock.now()) == 0.0
    assert not budget.try_withdraw(clock.now())


def test_budget_refills_as_spent_retries_leave_the_window():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.5, ttl_seconds=10.0)
    assert sum(budget.try_withdraw(clock.now()) for _ in range(10)) == 5
    clock.advance(10.0)
    assert sum(budget.try_withdraw(clock.now()) for _ in range(10)) == 5


@pytest.mark.parametrize(
    "bad",
    [
        {"ratio": -0.1},
        {"ratio": float("inf")},
        {"min_retries_per_second": -1.0},
        {"ttl_seconds": 0.0},
        {"buckets": 0},
    ],
)
def test_budget_rejects_nonsense(bad):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RetryBudget(**bad)


# --- decide -----------------------------------------------------------------------------------------------


def test_a_retryable_failure_is_retried_after_a_jittered_backoff():
    policy = RetryPolicy(initial_backoff_seconds=0.1)
    decision = retrier(policy).decide(1, "UNAVAILABLE", 0.0, None)
    assert decision.retry
    assert 0.0 <= decision.delay <= 0.1
    assert decision.reason == "UNAVAILABLE: retry 1 of 2"


def test_a_non_retryable_code_is_never_retried():
    decision = retrier().decide(1, "INVALID_ARGUMENT", 0.0, None)
    assert decision == RetryDecision(False, 0.0, "INVALID_ARGUMENT is not retryable")


def test_codes_may_be_given_as_numbers():
    assert retrier().decide(1, 14, 0.0, None).retry


def test_no_retry_once_max_attempts_are_used():
    decider = retrier(RetryPolicy(max_attempts=3))
    assert decider.decide(2, "UNAVAILABLE", 0.0, None).retry
    decision = decider.decide(3, "UNAVAILABLE", 0.0, None)
    assert decision == RetryDecision(False, 0.0, "all 3 attempts used")


def test_a_single_attempt_policy_never_retries():
    assert not retrier(RetryPolicy(max_attempts=1)).decide(1, "UNAVAILABLE", 0.0, None).retry


def test_a_retry_that_would_start_after_the_deadline_is_refused():
    policy = RetryPolicy(initial_backoff_seconds=1.0, max_backoff_seconds=1.0)
    decider = retrier(policy, seed=3)
    delay = RetryPolicy(initial_backoff_seconds=1.0, max_backoff_seconds=1.0).backoff(1, random.Random(3))
    decision = decider.decide(1, "UNAVAILABLE", 10.0, deadline=10.0 + delay)
    assert not decision.retry
    assert "deadline" in decision.reason


def test_a_retry_that_fits_before_the_deadline_is_allowed():
    policy = RetryPolicy(initial_backoff_seconds=0.5, max_backoff_seconds=0.5)
    decision = retrier(policy).decide(1, "UNAVAILABLE", 10.0, deadline=10.6)
    assert decision.retry
    assert 10.0 + decision.delay < 10.6


def test_no_retry_when_the_deadline_has_already_passed():
    assert not retrier().decide(1, "UNAVAILABLE", 5.0, deadline=5.0).retry


def test_refusals_do_not_spend_the_budget():
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, ttl_seconds=10.0)  # exactly one retry
    decider = retrier(budget=budget)
    decider.decide(1, "INVALID_ARGUMENT", 0.0, None)
    decider.decide(5, "UNAVAILABLE", 0.0, None)
    decider.decide(1, "UNAVAILABLE", 0.0, deadline=0.0)
    assert budget.available(0.0) == pytest.approx(1.0)
    assert decider.decide(1, "UNAVAILABLE", 0.0, None).retry


def test_an_exhausted_budget_stops_retries():
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0)
    decider = retrier(RetryPolicy(max_attempts=10), budget)
    for _ in range(30):
        budget.deposit(0.0)
    decisions = [decider.decide(1, "UNAVAILABLE", 0.0, None) for _ in range(10)]
    assert [d.retry for d in decisions] == [True] * 3 + [False] * 7
    assert decisions[-1].reason == "retry budget exhausted"


def test_total_attempts_during_an_outage_stay_within_ratio_and_floor():
    # Every endpoint fails: each request is tried, then retried for as long as policy and budget allow.
    ratio, floor_per_second, ttl = 0.2, 1.0, 10.0
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_retries_per_second=floor_per_second, ttl_seconds=ttl)
    decider = retrier(RetryPolicy(max_attempts=5, initial_backoff_seconds=0.0), budget)
    requests = attempts = 0
    while clock.now() < ttl - 0.01:  # one TTL window at 1000 requests per second
        requests += 1
        budget.deposit(clock.now())
        attempt = 1
        attempts += 1
        while decider.decide(attempt, "UNAVAILABLE", clock.now(), None).retry:
            attempt += 1
            attempts += 1
        clock.advance(0.001)
    assert attempts <= (1 + ratio) * requests + floor_per_second * ttl
    assert attempts > requests  # but retries did happen


def test_server_pushback_replaces_the_backoff():
    decision = retrier().decide(1, "RESOURCE_EXHAUSTED", 0.0, None, pushback=0.75)
    assert decision.retry
    assert decision.delay == 0.75


def test_negative_server_pushback_means_do_not_retry():
    decision = retrier().decide(1, "UNAVAILABLE", 0.0, None, pushback=-1.0)
    assert decision == RetryDecision(False, 0.0, "server pushback asks not to retry")


def test_server_pushback_past_the_deadline_is_refused():
    assert not retrier().decide(1, "UNAVAILABLE", 0.0, deadline=0.5, pushback=0.5).retry


def test_the_retrier_exposes_its_policy_and_budget():
    policy, budget = RetryPolicy(), RetryBudget()
    decider = Retrier(policy, budget, random.Random(0))
    assert (decider.policy, decider.budget) == (policy, budget)


# --- properties -------------------------------------------------------------------------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 6),
    initial_backoff_seconds=st.floats(0.0, 2.0),
    backoff_multiplier=st.floats(1.0, 4.0),
    max_backoff_seconds=st.floats(0.0, 10.0),
)


@settings(max_examples=200, database=None, deadline=None)
@given(policy=policies, attempt=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_backoff_stays_between_zero_and_its_ceiling(policy, attempt, seed):
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= policy.backoff_ceiling(attempt) <= policy.max_backoff_seconds


@settings(max_examples=200, database=None, deadline=None)
@given(
    policy=policies,
    attempt=st.integers(1, 8),
    code=st.sampled_from(sorted(STATUS_CODES.values())),
    now=st.floats(0.0, 1e6),
    remaining=st.one_of(st.none(), st.floats(-1.0, 5.0)),
    pushback=st.one_of(st.none(), st.floats(-1.0, 5.0)),
    seed=st.integers(0, 2**32),
)
def test_a_retry_is_never_scheduled_at_or_past_the_deadline(
    policy, attempt, code, now, remaining, pushback, seed
):
    deadline = None if remaining is None else now + remaining
    decision = retrier(policy, seed=seed).decide(attempt, code, now, deadline, pushback=pushback)
    if decision.retry:
        assert policy.is_retryable(code)
        assert attempt < policy.max_attempts
        assert decision.delay >= 0.0
        assert deadline is None or now + decision.delay < deadline
    else:
        assert decision.delay == 0.0
    assert decision.reason


@settings(max_examples=100, database=None, deadline=None)
@given(
    ratio=st.floats(0.0, 1.0),
    floor=st.floats(0.0, 5.0),
    events=st.lists(st.tuples(st.booleans(), st.floats(0.0, 0.5)), max_size=200),
)
def test_budget_never_allows_more_than_ratio_times_requests_plus_floor_within_a_window(ratio, floor, events):
    ttl = 10.0
    budget = RetryBudget(ratio=ratio, min_retries_per_second=floor, ttl_seconds=ttl)
    now = 0.0
    deposits = withdrawals = 0
    for is_request, dt in events:
        now += dt
        if now >= ttl:  # the bound is per window; later events would see expiries
            break
        if is_request:
            budget.deposit(now)
            deposits += 1
        elif budget.try_withdraw(now):
            withdrawals += 1
    assert withdrawals <= ratio * deposits + floor * ttl + 1e-6
