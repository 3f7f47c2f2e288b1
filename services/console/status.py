"""The status vector's decisions: what each check result means, traffic mode, and up/down transitions.

Pure: these functions take check results (and ``now``) and return values; the aggregator does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Status = Literal["healthy", "degraded", "down", "unknown"]
TrafficMode = Literal["normal", "degraded", "isolated"]

SLOW_CHECK_MS: Final = 250.0
"""A component answering slower than this is degraded rather than healthy."""
DEGRADED_ERROR_RATE: Final = 0.05
"""Mesh-wide error rate from which traffic is degraded."""
ISOLATED_ERROR_RATE: Final = 0.5
"""Mesh-wide error rate from which traffic is isolated (most calls fail)."""
GONE_RETENTION_S: Final = 60.0
"""How long an instance that left discovery stays listed as down, so it never just vanishes."""


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """One component of the status vector: infrastructure or a service instance."""

    name: str
    type: str
    status: Status
    latency_ms: float | None
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The component as JSON-compatible values."""
        return {
            "name": self.name,
            "type": self.type,
            "status": self.status,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "details": dict(self.details),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """A component whose status changed between two vectors."""

    name: str
    previous: Status | None
    current: Status | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        """The transition as JSON-compatible values."""
        return {"name": self.name, "previous": self.previous, "current": self.current, "at": self.at}


def down(name: str, type_: str, error: str, latency_ms: float | None = None) -> ComponentStatus:
    """A component that did not answer (or failed its check)."""
    return ComponentStatus(name, type_, "down", latency_ms, {}, error)


def by_latency(latency_ms: float, *, slow_ms: float = SLOW_CHECK_MS) -> Status:
    """Healthy when a check answered in time, degraded when it answered slowly."""
    return "healthy" if latency_ms <= slow_ms else "degraded"


def instance_status(probe_status: str, registered_health: str, open_breakers: int) -> Status:
    """An instance's status from its grpc.health answer, its registered health and its breakers.

    SERVING with every breaker closed is healthy; NOT_SERVING (draining) or an open breaker is degraded;
    no answer is down; any other health answer (SERVICE_UNKNOWN, UNKNOWN) is unknown.
    """
    if probe_status == "DOWN":
        return "down"
    if probe_status == "NOT_SERVING" or registered_health != "SERVING":
        return "degraded"
    if probe_status != "SERVING":
        return "unknown"
    return "degraded" if open_breakers else "healthy"


def rate(later: float, earlier: float, seconds: float) -> float | None:
    """Per-second increase of a counter; None without an interval or after a counter reset."""
    if seconds <= 0 or later < earlier:
        return None
    return (later - earlier) / seconds


def traffic_mode(error_rate: float | None, instances_up: int, instances_total: int) -> TrafficMode:
    """Normal below 5 % errors; degraded from 5 %; isolated from 50 % or when no instance answers."""
    if instances_total and not instances_up:
        return "isolated"
    if error_rate is None:
        return "normal"
    if error_rate >= ISOLATED_ERROR_RATE:
        return "isolated"
    return "degraded" if error_rate >= DEGRADED_ERROR_RATE else "normal"


def transitions(
    previous: Mapping[str, Status], current: Mapping[str, Status], now: float
) -> list[Transition]:
    """Components whose status differs between two vectors (appeared and vanished ones included), by name."""
    names = sorted(set(previous) | set(current))
    return [
        Transition(name, previous.get(name), current.get(name), now)
        for name in names
        if previous.get(name) != current.get(name)
    ]


def is_urgent(changes: Iterable[Transition]) -> bool:
    """Whether a change must be pushed at once rather than with the next tick: something went down or up."""
    return any((t.current == "down") != (t.previous == "down") and t.previous is not None for t in changes)


@dataclass(slots=True)
class GoneInstances:
    """Instances that left discovery: shown as down for ``retention_s``, then dropped."""

    retention_s: float = GONE_RETENTION_S
    _last_seen: dict[str, tuple[float, ComponentStatus]] = field(default_factory=dict)

    def update(self, listed: Sequence[ComponentStatus], now: float) -> list[ComponentStatus]:
        """Down entries for instances listed before but not now; remembers the listed ones."""
        listed_names = {c.name for c in listed}
        for component in listed:
            self._last_seen[component.name] = (now, component)
        gone = []
        for name, (seen_at, last) in list(self._last_seen.items()):
            if name in listed_names:
                continue
            if now - seen_at > self.retention_s:
                del self._last_seen[name]
                continue
            details = {**last.details, "left_discovery_s_ago": round(now - seen_at, 1)}
            gone.append(ComponentStatus(name, last.type, "down", None, details, "no longer registered"))
        return gone


def overview(components: Sequence[ComponentStatus]) -> dict[str, Any]:
    """Counts for the dashboard cards: services and infrastructure up out of total."""
    infra = [c for c in components if c.type in INFRA_TYPES]
    services = [c for c in components if c.type not in INFRA_TYPES]
    return {
        "services_up": sum(c.status in ("healthy", "degraded") for c in services),
        "services_total": len(services),
        "infrastructure_up": sum(c.status in ("healthy", "degraded") for c in infra),
        "infrastructure_total": len(infra),
    }


INFRA_TYPES: Final = frozenset({"postgresql", "redis", "kafka"})
"""Component types that are infrastructure rather than service instances."""
