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


def unchecked(known: Sequence[ComponentStatus], error: str) -> list[ComponentStatus]:
    """The last known instances as unknown when the listing itself failed: not vanished, not stale-healthy."""
    return [
        ComponentStatus(
            c.name,
            c.type,
            "unknown",
            None,
            {k: v for k, v in c.details.items() if k in _IDENTITY},  # no stale figures
            f"not checked this time: {error}",
        )
        for c in known
    ]


_IDENTITY: Final = frozenset({"service", "instance_id", "address", "zone", "version"})


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


SERVER_ERROR_CODES: Final = frozenset(
    {
        "UNKNOWN",
        "INTERNAL",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "DATA_LOSS",
        "UNIMPLEMENTED",
        "RESOURCE_EXHAUSTED",
    }
)
"""gRPC codes that count as the service failing. NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED … are the
caller's mistakes, and CANCELLED the caller leaving: the service answered correctly."""


def is_server_error(code: str) -> bool:
    """Whether an RPC that ended with ``code`` (its name, as in the metrics) counts as an error."""
    return code in SERVER_ERROR_CODES


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


def histogram_quantile(
    q: float, later: Mapping[float, float], earlier: Mapping[float, float]
) -> float | None:
    """The ``q`` quantile (0..1) of observations made between two scrapes of a cumulative histogram.

    ``later``/``earlier`` map each bucket's upper bound (``le``, +inf included) to its cumulative count.
    Interpolates linearly inside the bucket, as Prometheus' ``histogram_quantile`` does; None when nothing
    was observed in between or a counter was reset. A quantile in the +inf bucket is the highest finite
    bound (the histogram knows no more).
    """
    bounds = sorted(later)
    deltas = [later[b] - earlier.get(b, 0.0) for b in bounds]
    if not bounds or any(d < 0 for d in deltas) or deltas[-1] <= 0:
        return None
    rank = q * deltas[-1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(bounds, deltas, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def service_summaries(components: Sequence[ComponentStatus]) -> dict[str, dict[str, Any]]:
    """Per service (instances together): instances up/total, worst status, rps, error rate, worst p99.

    The p99 is the slowest instance's p99: merging percentiles exactly needs the raw buckets, and for
    an operator the worst instance is the one that matters.
    """
    grouped: dict[str, list[ComponentStatus]] = {}
    for component in components:
        if component.type not in INFRA_TYPES:
            grouped.setdefault(component.type, []).append(component)
    summaries: dict[str, dict[str, Any]] = {}
    for service, members in sorted(grouped.items()):
        rps_values = [float(c.details["rps"]) for c in members if c.details.get("rps") is not None]
        rps = sum(rps_values)
        errors = sum(
            float(c.details.get("rps") or 0.0) * float(c.details.get("error_rate") or 0.0) for c in members
        )
        p99s = [
            float(c.details["latency_p99_ms"]) for c in members if c.details.get("latency_p99_ms") is not None
        ]
        summaries[service] = {
            "status": worst(c.status for c in members),
            "instances_up": sum(c.status in ("healthy", "degraded") for c in members),
            "instances_total": len(members),
            "rps": round(rps, 3) if rps_values else None,
            "error_rate": round(errors / rps, 4) if rps else (0.0 if rps_values else None),
            "latency_p99_ms": round(max(p99s), 3) if p99s else None,
        }
    return summaries


_SEVERITY: Final[Mapping[str, int]] = {"down": 3, "degraded": 2, "unknown": 1, "healthy": 0}


def worst(statuses: Iterable[Status]) -> Status:
    """The most serious of ``statuses`` (down > degraded > unknown > healthy); healthy when there are none."""
    return max(statuses, key=lambda s: _SEVERITY[s], default="healthy")
