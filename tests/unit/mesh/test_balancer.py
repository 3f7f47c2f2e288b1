"""Endpoint picking: peak-EWMA statistics, power-of-two-choices and round-robin."""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.balancer import UNMEASURED_PENALTY, EndpointStats, PeakEwmaP2C, Picker, RequestToken, RoundRobin
from mesh.breaker import BreakerConfig, CircuitBreaker
from mesh.testing import FakeClock

ENDPOINTS = ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051"]


def served(stats: EndpointStats, latency: float, clock: FakeClock, ok: bool = True) -> None:
    token = stats.start(clock.now())
    clock.advance(latency)
    stats.finish(token, clock.now(), ok)


# --- EndpointStats ----------------------------------------------------------------------------------------


def test_fresh_endpoint_costs_nothing_so_new_instances_get_traffic():
    assert EndpointStats().cost(0.0) == 0.0


def test_busy_endpoint_without_samples_pays_the_unmeasured_penalty():
    stats = EndpointStats()
    stats.start(0.0)
    stats.start(0.0)
    assert stats.cost(0.0) == UNMEASURED_PENALTY + 2


def test_cost_is_latency_times_outstanding_plus_one():
    clock = FakeClock()
    stats = EndpointStats()
    served(stats, 0.010, clock)
    assert stats.cost(clock.now()) == pytest.approx(0.010)
    stats.start(clock.now())
    stats.start(clock.now())
    assert stats.cost(clock.now()) == pytest.approx(0.030)
    assert stats.outstanding == 2


def test_a_slower_sample_raises_the_estimate_at_once():
    clock = FakeClock()
    stats = EndpointStats(decay_seconds=10.0)
    for _ in range(50):
        served(stats, 0.005, clock)
    served(stats, 0.200, clock)
    assert stats.latency(clock.now()) == pytest.approx(0.200)


def test_faster_samples_pull_the_estimate_down_gradually():
    clock = FakeClock()
    stats = EndpointStats(decay_seconds=1.0)
    served(stats, 0.100, clock)  # sample stamped at t = 0.1
    clock.advance(0.99)  # the next call starts at t = 1.09
    served(stats, 0.010, clock)  # stamped at t = 1.1: the old estimate keeps a weight of e^-1
    expected = 0.100 * math.exp(-1.0) + 0.010 * (1 - math.exp(-1.0))
    assert stats.latency(clock.now()) == pytest.approx(expected)


def test_idle_endpoint_cost_decays_towards_zero_so_it_is_tried_again():
    clock = FakeClock()
    stats = EndpointStats(decay_seconds=10.0)
    served(stats, 0.100, clock)
    at_sample = stats.latency(clock.now())
    assert stats.latency(clock.now() + 10.0) == pytest.approx(at_sample * math.exp(-1.0))
    assert stats.latency(clock.now() + 1000.0) < 1e-40


def test_reading_the_cost_does_not_change_the_estimate():
    stats, twin = EndpointStats(), EndpointStats()
    clocks = FakeClock(), FakeClock()
    for s, clock in zip((stats, twin), clocks, strict=True):
        served(s, 0.050, clock)
    for t in range(100):
        stats.cost(t / 10)
    for s, clock in zip((stats, twin), clocks, strict=True):
        clock.advance(10.0)
        served(s, 0.010, clock)
    assert stats.latency(clocks[0].now()) == twin.latency(clocks[1].now())


def test_finishing_the_same_request_twice_counts_once():
    stats = EndpointStats()
    token = stats.start(0.0)
    stats.start(0.0)
    stats.finish(token, 0.1, ok=True)
    stats.finish(token, 0.2, ok=False)
    assert stats.outstanding == 1


def test_failures_are_measured_like_any_other_response():
    clock = FakeClock()
    stats = EndpointStats()
    served(stats, 0.020, clock, ok=False)
    assert stats.latency(clock.now()) == pytest.approx(0.020)
    assert stats.outstanding == 0


@pytest.mark.parametrize("decay", [0.0, -1.0, float("inf"), float("nan")])
def test_decay_time_must_be_positive_and_finite(decay):
    with pytest.raises(ValueError, match="decay_seconds"):
        EndpointStats(decay)
    with pytest.raises(ValueError, match="decay_seconds"):
        PeakEwmaP2C(random.Random(0), decay_seconds=decay)


# --- PeakEwmaP2C ------------------------------------------------------------------------------------------


def test_both_pickers_satisfy_the_picker_protocol():
    pickers: list[Picker] = [PeakEwmaP2C(random.Random(0)), RoundRobin()]
    assert all(p.pick(["a"], 0.0) == "a" for p in pickers)


def test_p2c_with_no_candidates_picks_nothing():
    assert PeakEwmaP2C(random.Random(0)).pick([], 0.0) is None


