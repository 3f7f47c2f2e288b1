"""The circuit breaker state machine, driven by a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.breaker import (
    TRANSITIONS,
    BreakerConfig,
    BreakerEvent,
    BreakerState,
    CircuitBreaker,
    IllegalTransitionError,
    Transition,
    next_state,
)
from mesh.testing import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# Rate rule only: consecutive failures disabled so volume and rate can be tested on their own.
RATE_ONLY = BreakerConfig(consecutive_failures=None, minimum_requests=10, failure_rate_threshold=0.5)


def tripped(config: BreakerConfig | None = None, clock: FakeClock | None = None) -> CircuitBreaker:
    breaker = CircuitBreaker(config or BreakerConfig(consecutive_failures=3))
    now = clock.now() if clock else 0.0
    for _ in range(breaker.config.consecutive_failures or 0):
        breaker.record_failure(now)
    assert breaker.state(now) is OPEN
    return breaker


def half_open(config: BreakerConfig | None = None, clock: FakeClock | None = None) -> CircuitBreaker:
    clock = clock or FakeClock()
    breaker = tripped(config, clock)
    clock.advance(breaker.config.cool_down_seconds)
    assert breaker.state(clock.now()) is HALF_OPEN
    return breaker


# --- the table --------------------------------------------------------------------------------------------

LEGAL = [(state, event, to) for state, row in TRANSITIONS.items() for event, to in row.items()]
ILLEGAL = [
    (state, event)
    for state, event in itertools.product(BreakerState, BreakerEvent)
    if event not in TRANSITIONS[state]
]


def test_table_has_a_row_for_every_state():
    assert set(TRANSITIONS) == set(BreakerState)


def test_table_holds_exactly_the_four_documented_transitions():
    assert {(s, e, t) for s, e, t in LEGAL} == {
        (CLOSED, BreakerEvent.TRIP, OPEN),
        (OPEN, BreakerEvent.COOL_DOWN_ELAPSED, HALF_OPEN),
        (HALF_OPEN, BreakerEvent.PROBES_SUCCEEDED, CLOSED),
        (HALF_OPEN, BreakerEvent.PROBE_FAILED, OPEN),
    }


@pytest.mark.parametrize(("state", "event", "expected"), LEGAL)
def test_legal_event_leads_to_the_tabled_state(state, event, expected):
    assert next_state(state, event) is expected


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_illegal_event_raises_naming_state_and_event(state, event):
    with pytest.raises(IllegalTransitionError, match=f"{event.name}.*{state.name}") as info:
        next_state(state, event)
    assert (info.value.state, info.value.event) == (state, event)


def test_table_cannot_be_modified_at_runtime():
    with pytest.raises(TypeError):
        TRANSITIONS[CLOSED][BreakerEvent.COOL_DOWN_ELAPSED] = HALF_OPEN  # type: ignore[index]


# --- closed -> open ---------------------------------------------------------------------------------------


def test_new_breaker_is_closed_and_allows_calls():
    breaker = CircuitBreaker()
    assert breaker.state(0.0) is CLOSED
    assert breaker.allow(0.0)
    assert breaker.next_transition_at(0.0) is None


def test_consecutive_failures_trip_even_below_minimum_volume():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=5, minimum_requests=100))
    for _ in range(4):
        breaker.record_failure(1.0)
    assert breaker.state(1.0) is CLOSED
    breaker.record_failure(1.0)
    assert breaker.state(1.0) is OPEN
    assert not breaker.allow(1.0)
    [transition] = breaker.drain_transitions()
    assert transition == Transition(CLOSED, OPEN, 1.0, "5 consecutive failures")


def test_a_success_resets_the_consecutive_failure_count():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=3, minimum_requests=100))
    for _ in range(10):
        breaker.record_failure(0.0)
        breaker.record_failure(0.0)
        breaker.record_success(0.0)
    assert breaker.state(0.0) is CLOSED


def test_failure_rate_below_minimum_volume_does_not_trip():
    breaker = CircuitBreaker(RATE_ONLY)
    for _ in range(9):
        breaker.record_failure(0.0)
    assert breaker.state(0.0) is CLOSED
    assert breaker.window(0.0).total == 9


def test_failure_rate_at_threshold_trips_once_minimum_volume_is_reached():
    breaker = CircuitBreaker(RATE_ONLY)
    for _ in range(5):
        breaker.record_success(0.0)
    for _ in range(4):
        breaker.record_failure(0.0)
    assert breaker.state(0.0) is CLOSED
    breaker.record_failure(0.0)  # 5 of 10 = 50 %
    assert breaker.state(0.0) is OPEN
    [transition] = breaker.drain_transitions()
    assert transition.reason.startswith("failure rate 50% over 10 requests")


def test_failure_rate_below_threshold_never_trips():
    breaker = CircuitBreaker(RATE_ONLY)
    for _ in range(100):
        breaker.record_success(0.0)
        breaker.record_success(0.0)
        breaker.record_failure(0.0)
    assert breaker.state(0.0) is CLOSED
    assert breaker.window(0.0).failure_rate == pytest.approx(1 / 3)


def test_successes_alone_never_trip():
    breaker = CircuitBreaker(RATE_ONLY)
    for _ in range(1000):
        breaker.record_success(0.0)
    assert breaker.state(0.0) is CLOSED


def test_failures_older_than_the_window_no_longer_count():
    clock = FakeClock()
    breaker = CircuitBreaker(RATE_ONLY)  # 10 s window in ten 1 s buckets
    for _ in range(9):
        breaker.record_failure(clock.now())
    clock.advance(10.0)
    breaker.record_failure(clock.now())
    assert breaker.window(clock.now()).total == 1
    assert breaker.state(clock.now()) is CLOSED


def test_window_slides_one_bucket_at_a_time():
    clock = FakeClock()
    breaker = CircuitBreaker(RATE_ONLY)
    breaker.record_failure(clock.now())  # bucket [0, 1)
    clock.advance(5.0)
    breaker.record_failure(clock.now())  # bucket [5, 6)
    assert breaker.window(9.99).failures == 2
    assert breaker.window(10.0).failures == 1  # [0, 1) left the window
    assert breaker.window(15.0).failures == 0


def test_failures_spread_inside_the_window_add_up_to_a_trip():
    clock = FakeClock()
    breaker = CircuitBreaker(RATE_ONLY)
    for _ in range(10):
        breaker.record_failure(clock.now())
        clock.advance(0.9)
    assert breaker.state(clock.now()) is OPEN


def test_window_counts_are_empty_on_a_fresh_breaker():
    counts = CircuitBreaker().window(3.0)
    assert (counts.successes, counts.failures, counts.total, counts.failure_rate) == (0, 0, 0, 0.0)


# --- open -------------------------------------------------------------------------------------------------


def test_open_breaker_refuses_calls_until_the_cool_down_ends():
    clock = FakeClock(100.0)
    breaker = tripped(BreakerConfig(consecutive_failures=1, cool_down_seconds=5.0), clock)
    assert breaker.next_transition_at(clock.now()) == 105.0
    clock.advance(4.999)
    assert not breaker.allow(clock.now())
    assert breaker.state(clock.now()) is OPEN
    clock.advance(0.001)
    assert breaker.allow(clock.now())


def test_cool_down_transition_is_stamped_with_when_it_became_due():
    breaker = tripped(BreakerConfig(consecutive_failures=1, cool_down_seconds=5.0))
    breaker.drain_transitions()
    assert breaker.state(42.0) is HALF_OPEN
    assert breaker.drain_transitions() == [Transition(OPEN, HALF_OPEN, 5.0, "cool-down of 5s elapsed")]


def test_outcomes_arriving_while_open_are_ignored():
    breaker = tripped(BreakerConfig(consecutive_failures=1, cool_down_seconds=5.0, half_open_successes=1))
    for _ in range(10):
        breaker.record_success(1.0)
        breaker.record_failure(1.0)
    breaker.release(1.0)
    assert breaker.state(1.0) is OPEN
    assert breaker.next_transition_at(1.0) == 5.0
    assert breaker.window(1.0).total == 0


# --- half-open --------------------------------------------------------------------------------------------


def test_half_open_admits_only_the_configured_number_of_probes():
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_max_probes=2))
    now = breaker.config.cool_down_seconds
    assert breaker.allow(now)
    assert breaker.allow(now)
    assert not breaker.allow(now)
    assert breaker.next_transition_at(now) is None


def test_a_finished_probe_frees_its_slot_for_the_next():
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_max_probes=1, half_open_successes=3))
    now = breaker.config.cool_down_seconds
    assert breaker.allow(now)
    assert not breaker.allow(now)
    breaker.record_success(now)
    assert breaker.allow(now)


def test_a_released_probe_frees_its_slot_without_counting():
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_successes=1))
    now = breaker.config.cool_down_seconds
    assert breaker.allow(now)
    breaker.release(now)
    assert breaker.state(now) is HALF_OPEN
    assert breaker.allow(now)


def test_enough_probe_successes_close_the_breaker():
    clock = FakeClock()
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_successes=2), clock)
    breaker.drain_transitions()
    for _ in range(2):
        assert breaker.allow(clock.now())
        breaker.record_success(clock.now())
    assert breaker.state(clock.now()) is CLOSED
    assert breaker.drain_transitions() == [Transition(HALF_OPEN, CLOSED, 5.0, "2 probes succeeded")]
    assert breaker.allow(clock.now())


def test_a_probe_failure_reopens_the_breaker():
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_successes=2))
    breaker.drain_transitions()
    now = breaker.config.cool_down_seconds
    assert breaker.allow(now)
    breaker.record_success(now)
    assert breaker.allow(now)
    breaker.record_failure(now)
    assert breaker.state(now) is OPEN
    assert not breaker.allow(now)
    assert breaker.drain_transitions() == [Transition(HALF_OPEN, OPEN, now, "probe failed")]


def test_each_failed_probe_grows_the_cool_down_up_to_the_cap():
    clock = FakeClock()
    config = BreakerConfig(
        consecutive_failures=1, cool_down_seconds=1.0, cool_down_multiplier=2.0, max_cool_down_seconds=5.0
    )
    breaker = tripped(config, clock)
    cool_downs = []
    for _ in range(5):
        opened_at = clock.now()
        due = breaker.next_transition_at(clock.now())
        assert due is not None
        cool_downs.append(due - opened_at)
        clock.advance(due - opened_at)
        assert breaker.allow(clock.now())
        breaker.record_failure(clock.now())
    assert cool_downs == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_closing_resets_the_cool_down_to_its_base():
    clock = FakeClock()
    config = BreakerConfig(consecutive_failures=1, cool_down_seconds=1.0, half_open_successes=1)
    breaker = tripped(config, clock)
    clock.advance(1.0)
    assert breaker.allow(clock.now())
    breaker.record_failure(clock.now())  # re-open with a 2 s cool-down
    clock.advance(2.0)
    assert breaker.allow(clock.now())
    breaker.record_success(clock.now())
    assert breaker.state(clock.now()) is CLOSED
    breaker.record_failure(clock.now())
    assert breaker.next_transition_at(clock.now()) == clock.now() + 1.0


def test_closing_starts_a_fresh_window():
    clock = FakeClock()
    config = BreakerConfig(consecutive_failures=2, half_open_successes=1)
    breaker = tripped(config, clock)
    clock.advance(config.cool_down_seconds)
    assert breaker.allow(clock.now())
    breaker.record_success(clock.now())
    breaker.record_failure(clock.now())  # one failure after closing must not re-trip
    assert breaker.state(clock.now()) is CLOSED
    assert breaker.window(clock.now()).failures == 1


def test_stale_outcomes_in_half_open_without_a_probe_are_ignored():
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_successes=1))
    now = breaker.config.cool_down_seconds
    breaker.record_failure(now)
    breaker.record_success(now)
    assert breaker.state(now) is HALF_OPEN


def test_a_probe_whose_outcome_never_arrives_stops_holding_its_slot():
    clock = FakeClock()
    breaker = half_open(BreakerConfig(consecutive_failures=1, probe_timeout_seconds=30.0), clock)
    assert breaker.allow(clock.now())
    clock.advance(29.0)
    assert not breaker.allow(clock.now())
    clock.advance(1.0)
    assert breaker.allow(clock.now())


# --- observation and clock handling -----------------------------------------------------------------------


def test_transitions_are_drained_in_order_and_only_once():
    clock = FakeClock()
    breaker = half_open(BreakerConfig(consecutive_failures=1, half_open_successes=1), clock)
    assert breaker.allow(clock.now())
    breaker.record_success(clock.now())
    assert [(t.from_state, t.to_state) for t in breaker.drain_transitions()] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert breaker.drain_transitions() == []


def test_undrained_transitions_are_bounded():
    config = BreakerConfig(
        consecutive_failures=1, half_open_successes=1, cool_down_multiplier=1.0, max_pending_transitions=4
    )
    breaker = CircuitBreaker(config)
    now = 0.0
    for _ in range(10):
        breaker.record_failure(now)
        now += config.cool_down_seconds
        assert breaker.allow(now)
        breaker.record_success(now)
    drained = breaker.drain_transitions()
    assert len(drained) == 4
    assert drained[-1].to_state is CLOSED


def test_time_going_backwards_is_treated_as_the_latest_time_seen():
    breaker = tripped(BreakerConfig(consecutive_failures=1, cool_down_seconds=5.0))
    assert breaker.state(6.0) is HALF_OPEN
    assert breaker.state(1.0) is HALF_OPEN
    assert breaker.allow(1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.5},
        {"minimum_requests": 0},
        {"window_seconds": 0.0},
        {"window_seconds": float("inf")},
        {"window_buckets": 0},
        {"consecutive_failures": 0},
        {"cool_down_seconds": 0.0},
        {"cool_down_multiplier": 0.5},
        {"max_cool_down_seconds": 1.0, "cool_down_seconds": 2.0},
        {"half_open_max_probes": 0},
        {"half_open_successes": 0},
        {"probe_timeout_seconds": 0.0},
        {"max_pending_transitions": 0},
    ],
)
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        BreakerConfig(**bad)


# --- properties -------------------------------------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["allow", "allow", "failure", "failure", "success", "release", "state"]),
        st.sampled_from([0.0, 0.0, 0.0, 0.05, 0.3, 1.0, 2.5, 6.0]),
    ),
    min_size=10,
    max_size=80,
)
configs = st.builds(
    BreakerConfig,
    minimum_requests=st.integers(1, 6),
    window_seconds=st.sampled_from([1.0, 5.0, 10.0]),
    consecutive_failures=st.one_of(st.none(), st.integers(1, 4)),
    cool_down_seconds=st.sampled_from([0.5, 2.0, 5.0]),
    half_open_max_probes=st.integers(1, 3),
    half_open_successes=st.integers(1, 3),
    probe_timeout_seconds=st.just(1e9),
)


@settings(max_examples=150, database=None, deadline=None)
@given(config=configs, ops=operations)
def test_any_sequence_of_calls_yields_a_chain_of_legal_transitions(config, ops):
    breaker = CircuitBreaker(config)
    record = {
        "success": breaker.record_success,
        "failure": breaker.record_failure,
        "release": breaker.release,
    }
    legal_pairs = {(state, to) for state, _, to in LEGAL}
    now = 0.0
    transitions: list[Transition] = []
    probes_in_flight = 0  # our own count of admitted half-open probes not yet reported

    def drain() -> None:
        nonlocal probes_in_flight
        drained = breaker.drain_transitions()
        if drained:
            probes_in_flight = 0  # every transition starts its new state without probes
        transitions.extend(drained)

    for op, dt in ops:
        now += dt
        current = breaker.state(now)
        drain()
        if op == "allow":
            admitted = breaker.allow(now)
            if current is not HALF_OPEN:
                assert admitted is (current is CLOSED)
            if current is HALF_OPEN and admitted:
                probes_in_flight += 1
                assert probes_in_flight <= config.half_open_max_probes
        elif op in record:
            record[op](now)
            probes_in_flight = max(probes_in_flight - 1, 0)
        drain()
    state, last_at = CLOSED, 0.0
    for transition in transitions:
        assert transition.from_state is state
        assert (transition.from_state, transition.to_state) in legal_pairs
        assert transition.at >= last_at
        state, last_at = transition.to_state, transition.at
    assert state is breaker.state(now)


@settings(max_examples=100, database=None, deadline=None)
@given(
    outcomes=st.lists(st.booleans(), max_size=60),
    minimum=st.integers(1, 30),
)
def test_rate_rule_never_trips_below_minimum_volume(outcomes, minimum):
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=None, minimum_requests=minimum))
    for count, ok in enumerate(outcomes, start=1):
        (breaker.record_success if ok else breaker.record_failure)(0.0)
        if count < minimum:
            assert breaker.state(0.0) is CLOSED
