"""Retry decisions: which failures to retry, how long to back off, and a budget so retries cannot storm.

Pure and gRPC-free: status codes are their canonical names (``"UNAVAILABLE"``) or numbers (``14``), time
is passed in as ``now`` (seconds on a monotonic clock) and randomness comes from an injected
``random.Random``. Whether a method is idempotent, and therefore retried at all, is the caller's check.

The budget follows Finagle's ``RetryBudget``: every request deposits one token, every retry withdraws
``1 / ratio`` of them, deposits and withdrawals expire after ``ttl_seconds``, and a reserve of
``min_retries_per_second * ttl_seconds`` retries lets low-traffic callers retry at all. So within any
``ttl_seconds`` window, retries ≤ ratio * requests + reserve, however many endpoints are failing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

STATUS_CODES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "OK",
        1: "CANCELLED",
        2: "UNKNOWN",
        3: "INVALID_ARGUMENT",
        4: "DEADLINE_EXCEEDED",
        5: "NOT_FOUND",
        6: "ALREADY_EXISTS",
        7: "PERMISSION_DENIED",
        8: "RESOURCE_EXHAUSTED",
        9: "FAILED_PRECONDITION",
        10: "ABORTED",
        11: "OUT_OF_RANGE",
        12: "UNIMPLEMENTED",
        13: "INTERNAL",
        14: "UNAVAILABLE",
        15: "DATA_LOSS",
        16: "UNAUTHENTICATED",
    }
)
"""The canonical gRPC status codes by number, as fixed by the gRPC specification."""

_CODE_NAMES: Final = frozenset(STATUS_CODES.values())

# UNAVAILABLE: the endpoint is down or going away. RESOURCE_EXHAUSTED: the mesh's concurrency limit sheds
# load with it, and another endpoint may have room; the budget keeps quota-style refusals from storming.
DEFAULT_RETRYABLE_CODES: Final = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
"""Status code names retried when a policy does not say otherwise."""


def code_name(code: str | int) -> str:
    """The canonical name of a gRPC status code given by name (any case) or number; ValueError if unknown."""
    if isinstance(code, int):
        try:
            return STATUS_CODES[code]
        except KeyError:
            raise ValueError(f"unknown gRPC status code {code}") from None
    name = code.upper()
    if name not in _CODE_NAMES:
        raise ValueError(f"unknown gRPC status code {code!r}")
    return name


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and on which codes a call is retried, and the shape of the backoff between attempts.

    - ``max_attempts`` (3): attempts in total, the first included; 1 disables retries.
    - ``retryable_codes`` (UNAVAILABLE, RESOURCE_EXHAUSTED): status code names worth another attempt;
      names are checked and upper-cased.
    - ``initial_backoff_seconds`` (0.025), ``backoff_multiplier`` (2.0), ``max_backoff_seconds`` (1.0):
      the delay before retry *n* is drawn uniformly from [0, min(max, initial * multiplier^(n-1))]
      ("full jitter"), which spreads retries from many callers instead of synchronising them.
    """

    max_attempts: int = 3
    retryable_codes: frozenset[str] = DEFAULT_RETRYABLE_CODES
    initial_backoff_seconds: float = 0.025
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (math.isfinite(self.initial_backoff_seconds) and self.initial_backoff_seconds >= 0.0):
            raise ValueError("initial_backoff_seconds must be a non-negative number")
        if not (math.isfinite(self.backoff_multiplier) and self.backoff_multiplier >= 1.0):
            raise ValueError("backoff_multiplier must be at least 1")
        if not (math.isfinite(self.max_backoff_seconds) and self.max_backoff_seconds >= 0.0):
            raise ValueError("max_backoff_seconds must be a non-negative number")
        # Frozen dataclass: normalising a field in __post_init__ has to go through object.__setattr__.
        object.__setattr__(self, "retryable_codes", frozenset(code_name(c) for c in self.retryable_codes))

    def is_retryable(self, code: str | int) -> bool:
        """Whether a call that ended with ``code`` may be attempted again."""
        return code_name(code) in self.retryable_codes

    def backoff_ceiling(self, attempt: int) -> float:
        """The largest delay ``backoff`` may return after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        try:
            grown = self.initial_backoff_seconds * self.backoff_multiplier ** (attempt - 1)
        except OverflowError:
            return self.max_backoff_seconds
        return min(grown, self.max_backoff_seconds)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """A full-jitter delay in seconds before retrying after failed attempt number ``attempt``."""
        return rng.uniform(0.0, self.backoff_ceiling(attempt))


class RetryBudget:
    """Caps retries to a ratio of live traffic plus a small floor, over a sliding ``ttl_seconds`` window.

    Call ``deposit`` once per original request (not per attempt) and ``try_withdraw`` before each retry.
    Defaults: 20 % of requests may be retried, plus 10 retries per second whatever the traffic, over 10 s.
    """

    __slots__ = ("_deposits", "_ids", "_ratio", "_reserve", "_width", "_withdrawals")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        ttl_seconds: float = 10.0,
        buckets: int = 10,
    ) -> None:
        if not (math.isfinite(ratio) and ratio >= 0.0):
            raise ValueError("ratio must be a non-negative number")
        if not (math.isfinite(min_retries_per_second) and min_retries_per_second >= 0.0):
            raise ValueError("min_retries_per_second must be a non-negative number")
        if not (math.isfinite(ttl_seconds) and ttl_seconds > 0.0):
            raise ValueError("ttl_seconds must be a positive number")
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self._ratio = ratio
        self._reserve = min_retries_per_second * ttl_seconds
        self._width = ttl_seconds / buckets
        self._ids = [-1] * buckets  # which absolute time bucket each ring slot currently holds
        self._deposits = [0] * buckets
        self._withdrawals = [0] * buckets

    @property
    def ratio(self) -> float:
        """Retries allowed per request deposited."""
        return self._ratio

    @property
    def reserve(self) -> float:
        """Retries allowed per window regardless of traffic (``min_retries_per_second * ttl_seconds``)."""
        return self._reserve

    def deposit(self, now: float) -> None:
        """Record one original request, earning ``ratio`` of a retry for the next ``ttl_seconds``."""
        self._deposits[self._slot(now)] += 1

    def available(self, now: float) -> float:
        """How many retries the budget would allow at ``now`` (may be fractional)."""
        oldest = math.floor(now / self._width) - len(self._ids) + 1
        deposits = withdrawals = 0
        for slot, bucket in enumerate(self._ids):
            if bucket >= oldest:
                deposits += self._deposits[slot]
                withdrawals += self._withdrawals[slot]
        return self._reserve + self._ratio * deposits - withdrawals

    def try_withdraw(self, now: float) -> bool:
        """Spend one retry if the budget allows it; False means the caller must not retry."""
        # The epsilon absorbs float error in ratio * deposits (0.29 * 100 is 28.999…).
        if self.available(now) < 1.0 - 1e-9:
            return False
        self._withdrawals[self._slot(now)] += 1
        return True

    def _slot(self, now: float) -> int:
        bucket = math.floor(now / self._width)
        slot = bucket % len(self._ids)
        if self._ids[slot] != bucket:
            self._ids[slot] = bucket
            self._deposits[slot] = 0
            self._withdrawals[slot] = 0
        return slot


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether to try again, after how many seconds, and why (for logs and metrics)."""

    retry: bool
    delay: float
    reason: str


