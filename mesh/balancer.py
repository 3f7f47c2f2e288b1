"""Endpoint picking: power-of-two-choices on peak-EWMA load, and round-robin; pure and clock-injected.

Peak EWMA follows Finagle's ``PeakEwma`` and Linkerd: each endpoint keeps an exponentially weighted moving
average of its latency that jumps straight up to any slower sample (so a slowdown is noticed at once) and
decays back with time constant ``decay_seconds``. Its cost is that estimate * (outstanding + 1); an
endpoint never measured but already busy costs ``UNMEASURED_PENALTY`` so a new instance is not flooded
before its first answer. Power-of-two-choices samples two endpoints at random and takes the cheaper one,
which avoids the herd behaviour of always choosing the global minimum.

A picker is given an ``admit(endpoint, now)`` callback, normally the endpoint breaker's ``allow``. It is
asked only about the endpoint about to be returned, so a half-open breaker's probe slot is reserved only
when that endpoint is really chosen; a refused endpoint is skipped and another one tried.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

UNMEASURED_PENALTY: Final = 1e6
"""Cost (in seconds-like units) of an endpoint with requests in flight but no latency sample yet."""

Admit = Callable[[str, float], bool]
"""Says whether a call to ``endpoint`` may start at ``now``; may reserve a slot when it answers True."""


def _admit_all(endpoint: str, now: float) -> bool:
    return True


class Picker(Protocol):
    """Chooses one endpoint among candidates for the next call."""

    def pick(self, candidates: Sequence[str], now: float) -> str | None:
        """The endpoint to use, or None when no candidate is admitted."""
        ...


@dataclass(slots=True, eq=False)
class RequestToken:
    """Handle for one call in flight on an endpoint, returned by ``EndpointStats.start``."""

    started_at: float
    _finished: bool = field(default=False, init=False, repr=False)


class EndpointStats:
    """Peak-EWMA latency and in-flight count of one endpoint, from which its load cost is computed."""

    __slots__ = ("_decay", "_estimate", "_measured", "_outstanding", "_stamp")

    def __init__(self, decay_seconds: float = 10.0) -> None:
        if not (math.isfinite(decay_seconds) and decay_seconds > 0.0):
            raise ValueError("decay_seconds must be a positive number")
        self._decay = decay_seconds
        self._estimate = 0.0  # seconds, as of self._stamp
        self._stamp = 0.0
        self._measured = False
        self._outstanding = 0

    @property
    def outstanding(self) -> int:
        """Calls started and not yet finished."""
        return self._outstanding

    def start(self, now: float) -> RequestToken:
        """Count a call as started at ``now``; pass the token to ``finish`` when it ends."""
        self._outstanding += 1
        return RequestToken(now)

    def finish(self, token: RequestToken, now: float, ok: bool) -> None:
        """Count a call as ended and fold its latency into the estimate; a second finish is ignored.

        ``ok`` is accepted so callers report every ending the same way; a fast failure still counts as a
        fast response here, because ejecting failing endpoints is the circuit breaker's job.
        """
        if token._finished:
            return
        token._finished = True
        self._outstanding -= 1
        self._observe(max(now - token.started_at, 0.0), now)

    def latency(self, now: float) -> float:
        """Latency estimate in seconds at ``now``, decayed towards zero since the last sample."""
        if not self._measured:
            return 0.0
        elapsed = max(now - self._stamp, 0.0)
        return self._estimate * math.exp(-elapsed / self._decay)

    def cost(self, now: float) -> float:
        """Load score at ``now``: lower is better; latency estimate * (outstanding + 1)."""
        estimate = self.latency(now)
        if estimate == 0.0 and self._outstanding > 0:
            return UNMEASURED_PENALTY + self._outstanding
        return estimate * (self._outstanding + 1)

    def _observe(self, rtt: float, now: float) -> None:
        if not self._measured or rtt > self._estimate:
            self._estimate = rtt  # peak-sensitive: a slower sample replaces the average outright
        else:
            weight = math.exp(-max(now - self._stamp, 0.0) / self._decay)
            self._estimate = self._estimate * weight + rtt * (1.0 - weight)
        self._measured = True
        self._stamp = max(now, self._stamp)


class PeakEwmaP2C:
    """Power-of-two-choices picker on peak-EWMA cost; owns one ``EndpointStats`` per endpoint."""

    def __init__(
        self, rng: random.Random, *, decay_seconds: float = 10.0, admit: Admit | None = None
    ) -> None:
        if not (math.isfinite(decay_seconds) and decay_seconds > 0.0):
            raise ValueError("decay_seconds must be a positive number")
        self._rng = rng
        self._decay = decay_seconds
        self._admit = admit if admit is not None else _admit_all
        self._stats: dict[str, EndpointStats] = {}

    def stats(self, endpoint: str) -> EndpointStats:
        """The statistics of ``endpoint``, created on first use; report call starts and ends here."""
        stats = self._stats.get(endpoint)
        if stats is None:
            stats = self._stats[endpoint] = EndpointStats(self._decay)
        return stats

    def retain(self, endpoints: Iterable[str]) -> None:
        """Forget the statistics of every endpoint not in ``endpoints`` (e.g. after discovery removes it)."""
        keep = set(endpoints)
        for endpoint in [e for e in self._stats if e not in keep]:
            del self._stats[endpoint]

    def pick(self, candidates: Sequence[str], now: float) -> str | None:
        """The cheaper of two random admitted candidates, or None when none is admitted."""
        pool = list(candidates)
        while pool:
            if len(pool) == 1:
                index = 0
            else:
                first, second = self._rng.sample(range(len(pool)), 2)
                index = first if self._cost(pool[first], now) <= self._cost(pool[second], now) else second
            endpoint = pool[index]
            if self._admit(endpoint, now):
                return endpoint
            pool[index] = pool[-1]
            pool.pop()
        return None

    def _cost(self, endpoint: str, now: float) -> float:
        stats = self._stats.get(endpoint)
        return stats.cost(now) if stats is not None else 0.0


class RoundRobin:
    """Picker that takes admitted candidates in turn; an optional rng randomises the starting point."""

    def __init__(self, rng: random.Random | None = None, *, admit: Admit | None = None) -> None:
        self._admit = admit if admit is not None else _admit_all
        # Starting at a random offset keeps many clients from hitting the same first endpoint together.
        self._next = rng.randrange(1 << 30) if rng is not None else 0

    def pick(self, candidates: Sequence[str], now: float) -> str | None:
        """The next admitted candidate after the previous pick, or None when none is admitted."""
        count = len(candidates)
        start = self._next % count if count else 0
        for step in range(count):
            index = (start + step) % count
            if self._admit(candidates[index], now):
                self._next = index + 1
                return candidates[index]
        return None
