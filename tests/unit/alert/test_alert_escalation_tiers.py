"""Escalation tiers with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.alert.escalation import first_step, next_step
from services.alert.routing import EscalationPolicy, EscalationTier

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = EscalationPolicy(
    "cameras",
    (
        EscalationTier(0, ("operators",)),
        EscalationTier(600, ("shift-lead",)),
        EscalationTier(1800, ("on-call",)),
    ),
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_first_tier_is_notified_at_once_and_the_second_is_scheduled():
    step = first_step(POLICY, T0)
    assert (step.level, step.receivers, step.next_time) == (0, ("operators",), at(600))


def test_unacknowledged_alerts_climb_one_tier_when_due():
    assert next_step(POLICY, 0, T0, at(599)) is None
    step = next_step(POLICY, 0, T0, at(600))
    assert step is not None
    assert (step.level, step.receivers, step.next_time) == (1, ("shift-lead",), at(1800))
    last = next_step(POLICY, 1, T0, at(1800))
    assert last is not None
    assert (last.level, last.receivers, last.next_time) == (2, ("on-call",), None)
    assert next_step(POLICY, 2, T0, at(99999)) is None


def test_a_repeating_policy_notifies_the_last_tier_again_every_gap():
    repeating = EscalationPolicy(POLICY.name, POLICY.tiers, repeat=True)
    last = next_step(repeating, 1, T0, at(1800))
    assert last is not None
    assert last.next_time == at(3000)  # gap between the last two tiers: 1200 s
    again = next_step(repeating, 2, T0, at(3000))
    assert again is not None
    assert (again.level, again.receivers, again.next_time) == (3, ("on-call",), at(4200))