class Retrier:
    """Combines a policy, a budget and a random source into per-failure retry decisions."""

    def __init__(self, policy: RetryPolicy, budget: RetryBudget, rng: random.Random) -> None:
        self._policy = policy
        self._budget = budget
        self._rng = rng

    @property
    def policy(self) -> RetryPolicy:
        """The policy decisions follow."""
        return self._policy

    @property
    def budget(self) -> RetryBudget:
        """The budget retries are drawn from; deposit into it once per original request."""
        return self._budget

    def decide(
        self,
        attempt: int,
        code: str | int,
        now: float,
        deadline: float | None,
        *,
        pushback: float | None = None,
    ) -> RetryDecision:
        """Decide what to do after attempt number ``attempt`` (1-based) failed with ``code`` at ``now``.

        ``deadline`` is the caller's absolute deadline on the same clock as ``now`` (None: no deadline);
        a retry is never scheduled to start at or after it. ``pushback`` is the server's requested delay
        (gRPC RetryInfo) and replaces the jittered backoff; a negative pushback means "do not retry".
        The budget is charged only when the answer is to retry.
        """
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        name = code_name(code)
        if name not in self._policy.retryable_codes:
            return RetryDecision(False, 0.0, f"{name} is not retryable")
        if attempt >= self._policy.max_attempts:
            return RetryDecision(False, 0.0, f"all {self._policy.max_attempts} attempts used")
        if pushback is not None and pushback < 0.0:
            return RetryDecision(False, 0.0, "server pushback asks not to retry")
        delay = pushback if pushback is not None else self._policy.backoff(attempt, self._rng)
        if deadline is not None and now + delay >= deadline:
            return RetryDecision(False, 0.0, f"a retry in {delay:.3f}s would pass the deadline")
        if not self._budget.try_withdraw(now):
            return RetryDecision(False, 0.0, "retry budget exhausted")
        return RetryDecision(True, delay, f"{name}: retry {attempt} of {self._policy.max_attempts - 1}")