def test_p2c_between_two_endpoints_always_takes_the_cheaper():
    clock = FakeClock()
    picker = PeakEwmaP2C(random.Random(1))
    served(picker.stats("slow"), 0.050, clock)
    served(picker.stats("fast"), 0.005, clock)
    assert {picker.pick(["slow", "fast"], clock.now()) for _ in range(50)} == {"fast"}


def test_p2c_prefers_the_less_loaded_of_equally_fast_endpoints():
    clock = FakeClock()
    picker = PeakEwmaP2C(random.Random(2))
    for endpoint in ("busy", "idle"):
        served(picker.stats(endpoint), 0.010, clock)
    for _ in range(3):
        picker.stats("busy").start(clock.now())
    assert picker.pick(["busy", "idle"], clock.now()) == "idle"


def test_p2c_sends_a_slower_endpoint_little_traffic_under_sequential_load():
    clock = FakeClock()
    picker = PeakEwmaP2C(random.Random(3))
    latency = {e: 0.005 for e in ENDPOINTS[:3]} | {ENDPOINTS[3]: 0.025}  # the last one is 20 ms slower
    counts: Counter[str] = Counter()
    for _ in range(3000):
        endpoint = picker.pick(ENDPOINTS, clock.now())
        assert endpoint is not None
        counts[endpoint] += 1
        served(picker.stats(endpoint), latency[endpoint], clock)
    assert counts[ENDPOINTS[3]] / 3000 < 0.05
    assert min(counts[e] for e in ENDPOINTS[:3]) > 600


def test_p2c_sends_a_slower_endpoint_at_most_a_fifth_of_concurrent_traffic():
    # 3 endpoints, one 20 ms slower, 8 calls in flight at a time; an event queue stands in for real time.
    rng = random.Random(4)
    clock = FakeClock()
    picker = PeakEwmaP2C(rng)
    endpoints = ENDPOINTS[:3]
    latency = {endpoints[0]: 0.005, endpoints[1]: 0.005, endpoints[2]: 0.025}
    in_flight: list[tuple[float, int, str, RequestToken]] = []
    counts: Counter[str] = Counter()
    for sequence in range(4000):
        while len(in_flight) >= 8:
            done_at, _, finished, token = heapq.heappop(in_flight)
            clock.advance(done_at - clock.now())
            picker.stats(finished).finish(token, clock.now(), ok=True)
        chosen = picker.pick(endpoints, clock.now())
        assert chosen is not None
        counts[chosen] += 1
        started = picker.stats(chosen).start(clock.now())
        jitter = rng.uniform(0.0, 0.002)
        heapq.heappush(in_flight, (clock.now() + latency[chosen] + jitter, sequence, chosen, started))
    assert counts[endpoints[2]] / 4000 <= 0.20


def test_p2c_statistically_avoids_an_endpoint_with_many_requests_in_flight():
    picker = PeakEwmaP2C(random.Random(5))
    for endpoint in ENDPOINTS:
        served(picker.stats(endpoint), 0.010, FakeClock())  # identical histories, so equal costs
    for _ in range(10):
        picker.stats(ENDPOINTS[0]).start(0.010)
    counts = Counter(picker.pick(ENDPOINTS, 0.010) for _ in range(2000))
    # The loaded endpoint wins no comparison, and every other endpoint is drawn about equally.
    assert counts[ENDPOINTS[0]] == 0
    assert all(550 < counts[e] < 790 for e in ENDPOINTS[1:])


def test_p2c_skips_endpoints_the_breaker_refuses():
    breakers = {e: CircuitBreaker(BreakerConfig(consecutive_failures=1)) for e in ENDPOINTS}
    breakers[ENDPOINTS[0]].record_failure(0.0)
    breakers[ENDPOINTS[1]].record_failure(0.0)
    picker = PeakEwmaP2C(random.Random(6), admit=lambda e, now: breakers[e].allow(now))
    picks = {picker.pick(ENDPOINTS, 1.0) for _ in range(200)}
    assert picks == {ENDPOINTS[2], ENDPOINTS[3]}


def test_p2c_picks_nothing_when_every_breaker_refuses():
    picker = PeakEwmaP2C(random.Random(7), admit=lambda e, now: False)
    assert picker.pick(ENDPOINTS, 0.0) is None


def test_p2c_asks_the_breaker_only_about_the_endpoint_it_returns():
    asked: list[str] = []

    def admit(endpoint: str, now: float) -> bool:
        asked.append(endpoint)
        return True

    picker = PeakEwmaP2C(random.Random(8), admit=admit)
    chosen = picker.pick(ENDPOINTS, 0.0)
    assert asked == [chosen]


def test_p2c_reserves_a_half_open_probe_only_on_the_chosen_endpoint():
    config = BreakerConfig(consecutive_failures=1, cool_down_seconds=1.0, half_open_max_probes=1)
    breakers = {e: CircuitBreaker(config) for e in ENDPOINTS[:2]}
    for breaker in breakers.values():
        breaker.record_failure(0.0)
    picker = PeakEwmaP2C(random.Random(9), admit=lambda e, now: breakers[e].allow(now))
    first = picker.pick(ENDPOINTS[:2], 1.0)
    second = picker.pick(ENDPOINTS[:2], 1.0)
    assert {first, second} == set(ENDPOINTS[:2])
    assert picker.pick(ENDPOINTS[:2], 1.0) is None


