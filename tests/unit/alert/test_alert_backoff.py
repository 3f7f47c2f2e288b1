"""Exponential backoff with full jitter and a cap."""

from __future__ import annotations

import random

from services.alert.backoff import Backoff


def test_ceilings_double_up_to_the_maximum():
    backoff = Backoff(base_s=1, factor=2, max_s=10)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_delays_are_jittered_within_the_ceiling():
    backoff = Backoff(base_s=1, factor=2, max_s=10)
    rng = random.Random(7)
    delays = [backoff.delay(4, rng) for _ in range(200)]
    assert all(0 <= d <= 8 for d in delays)
    assert len({round(d, 6) for d in delays}) > 150  # spread, not one value


def test_gives_up_after_max_attempts():
    backoff = Backoff(max_attempts=3)
    assert not backoff.gives_up(2)
    assert backoff.gives_up(3)
