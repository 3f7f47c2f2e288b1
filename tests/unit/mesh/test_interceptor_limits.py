"""The concurrency limiter's bookkeeping, without a server."""

from __future__ import annotations

import pytest

from mesh.interceptors import ConcurrencyLimiter, ConcurrencyLimitInterceptor


def test_slots_are_handed_out_up_to_the_limit_and_then_refused():
    limiter = ConcurrencyLimiter(2)
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]
    assert (limiter.in_flight, limiter.rejected) == (2, 1)


def test_a_released_slot_can_be_taken_again():
    limiter = ConcurrencyLimiter(1)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.in_flight == 0
    assert limiter.try_acquire()
    assert (limiter.in_flight, limiter.rejected) == (1, 1)


def test_release_without_acquire_is_a_bug_not_a_negative_count():
    limiter = ConcurrencyLimiter(1)
    with pytest.raises(RuntimeError, match="release"):
        limiter.release()
    assert limiter.in_flight == 0


@pytest.mark.parametrize("limit", [0, -1])
def test_the_limit_must_be_at_least_one(limit):
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimiter(limit)


def test_health_and_reflection_never_take_a_slot():
    interceptor = ConcurrencyLimitInterceptor(1)
    assert not interceptor.applies_to("/grpc.health.v1.Health/Check")
    assert not interceptor.applies_to("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert interceptor.applies_to("/itsmesh.v1.StreamingService/StreamFrames")


def test_a_negative_retry_delay_is_refused():
    with pytest.raises(ValueError, match="retry_delay_s"):
        ConcurrencyLimitInterceptor(1, retry_delay_s=-1)
