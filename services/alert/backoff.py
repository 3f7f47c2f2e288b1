"""Delivery retry delays: exponential backoff with full jitter and a cap, decided without I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``n`` (1 = the first retry) is uniform in [0, min(max_s, base_s * factor**(n-1))].

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads the retries of many
    deliveries that failed together, so a receiver coming back is not hit by all of them at once.
    """

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0
    max_attempts: int = 8

    def ceiling(self, retry: int) -> float:
        """The largest delay of retry number ``retry`` (without jitter)."""
        return min(self.max_s, self.base_s * self.factor ** max(0, retry - 1))

    def delay(self, retry: int, rng: random.Random) -> float:
        """A jittered delay for retry number ``retry``; ``rng`` is passed in so tests can fix it."""
        return rng.uniform(0.0, self.ceiling(retry))

    def gives_up(self, attempts: int) -> bool:
        """Whether a delivery that has made ``attempts`` attempts should stop (state FAILED)."""
        return attempts >= self.max_attempts
