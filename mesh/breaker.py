"""Circuit breaker as a pure state machine: outcomes and a clock go in, admission decisions come out.

Nothing here reads the clock, sleeps or does I/O. Every method takes ``now`` (seconds on any monotonic
clock; values that go backwards are treated as the latest time seen) and the I/O layer drains the
``Transition`` events to publish them. ``next_transition_at`` says when the breaker next changes state
by itself, so a runtime adapter knows when to wake up (aioquic's ``get_timer()`` idea).

All transitions live in ``TRANSITIONS``; firing an event the table does not allow raises
``IllegalTransitionError`` (h11's ``_state.py`` idea)::

    CLOSED    --TRIP------------------> OPEN        failure rate over the window, or consecutive failures
    OPEN      --COOL_DOWN_ELAPSED-----> HALF_OPEN   after the (growing, capped) cool-down
    HALF_OPEN --PROBES_SUCCEEDED------> CLOSED      enough probe successes
    HALF_OPEN --PROBE_FAILED----------> OPEN        any probe failure; the cool-down grows
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


class BreakerState(enum.Enum):
    """Where a breaker is: passing traffic, refusing it, or letting a few probes test the endpoint."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.Enum):
    """Something that moves a breaker from one state to another."""

    TRIP = "trip"
    COOL_DOWN_ELAPSED = "cool_down_elapsed"
    PROBES_SUCCEEDED = "probes_succeeded"
    PROBE_FAILED = "probe_failed"


TRANSITIONS: Final[Mapping[BreakerState, Mapping[BreakerEvent, BreakerState]]] = MappingProxyType(
    {
        BreakerState.CLOSED: MappingProxyType({BreakerEvent.TRIP: BreakerState.OPEN}),
        BreakerState.OPEN: MappingProxyType({BreakerEvent.COOL_DOWN_ELAPSED: BreakerState.HALF_OPEN}),
        BreakerState.HALF_OPEN: MappingProxyType(
            {
                BreakerEvent.PROBES_SUCCEEDED: BreakerState.CLOSED,
                BreakerEvent.PROBE_FAILED: BreakerState.OPEN,
            }
        ),
    }
)
"""Every legal transition, as ``TRANSITIONS[state][event] -> next state``; anything absent is illegal."""


class IllegalTransitionError(RuntimeError):
    """Raised when an event arrives in a state whose row of ``TRANSITIONS`` has no entry for it."""

    def __init__(self, state: BreakerState, event: BreakerEvent) -> None:
        super().__init__(f"breaker cannot handle event {event.name} in state {state.name}")
        self.state = state
        self.event = event


