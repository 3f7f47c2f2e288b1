"""Service instances and the "last known endpoints" table that discovery keeps; pure and clock-injected.

``Instance`` is what an instance says about itself in the registry. ``EndpointTable`` holds, per service,
the instances a watcher has seen and decides which of them are routable. It never reads the clock or
touches Redis: the registry adapter feeds it listings, single sightings and removals, each with ``now``
(seconds on the watcher's monotonic clock), and gets back the change in routable endpoints, if any.

Rules the table enforces:

- **Static stability.** Only evidence from Redis removes an instance: a full listing that no longer
  contains it, or an explicit removal (a ``down`` announcement, or a record found missing). Losing Redis
  feeds the table nothing, so the last known endpoints stay. After a reconnect or a dataset reset the
  adapter calls ``start_grace``: until it ends, listings add and update but do not remove, because live
  instances need a heartbeat or two to re-register in a Redis that came back empty.
- **Routable** means health ``SERVING`` and not marked failed.
- **Lease-based readmission.** ``mark_failed`` takes an instance out of rotation at once (a client's
  first connection failure). It comes back only when a sighting proves its lease was renewed *after* the
  failure; a key that merely has not expired yet (the last heartbeat before a kill -9) proves nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

SERVING: Final = "SERVING"
"""Health of an instance that accepts calls."""
NOT_SERVING: Final = "NOT_SERVING"
"""Health of an instance that is up but must not be sent new calls (starting, draining)."""

Health = Literal["SERVING", "NOT_SERVING"]
HEALTH_STATES: Final = frozenset({SERVING, NOT_SERVING})


@dataclass(frozen=True, slots=True)
class Instance:
    """One running instance of a service, as it announces itself in the registry.

    ``address`` is the ``host:port`` clients dial; ``started_at`` is Unix time in seconds; ``weight`` is a
    relative share of traffic for pickers that honour it; ``metadata`` holds free-form string labels.
    """

    service: str
    instance_id: str
    address: str
    version: str = ""
    zone: str = "local"
    weight: int = 1
    started_at: float = 0.0
    health: Health = "SERVING"
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.service or ":" in self.service:
            raise ValueError(f"service must be a non-empty name without ':', got {self.service!r}")
        if not self.instance_id:
            raise ValueError("instance_id must not be empty")
        host, sep, port = self.address.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"address must be host:port, got {self.address!r}")
        if self.health not in HEALTH_STATES:
            raise ValueError(f"health must be SERVING or NOT_SERVING, got {self.health!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 0:
            raise ValueError(f"weight must be a non-negative integer, got {self.weight!r}")
        if not math.isfinite(self.started_at):
            raise ValueError("started_at must be a finite number")
        # Frozen dataclass: the private copy keeps a caller's later edits out of the record.
        object.__setattr__(self, "metadata", {str(k): str(v) for k, v in self.metadata.items()})

    @property
    def serving(self) -> bool:
        """Whether the instance says it accepts calls."""
        return self.health == SERVING

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-compatible values."""
        return {
            "service": self.service,
            "instance_id": self.instance_id,
            "address": self.address,
            "version": self.version,
            "zone": self.zone,
            "weight": self.weight,
            "started_at": self.started_at,
            "health": self.health,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Instance:
        """Instance from ``to_dict`` output; unknown keys are ignored, bad values raise ValueError."""
        try:
            metadata = data.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise TypeError("metadata must be an object")
            return cls(
                service=str(data["service"]),
                instance_id=str(data["instance_id"]),
                address=str(data["address"]),
                version=str(data.get("version", "")),
                zone=str(data.get("zone", "local")),
                weight=int(data.get("weight", 1)),
                started_at=float(data.get("started_at", 0.0)),
                health=data.get("health", SERVING),
                metadata=metadata,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an instance record: {exc}") from exc

    def to_json(self) -> str:
        """The record as compact JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Instance:
        """Parse ``to_json`` output; ValueError if it is not a valid record."""
        return cls.from_dict(_json_object(raw))


def encode_record(instance: Instance, lease_s: float) -> str:
    """The registry record: the instance plus the lease length its registration keeps renewing."""
    return json.dumps({**instance.to_dict(), "lease_s": lease_s}, separators=(",", ":"), sort_keys=True)


def decode_record(raw: str | bytes) -> tuple[Instance, float | None]:
    """Split a registry record into the instance and its lease length (None when absent or invalid)."""
    data = _json_object(raw)
    lease = data.get("lease_s")
    lease_s = float(lease) if isinstance(lease, int | float) and lease > 0 else None
    return Instance.from_dict(data), lease_s


def renewed_at(read_at: float, remaining_s: float | None, lease_s: float | None) -> float:
    """Latest time a lease is known to have been renewed, from a read of its remaining time.

    A lease of ``lease_s`` with ``remaining_s`` left at a read sent at ``read_at`` was set at
    ``read_at + remaining_s - lease_s`` or later (the server answered after ``read_at``), so the estimate
    errs early, which is the safe side for readmission. Without a TTL (``remaining_s`` None) the record is
    not a lease and counts as renewed at the read; without a lease length nothing is proven.
    """
    if remaining_s is None:
        return read_at
    if lease_s is None:
        return -math.inf
    return read_at + remaining_s - lease_s


@dataclass(frozen=True, slots=True)
class Sighting:
    """An instance as Redis showed it, with the latest time its lease is known to have been renewed."""

    instance: Instance
    renewed_at: float


@dataclass(frozen=True, slots=True)
class EndpointsChange:
    """How the routable endpoints of one service changed; ``endpoints`` is the new list."""

    service: str
    endpoints: tuple[Instance, ...]
    added: tuple[Instance, ...] = ()
    removed: tuple[Instance, ...] = ()
    updated: tuple[Instance, ...] = ()


@dataclass(slots=True)
class _Entry:
    instance: Instance
    renewed_at: float
    failed_at: float | None = None

    @property
    def routable(self) -> bool:
        return self.failed_at is None and self.instance.serving


class EndpointTable:
    """The last known instances of each service and which of them are routable now."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, _Entry]] = {}
        self._grace_until = -math.inf

    def services(self) -> list[str]:
        """Names of the services with at least one known instance, sorted."""
        return sorted(name for name, entries in self._services.items() if entries)

    def instances(self, service: str) -> list[Instance]:
        """Every known instance of ``service`` (routable or not), ordered by instance id."""
        entries = self._services.get(service, {})
        return [entries[key].instance for key in sorted(entries)]

    def endpoints(self, service: str) -> list[Instance]:
        """The routable instances of ``service``, ordered by instance id."""
        entries = self._services.get(service, {})
        return [entries[key].instance for key in sorted(entries) if entries[key].routable]

    def is_failed(self, service: str, instance_id: str) -> bool:
        """Whether the instance is held out of rotation by ``mark_failed``."""
        entry = self._services.get(service, {}).get(instance_id)
        return entry is not None and entry.failed_at is not None

    def in_grace(self, now: float) -> bool:
        """Whether listings are still barred from removing instances (see ``start_grace``)."""
        return now < self._grace_until

    def start_grace(self, now: float, seconds: float) -> None:
        """Let listings add but not remove until ``now + seconds``: Redis came back and is repopulating."""
        if not (math.isfinite(seconds) and seconds >= 0.0):
            raise ValueError("seconds must be a non-negative number")
        self._grace_until = max(self._grace_until, now + seconds)

    def replace(self, service: str, sightings: Iterable[Sighting], now: float) -> EndpointsChange | None:
        """Apply a full listing of ``service``: upsert what it shows, drop what it lacks (outside grace)."""
        seen: dict[str, Sighting] = {}
        for sighting in sightings:
            if sighting.instance.service != service:
                raise ValueError(f"listing of {service!r} contains {sighting.instance.service!r}")
            seen[sighting.instance.instance_id] = sighting
        before = self._routable(service)
        entries = self._services.setdefault(service, {})
        for sighting in seen.values():
            self._upsert(entries, sighting)
        if not self.in_grace(now):
            for instance_id in [key for key in entries if key not in seen]:
                del entries[instance_id]
        return self._change(service, before)

    def upsert(self, sighting: Sighting, now: float) -> EndpointsChange | None:
        """Apply one sighting (an ``up`` or ``update`` announcement, read back from Redis)."""
        service = sighting.instance.service
        before = self._routable(service)
        self._upsert(self._services.setdefault(service, {}), sighting)
        return self._change(service, before)

    def remove(self, service: str, instance_id: str) -> EndpointsChange | None:
        """Forget an instance Redis says is gone (``down`` announcement or record found missing)."""
        entries = self._services.get(service)
        if entries is None or instance_id not in entries:
            return None
        before = self._routable(service)
        del entries[instance_id]
        return self._change(service, before)

    def mark_failed(self, service: str, instance_id: str, now: float) -> EndpointsChange | None:
        """Hold an instance out of rotation until a sighting shows its lease renewed after ``now``."""
        entry = self._services.get(service, {}).get(instance_id)
        if entry is None:
            return None
        before = self._routable(service)
        entry.failed_at = now if entry.failed_at is None else max(entry.failed_at, now)
        return self._change(service, before)

    @staticmethod
    def _upsert(entries: dict[str, _Entry], sighting: Sighting) -> None:
        entry = entries.get(sighting.instance.instance_id)
        if entry is None:
            entries[sighting.instance.instance_id] = _Entry(sighting.instance, sighting.renewed_at)
            return
        entry.instance = sighting.instance
        entry.renewed_at = max(entry.renewed_at, sighting.renewed_at)
        if entry.failed_at is not None and entry.renewed_at > entry.failed_at:
            entry.failed_at = None

    def _routable(self, service: str) -> dict[str, Instance]:
        entries = self._services.get(service, {})
        return {key: entry.instance for key, entry in entries.items() if entry.routable}

    def _change(self, service: str, before: dict[str, Instance]) -> EndpointsChange | None:
        after = self._routable(service)
        if not self._services.get(service):
            self._services.pop(service, None)
        added = tuple(after[key] for key in sorted(after.keys() - before.keys()))
        removed = tuple(before[key] for key in sorted(before.keys() - after.keys()))
        updated = tuple(
            after[key] for key in sorted(after.keys() & before.keys()) if after[key] != before[key]
        )
        if not (added or removed or updated):
            return None
        return EndpointsChange(service, tuple(after[key] for key in sorted(after)), added, removed, updated)


def _json_object(raw: str | bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an instance record: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("not an instance record: expected a JSON object")
    return data
