"""Progressive lockout after failed logins (no I/O): when, and for how long.

Every ``threshold``-th failure in a row locks: the first time for ``base_s``, then twice as long each time
(15 min, 30 min, 1 h, … at most ``max_s``). A successful login resets an account's count. The same rule
locks a source address; its count lapses ``window_s`` after its last failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """Threshold and durations of the lockout."""

    threshold: int = 5
    base_s: float = 900.0
    max_s: float = 86400.0

    def __post_init__(self) -> None:
        if self.threshold < 1 or not 0 < self.base_s <= self.max_s:
            raise ValueError("threshold must be ≥ 1 and 0 < base_s ≤ max_s")

    def lock_for(self, failures: int) -> float:
        """Seconds to lock after the ``failures``-th failure in a row (0 = do not lock now)."""
        if failures < self.threshold or failures % self.threshold:
            return 0.0
        return min(self.base_s * 2.0 ** (failures // self.threshold - 1), self.max_s)

    def locked_until(self, failures: int, now: datetime) -> datetime | None:
        """When a lock taken now after the ``failures``-th failure ends, or None if none is taken."""
        seconds = self.lock_for(failures)
        return now + timedelta(seconds=seconds) if seconds else None

    @property
    def window_s(self) -> float:
        """How long a source's failure count is remembered after its last failure (four first locks)."""
        return 4 * self.base_s


def remaining_s(locked_until: datetime | None, now: datetime) -> float:
    """Seconds of lockout left at ``now`` (0 when not locked)."""
    if locked_until is None:
        return 0.0
    return max((locked_until - now).total_seconds(), 0.0)
