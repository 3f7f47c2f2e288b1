"""Recurring mute time intervals (e.g. every Sunday 02:00-04:00 local time), decided without I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)


@dataclass(frozen=True, slots=True)
class TimeInterval:
    """One recurring window; every constraint given must hold, an empty one holds always.

    ``times`` are ``(start_minute, end_minute)`` of the local day, end exclusive; ``weekdays`` are 0 =
    Monday … 6 = Sunday; ``days_of_month`` 1..31; ``months`` 1..12.
    """

    times: tuple[tuple[int, int], ...] = ()
    weekdays: frozenset[int] = frozenset()
    days_of_month: frozenset[int] = frozenset()
    months: frozenset[int] = frozenset()
    location: str = "UTC"

    def contains(self, now: datetime) -> bool:
        """Whether ``now`` (timezone-aware) falls inside this window, read in its location."""
        local = now.astimezone(ZoneInfo(self.location))
        minute = local.hour * 60 + local.minute
        if self.times and not any(start <= minute < end for start, end in self.times):
            return False
        if self.weekdays and local.weekday() not in self.weekdays:
            return False
        if self.days_of_month and local.day not in self.days_of_month:
            return False
        return not self.months or local.month in self.months


@dataclass(frozen=True, slots=True)
class MuteTimeInterval:
    """A named set of windows; muted while any of them contains the time."""

    name: str
    intervals: Sequence[TimeInterval]

    def active(self, now: datetime) -> bool:
        """Whether notifications of routes naming this interval are muted at ``now``."""
        return any(interval.contains(now) for interval in self.intervals)


def parse_clock(value: str) -> int:
    """Minutes since midnight of ``HH:MM`` (``24:00`` is the end of the day); ValueError otherwise."""
    hours, sep, minutes = value.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(f"{value!r} is not HH:MM")
    total = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or total > 24 * 60:
        raise ValueError(f"{value!r} is not a time of day")
    return total


def parse_names(values: Sequence[object], names: Sequence[str], first: int) -> frozenset[int]:
    """Names (``monday``), numbers, or inclusive ranges ``a:b`` of them, as numbers from ``first``."""
    chosen: set[int] = set()
    for value in values:
        low, sep, high = str(value).lower().partition(":")
        start, end = _named(low, names, first), _named(high, names, first) if sep else None
        if end is None:
            chosen.add(start)
        elif end < start:
            raise ValueError(f"range {value!r} ends before it starts")
        else:
            chosen.update(range(start, end + 1))
    return frozenset(chosen)


def _named(value: str, names: Sequence[str], first: int) -> int:
    if value in names:
        return names.index(value) + first
    if value.isdigit() and first <= int(value) < first + len(names):
        return int(value)
    raise ValueError(f"{value!r} is not one of {', '.join(names)} or {first}..{first + len(names) - 1}")