def next_state(state: BreakerState, event: BreakerEvent) -> BreakerState:
    """Look up the state ``event`` leads to from ``state``, raising ``IllegalTransitionError`` if none."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransitionError(state, event) from None


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, with the time it took effect and a human-readable reason, for publishing."""

    from_state: BreakerState
    to_state: BreakerState
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Outcomes recorded in the sliding window, for metrics and status tables."""

    successes: int
    failures: int

    @property
    def total(self) -> int:
        """Number of outcomes in the window."""
        return self.successes + self.failures

    @property
    def failure_rate(self) -> float:
        """Failures as a fraction of all outcomes, or 0.0 when the window is empty."""
        return self.failures / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds and timings of one circuit breaker; the defaults suit a unary RPC endpoint.

    - ``failure_rate_threshold`` (0.5): trip when failures / outcomes in the window reach this fraction…
    - ``minimum_requests`` (20): …but only once the window holds at least this many outcomes.
    - ``window_seconds`` (10.0) and ``window_buckets`` (10): the sliding window and how finely it slides;
      it advances in steps of ``window_seconds / window_buckets``.
    - ``consecutive_failures`` (5): trip after this many failures in a row regardless of volume;
      ``None`` disables the rule.
    - ``cool_down_seconds`` (5.0): how long the breaker stays open before admitting probes.
    - ``cool_down_multiplier`` (2.0) and ``max_cool_down_seconds`` (60.0): each failed probe multiplies
      the next cool-down, up to the cap; closing resets it.
    - ``half_open_max_probes`` (1): probes allowed in flight at once while half-open.
    - ``half_open_successes`` (2): probe successes needed to close again.
    - ``probe_timeout_seconds`` (30.0): a probe slot whose outcome never arrives is freed after this long,
      so a lost result cannot keep the breaker half-open and refusing forever.
    - ``max_pending_transitions`` (256): transitions kept for ``drain_transitions``; older ones are
      dropped if nobody drains.
    """

    failure_rate_threshold: float = 0.5
    minimum_requests: int = 20
    window_seconds: float = 10.0
    window_buckets: int = 10
    consecutive_failures: int | None = 5
    cool_down_seconds: float = 5.0
    cool_down_multiplier: float = 2.0
    max_cool_down_seconds: float = 60.0
    half_open_max_probes: int = 1
    half_open_successes: int = 2
    probe_timeout_seconds: float = 30.0
    max_pending_transitions: int = 256

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            raise ValueError("failure_rate_threshold must be in (0, 1]")
        if self.minimum_requests < 1:
            raise ValueError("minimum_requests must be at least 1")
        if not (math.isfinite(self.window_seconds) and self.window_seconds > 0.0):
            raise ValueError("window_seconds must be a positive number")
        if self.window_buckets < 1:
            raise ValueError("window_buckets must be at least 1")
        if self.consecutive_failures is not None and self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1, or None to disable the rule")
        if not self.cool_down_seconds > 0.0:
            raise ValueError("cool_down_seconds must be positive")
        if not self.cool_down_multiplier >= 1.0:
            raise ValueError("cool_down_multiplier must be at least 1")
        if not self.max_cool_down_seconds >= self.cool_down_seconds:
            raise ValueError("max_cool_down_seconds must be at least cool_down_seconds")
        if self.half_open_max_probes < 1:
            raise ValueError("half_open_max_probes must be at least 1")
        if self.half_open_successes < 1:
            raise ValueError("half_open_successes must be at least 1")
        if not self.probe_timeout_seconds > 0.0:
            raise ValueError("probe_timeout_seconds must be positive")
        if self.max_pending_transitions < 1:
            raise ValueError("max_pending_transitions must be at least 1")


class _Window:
    """Success/failure counts over a sliding time window kept as a ring of fixed-width buckets."""

    __slots__ = ("_failures", "_ids", "_successes", "_width")

    def __init__(self, seconds: float, buckets: int) -> None:
        self._width = seconds / buckets
        self._ids = [-1] * buckets  # which absolute bucket each ring slot currently holds
        self._successes = [0] * buckets
        self._failures = [0] * buckets

    def add(self, now: float, ok: bool) -> None:
        bucket = math.floor(now / self._width)
        slot = bucket % len(self._ids)
        if self._ids[slot] != bucket:
            self._ids[slot] = bucket
            self._successes[slot] = 0
            self._failures[slot] = 0
        if ok:
            self._successes[slot] += 1
        else:
            self._failures[slot] += 1

    def counts(self, now: float) -> WindowCounts:
        oldest = math.floor(now / self._width) - len(self._ids) + 1
        successes = failures = 0
        for slot, bucket in enumerate(self._ids):
            if bucket >= oldest:
                successes += self._successes[slot]
                failures += self._failures[slot]
        return WindowCounts(successes, failures)

    def clear(self) -> None:
        for slot in range(len(self._ids)):
            self._ids[slot] = -1
            self._successes[slot] = 0
            self._failures[slot] = 0


