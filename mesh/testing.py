"""Helpers for testing code built on the mesh's pure, clock-injected parts."""

from __future__ import annotations

import math


class FakeClock:
    """A manual monotonic clock: time moves only when a test calls ``advance``."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError("start must be a finite number")
        self._now = start

    def now(self) -> float:
        """The current fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (never backwards) and return the new time."""
        if not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError("a monotonic clock only moves forward by a finite amount")
        self._now += seconds
        return self._now
