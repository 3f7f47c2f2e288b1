"""Escalation: which tier an unacknowledged alert has reached and when it moves on, decided without I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.alert.routing import EscalationPolicy


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """Tier to notify now (``level``) and when the next step is due (None = no further step)."""

    level: int
    receivers: tuple[str, ...]
    next_time: datetime | None


def first_step(policy: EscalationPolicy, fired_at: datetime) -> EscalationStep:
    """Tier 0 at ``fired_at`` + its delay, and when tier 1 is due."""
    tier = policy.tiers[0]
    return EscalationStep(0, tier.receivers, _due(policy, 1, fired_at))


def next_step(
    policy: EscalationPolicy, level: int, fired_at: datetime, now: datetime
) -> EscalationStep | None:
    """The step due at ``now`` for an alert at ``level`` still unacknowledged, or None if none is due yet.

    Beyond the last tier, a repeating policy notifies the last tier again after the gap between the last
    two tiers (or the last tier's delay when there is only one).
    """
    due = _due(policy, level + 1, fired_at)
    if due is None or now < due:
        return None
    new_level = level + 1
    tier = policy.tiers[min(new_level, len(policy.tiers) - 1)]
    return EscalationStep(new_level, tier.receivers, _due(policy, new_level + 1, fired_at))


def _due(policy: EscalationPolicy, level: int, fired_at: datetime) -> datetime | None:
    tiers = policy.tiers
    if level < len(tiers):
        return fired_at + timedelta(seconds=tiers[level].after_s)
    if not policy.repeat:
        return None
    last = tiers[-1].after_s
    gap = last - tiers[-2].after_s if len(tiers) > 1 else last
    if gap <= 0:
        return None
    return fired_at + timedelta(seconds=last + gap * (level - len(tiers) + 1))
