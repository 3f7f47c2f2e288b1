"""Progressive lockout rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.auth.lockout import LockoutPolicy, remaining_s

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_fifth_failure_locks_for_15_minutes_by_default():
    policy = LockoutPolicy()
    assert [policy.lock_for(n) for n in range(1, 5)] == [0, 0, 0, 0]
    assert policy.lock_for(5) == 900
    assert policy.locked_until(5, NOW) == NOW + timedelta(minutes=15)
    assert policy.locked_until(4, NOW) is None


def test_each_further_run_of_failures_doubles_the_lock_up_to_the_cap():
    policy = LockoutPolicy(threshold=5, base_s=900, max_s=3600)
    assert [policy.lock_for(n) for n in (6, 9, 10, 15, 20, 50)] == [0, 0, 1800, 3600, 3600, 3600]


def test_remaining_lock_time():
    assert remaining_s(None, NOW) == 0
    assert remaining_s(NOW - timedelta(seconds=1), NOW) == 0
    assert remaining_s(NOW + timedelta(seconds=90), NOW) == 90


@pytest.mark.parametrize(("threshold", "base", "cap"), [(0, 900, 3600), (5, 0, 3600), (5, 900, 60)])
def test_nonsense_policies_are_refused(threshold, base, cap):
    with pytest.raises(ValueError, match="threshold"):
        LockoutPolicy(threshold=threshold, base_s=base, max_s=cap)
