"""Inhibition: which firing alerts suppress which others (e.g. camera offline inhibits its quality alerts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.alert.matchers import all_match
from services.alert.routing import InhibitRule


@dataclass(frozen=True, slots=True)
class FiringAlert:
    """An open alert that may inhibit others."""

    fingerprint: str
    labels: Mapping[str, str]


def inhibited_by(
    fingerprint: str,
    labels: Mapping[str, str],
    firing: Iterable[FiringAlert],
    rules: Sequence[InhibitRule],
) -> list[str]:
    """Fingerprints of the firing alerts that inhibit this one (sorted; empty when none does).

    An alert never inhibits itself, even when it matches both sides of a rule.
    """
    applicable = [rule for rule in rules if all_match(rule.target, labels)]
    if not applicable:
        return []
    found: set[str] = set()
    for source in firing:
        if source.fingerprint == fingerprint:
            continue
        for rule in applicable:
            if all_match(rule.source, source.labels) and all(
                source.labels.get(name, "") == labels.get(name, "") for name in rule.equal
            ):
                found.add(source.fingerprint)
                break
    return sorted(found)
