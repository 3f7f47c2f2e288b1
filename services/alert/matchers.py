"""Label matchers (as in silences, routes and filters) and silence states, decided without I/O."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""What a label name may look like (the Prometheus rule)."""


class MatchType(enum.IntEnum):
    """How a matcher compares; the numbers are those of itsmesh.v1.LabelMatchType."""

    EQUAL = 1
    NOT_EQUAL = 2
    REGEX = 3
    NOT_REGEX = 4


@dataclass(frozen=True, slots=True)
class Matcher:
    """A condition on one label; a missing label counts as the empty string."""

    name: str
    value: str
    type: MatchType = MatchType.EQUAL
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, name: str, value: str, type: MatchType = MatchType.EQUAL) -> Matcher:
        """A matcher; raises ``re.error`` for a bad regular expression."""
        pattern = re.compile(value) if type in (MatchType.REGEX, MatchType.NOT_REGEX) else None
        return cls(name, value, type, pattern)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this matcher (regular expressions must match the whole value)."""
        actual = labels.get(self.name, "")
        if self.type is MatchType.EQUAL:
            return actual == self.value
        if self.type is MatchType.NOT_EQUAL:
            return actual != self.value
        assert self._pattern is not None  # create() compiles every regex matcher
        found = self._pattern.fullmatch(actual) is not None
        return found if self.type is MatchType.REGEX else not found

    def as_json(self) -> dict[str, object]:
        """The stored form (the same keys the SQL function ``alert.labels_match`` reads)."""
        return {"name": self.name, "value": self.value, "type": int(self.type)}


def all_match(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher holds (an empty list matches everything)."""
    return all(m.matches(labels) for m in matchers)


def matcher_violations(matchers: Iterable[tuple[str, str, int]], path: str) -> list[tuple[str, str]]:
    """Field violations of ``(name, value, type)`` triples under ``path`` (``matchers[2].value`` ...)."""
    problems: list[tuple[str, str]] = []
    for i, (name, value, type_number) in enumerate(matchers):
        where = f"{path}[{i}]"
        if not LABEL_NAME.match(name):
            problems.append((f"{where}.name", "must be a label name: a letter or _, then letters, digits, _"))
        if type_number not in (0, *MatchType):
            problems.append((f"{where}.type", f"unknown match type {type_number}"))
        elif type_number in (MatchType.REGEX, MatchType.NOT_REGEX):
            try:
                re.compile(value)
            except re.error as exc:
                problems.append((f"{where}.value", f"invalid regular expression: {exc}"))
    return problems


def matches_empty(matcher: Matcher) -> bool:
    """Whether the matcher holds for an alert that lacks its label (such a matcher selects too much)."""
    return matcher.matches({})


class SilenceState(enum.IntEnum):
    """Whether a silence is in force; the numbers are those of itsmesh.v1.SilenceState."""

    PENDING = 1
    ACTIVE = 2
    EXPIRED = 3


def silence_state(start: datetime, end: datetime, now: datetime) -> SilenceState:
    """PENDING before ``start``, ACTIVE in ``[start, end)``, EXPIRED from ``end`` on."""
    if now >= end:
        return SilenceState.EXPIRED
    if now < start:
        return SilenceState.PENDING
    return SilenceState.ACTIVE