def test_p2c_forgets_endpoints_that_left_discovery():
    clock = FakeClock()
    picker = PeakEwmaP2C(random.Random(10))
    served(picker.stats("gone"), 0.5, clock)
    picker.retain(["kept"])
    assert picker.stats("gone").latency(clock.now()) == 0.0


# --- RoundRobin -------------------------------------------------------------------------------------------


def test_round_robin_visits_endpoints_in_turn():
    picker = RoundRobin()
    assert [picker.pick(ENDPOINTS, 0.0) for _ in range(8)] == ENDPOINTS * 2


def test_round_robin_is_exactly_fair_over_whole_rounds():
    picker = RoundRobin(random.Random(11))
    counts = Counter(picker.pick(ENDPOINTS, 0.0) for _ in range(len(ENDPOINTS) * 250))
    assert set(counts.values()) == {250}


def test_round_robin_starting_point_comes_from_the_rng():
    starts = {RoundRobin(random.Random(seed)).pick(ENDPOINTS, 0.0) for seed in range(40)}
    assert len(starts) > 1


def test_round_robin_skips_refused_endpoints_and_keeps_the_rotation():
    refused = {ENDPOINTS[1]}
    picker = RoundRobin(admit=lambda e, now: e not in refused)
    assert [picker.pick(ENDPOINTS, 0.0) for _ in range(6)] == [
        ENDPOINTS[0],
        ENDPOINTS[2],
        ENDPOINTS[3],
        ENDPOINTS[0],
        ENDPOINTS[2],
        ENDPOINTS[3],
    ]


def test_round_robin_picks_nothing_when_all_are_refused_or_none_exist():
    assert RoundRobin(admit=lambda e, now: False).pick(ENDPOINTS, 0.0) is None
    assert RoundRobin().pick([], 0.0) is None


def test_round_robin_copes_with_the_candidate_list_shrinking():
    picker = RoundRobin()
    for _ in range(3):
        picker.pick(ENDPOINTS, 0.0)
    assert picker.pick(ENDPOINTS[:2], 0.0) in ENDPOINTS[:2]


# --- properties -------------------------------------------------------------------------------------------

candidate_lists = st.lists(st.sampled_from([*ENDPOINTS, "a:1", "b:2"]), min_size=0, max_size=6, unique=True)


@settings(max_examples=200, database=None, deadline=None)
@given(
    candidates=candidate_lists,
    refused=st.sets(st.sampled_from([*ENDPOINTS, "a:1", "b:2"])),
    seed=st.integers(0, 2**32),
    use_p2c=st.booleans(),
)
def test_a_pick_is_an_admitted_candidate_or_none_only_when_all_are_refused(
    candidates, refused, seed, use_p2c
):
    def admit(endpoint: str, now: float) -> bool:
        return endpoint not in refused

    picker: Picker = PeakEwmaP2C(random.Random(seed), admit=admit) if use_p2c else RoundRobin(admit=admit)
    chosen = picker.pick(candidates, 0.0)
    if chosen is None:
        assert set(candidates) <= refused
    else:
        assert chosen in candidates
        assert chosen not in refused


@settings(max_examples=200, database=None, deadline=None)
@given(
    latencies=st.lists(st.floats(0.0001, 1.0), min_size=2, max_size=2),
    loads=st.lists(st.integers(0, 5), min_size=2, max_size=2),
    seed=st.integers(0, 2**32),
)
def test_p2c_over_two_endpoints_never_picks_the_strictly_costlier(latencies, loads, seed):
    clock = FakeClock()
    picker = PeakEwmaP2C(random.Random(seed))
    for name, latency, load in zip("ab", latencies, loads, strict=True):
        served(picker.stats(name), latency, clock)
        for _ in range(load):
            picker.stats(name).start(clock.now())
    costs = {name: picker.stats(name).cost(clock.now()) for name in "ab"}
    chosen = picker.pick(["a", "b"], clock.now())
    assert chosen is not None
    other = "b" if chosen == "a" else "a"
    assert costs[chosen] <= costs[other]


@settings(max_examples=100, database=None, deadline=None)
@given(
    samples=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=40),
    gaps=st.lists(st.floats(0.0, 5.0), min_size=40, max_size=40),
)
def test_latency_estimate_stays_within_the_range_of_samples(samples, gaps):
    clock = FakeClock()
    stats = EndpointStats(decay_seconds=1.0)
    for sample, gap in zip(samples, gaps, strict=False):
        clock.advance(gap)
        served(stats, sample, clock)
    # The estimate never exceeds the slowest sample and, right after one, never drops below the fastest.
    assert min(samples) - 1e-12 <= stats.latency(clock.now()) <= max(samples) + 1e-12