class CircuitBreaker:
    """Decides whether calls to one endpoint (or service) may proceed, from the outcomes it is told about.

    Usage: call ``allow(now)`` before a call; if it returns True, report exactly one of
    ``record_success``, ``record_failure`` or ``release`` when the call ends. Outcomes that arrive while
    open, or while half-open with no probe outstanding, come from calls admitted before the breaker
    tripped and are ignored.
    """

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self._config = config if config is not None else BreakerConfig()
        self._state = BreakerState.CLOSED
        self._now = -math.inf
        self._window = _Window(self._config.window_seconds, self._config.window_buckets)
        self._consecutive_failures = 0
        self._cool_down = self._config.cool_down_seconds
        self._opened_at = 0.0
        self._probes: deque[float] = deque()  # admission times of probes still in flight, oldest first
        self._probe_successes = 0
        self._transitions: deque[Transition] = deque(maxlen=self._config.max_pending_transitions)

    @property
    def config(self) -> BreakerConfig:
        """The thresholds this breaker was built with."""
        return self._config

    def state(self, now: float) -> BreakerState:
        """The state at ``now``, after any cool-down that has elapsed by then."""
        self._advance(now)
        return self._state

    def allow(self, now: float) -> bool:
        """Whether a call may start now; while half-open a True answer reserves one probe slot."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            return False
        if len(self._probes) >= self._config.half_open_max_probes:
            return False
        self._probes.append(self._now)
        return True

    def record_success(self, now: float) -> None:
        """Report that an admitted call succeeded."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            self._window.add(self._now, ok=True)
            self._consecutive_failures = 0
        elif self._state is BreakerState.HALF_OPEN and self._probes:
            self._probes.popleft()
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_successes:
                self._fire(
                    BreakerEvent.PROBES_SUCCEEDED, self._now, f"{self._probe_successes} probes succeeded"
                )

    def record_failure(self, now: float) -> None:
        """Report that an admitted call failed in a way that counts against the endpoint."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            self._window.add(self._now, ok=False)
            self._consecutive_failures += 1
            reason = self._trip_reason()
            if reason is not None:
                self._fire(BreakerEvent.TRIP, self._now, reason)
        elif self._state is BreakerState.HALF_OPEN and self._probes:
            self._probes.popleft()
            self._fire(BreakerEvent.PROBE_FAILED, self._now, "probe failed")

    def release(self, now: float) -> None:
        """Give back an admitted call's slot without an outcome, e.g. when the caller cancelled it."""
        self._advance(now)
        if self._state is BreakerState.HALF_OPEN and self._probes:
            self._probes.popleft()

    def next_transition_at(self, now: float) -> float | None:
        """When the breaker will next change state on its own (end of cool-down), or None if it won't."""
        self._advance(now)
        if self._state is BreakerState.OPEN:
            return self._opened_at + self._cool_down
        return None

    def window(self, now: float) -> WindowCounts:
        """Outcomes counted in the sliding window at ``now`` (empty unless closed)."""
        self._advance(now)
        return self._window.counts(self._now)

    def drain_transitions(self) -> list[Transition]:
        """Hand over the transitions that happened since the last drain, oldest first."""
        drained = list(self._transitions)
        self._transitions.clear()
        return drained

    def _advance(self, now: float) -> None:
        self._now = max(self._now, now)
        if self._state is BreakerState.OPEN:
            reopen_at = self._opened_at + self._cool_down
            if self._now >= reopen_at:
                self._fire(
                    BreakerEvent.COOL_DOWN_ELAPSED, reopen_at, f"cool-down of {self._cool_down:g}s elapsed"
                )
        elif self._state is BreakerState.HALF_OPEN:
            expired_before = self._now - self._config.probe_timeout_seconds
            while self._probes and self._probes[0] <= expired_before:
                self._probes.popleft()

    def _trip_reason(self) -> str | None:
        config = self._config
        if (
            config.consecutive_failures is not None
            and self._consecutive_failures >= config.consecutive_failures
        ):
            return f"{self._consecutive_failures} consecutive failures"
        counts = self._window.counts(self._now)
        if counts.total >= config.minimum_requests and counts.failure_rate >= config.failure_rate_threshold:
            return (
                f"failure rate {counts.failure_rate:.0%} over {counts.total} requests "
                f"in {config.window_seconds:g}s (threshold {config.failure_rate_threshold:.0%})"
            )
        return None

    def _fire(self, event: BreakerEvent, at: float, reason: str) -> None:
        previous = self._state
        self._state = next_state(previous, event)
        # Side effects of entering a state; which state follows which is decided by the table alone.
        if self._state is BreakerState.OPEN:
            if previous is BreakerState.HALF_OPEN:
                self._cool_down = min(
                    self._cool_down * self._config.cool_down_multiplier, self._config.max_cool_down_seconds
                )
            else:
                self._cool_down = self._config.cool_down_seconds
            self._opened_at = at
            self._window.clear()
            self._consecutive_failures = 0
        elif self._state is BreakerState.HALF_OPEN:
            self._probes.clear()
            self._probe_successes = 0
        else:
            self._cool_down = self._config.cool_down_seconds
            self._window.clear()
            self._consecutive_failures = 0
            self._probes.clear()
        self._transitions.append(Transition(previous, self._state, at, reason))
