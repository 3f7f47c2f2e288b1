"""Telemetry geofences: validation, storage (the proto is the record) and translation for the rules."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import grpc
from shapely.geometry import Polygon

from itsmesh.v1 import analytics_pb2, common_pb2
from mesh.status import StatusError, status_error
from services.analytics.camera_config import enum_label
from services.analytics.telemetry_rules import GeofenceKind, GeofenceRule

GEOFENCE_ID: Final = re.compile(r"^[a-z0-9._-]{1,63}$")
MAX_NAME: Final = 200
MAX_VERTICES: Final = 10_000
UPDATABLE: Final = frozenset(
    {
        "name",
        "kind",
        "boundary",
        "device_ids",
        "speed_limit_kmh",
        "tolerance_kmh",
        "severity",
        "labels",
        "disabled",
    }
)


def validate(geofence: analytics_pb2.Geofence, prefix: str = "geofence") -> list[tuple[str, str]]:
    """Field violations of a geofence to create or store (empty when valid)."""
    problems: list[tuple[str, str]] = []
    if not GEOFENCE_ID.match(geofence.geofence_id):
        problems.append((f"{prefix}.geofence_id", "1-63 characters of [a-z0-9._-]"))
    if not geofence.name or len(geofence.name) > MAX_NAME:
        problems.append((f"{prefix}.name", f"required, at most {MAX_NAME} characters"))
    if geofence.kind == analytics_pb2.GEOFENCE_KIND_UNSPECIFIED or geofence.kind not in (
        analytics_pb2.GeofenceKind.values()
    ):
        problems.append((f"{prefix}.kind", "required"))
    vertices = geofence.boundary.vertices
    if not 3 <= len(vertices) <= MAX_VERTICES:
        problems.append((f"{prefix}.boundary.vertices", f"3 to {MAX_VERTICES} vertices"))
    else:
        for index, point in enumerate(vertices):
            if not (-90 <= point.latitude_deg <= 90 and -180 <= point.longitude_deg <= 180):
                problems.append(
                    (f"{prefix}.boundary.vertices[{index}]", "latitude -90..90, longitude -180..180")
                )
                break
        else:
            if not polygon(geofence).is_valid:
                problems.append((f"{prefix}.boundary", "the polygon intersects itself or has no area"))
    if geofence.HasField("speed_limit_kmh") and not geofence.speed_limit_kmh > 0:
        problems.append((f"{prefix}.speed_limit_kmh", "must be positive"))
    if geofence.tolerance_kmh < 0:
        problems.append((f"{prefix}.tolerance_kmh", "must not be negative"))
    if geofence.severity not in common_pb2.Severity.values():
        problems.append((f"{prefix}.severity", "unknown severity"))
    return problems


def polygon(geofence: analytics_pb2.Geofence) -> Polygon:
    """The boundary as a shapely polygon in (longitude, latitude) order."""
    return Polygon([(p.longitude_deg, p.latitude_deg) for p in geofence.boundary.vertices])


def rule(geofence: analytics_pb2.Geofence) -> GeofenceRule:
    """What the telemetry rules evaluate for this geofence."""
    kind: GeofenceKind = enum_label(analytics_pb2.GeofenceKind, geofence.kind, "GEOFENCE_KIND_")  # type: ignore[assignment]  # validated
    severity = enum_label(common_pb2.Severity, geofence.severity, "SEVERITY_")
    return GeofenceRule(
        geofence_id=geofence.geofence_id,
        kind=kind,
        polygon=polygon(geofence),
        name=geofence.name,
        device_ids=frozenset(geofence.device_ids),
        speed_limit_kmh=geofence.speed_limit_kmh if geofence.HasField("speed_limit_kmh") else None,
        tolerance_kmh=geofence.tolerance_kmh,
        severity="medium" if severity == "unspecified" else severity,  # type: ignore[arg-type]  # enum names
        labels=dict(geofence.labels),
        disabled=geofence.disabled,
    )


def _etag(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


def _with_stored(payload: bytes, etag: str, created: datetime, updated: datetime) -> analytics_pb2.Geofence:
    geofence = analytics_pb2.Geofence.FromString(payload)
    geofence.etag = etag
    geofence.create_time.FromDatetime(created)
    geofence.update_time.FromDatetime(updated)
    return geofence


def not_found(geofence_id: str) -> StatusError:
    """NOT_FOUND for a geofence id."""
    return status_error(
        grpc.StatusCode.NOT_FOUND, f"geofence {geofence_id!r} not found", reason="GEOFENCE_NOT_FOUND"
    )


def stale(geofence_id: str) -> StatusError:
    """ABORTED for a stale etag."""
    return status_error(
        grpc.StatusCode.ABORTED, f"geofence {geofence_id!r} changed since it was read", reason="ETAG_MISMATCH"
    )


class GeofenceStore:
    """analytics.geofences."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, geofence: analytics_pb2.Geofence) -> analytics_pb2.Geofence:
        """Store a new geofence; ALREADY_EXISTS when the id is taken."""
        record = _record(geofence)
        payload = record.SerializeToString(deterministic=True)
        row = await self._pool.fetchrow(
            "INSERT INTO analytics.geofences (geofence_id, device_ids, payload, etag) "
            "VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING RETURNING create_time, update_time",
            geofence.geofence_id,
            list(geofence.device_ids),
            payload,
            _etag(payload),
        )
        if row is None:
            raise status_error(
                grpc.StatusCode.ALREADY_EXISTS,
                f"geofence {geofence.geofence_id!r} exists",
                reason="GEOFENCE_EXISTS",
            )
        return _with_stored(payload, _etag(payload), row["create_time"], row["update_time"])

    async def get(self, geofence_id: str) -> analytics_pb2.Geofence:
        """One geofence; NOT_FOUND when missing."""
        row = await self._pool.fetchrow(
            "SELECT * FROM analytics.geofences WHERE geofence_id = $1", geofence_id
        )
        if row is None:
            raise not_found(geofence_id)
        return _with_stored(row["payload"], row["etag"], row["create_time"], row["update_time"])

    async def page(self, device_id: str, offset: int, limit: int) -> list[analytics_pb2.Geofence]:
        """Geofences ordered by id, optionally only those applying to ``device_id``."""
        rows = await self._pool.fetch(
            "SELECT * FROM analytics.geofences "
            "WHERE ($1 = '' OR cardinality(device_ids) = 0 OR $1 = ANY(device_ids)) "
            "ORDER BY geofence_id LIMIT $2 OFFSET $3",
            device_id,
            limit,
            offset,
        )
        return [_with_stored(r["payload"], r["etag"], r["create_time"], r["update_time"]) for r in rows]

    async def all(self) -> list[analytics_pb2.Geofence]:
        """Every geofence (what the telemetry rules load)."""
        rows = await self._pool.fetch("SELECT * FROM analytics.geofences ORDER BY geofence_id")
        return [_with_stored(r["payload"], r["etag"], r["create_time"], r["update_time"]) for r in rows]

    async def version(self) -> tuple[int, datetime | None]:
        """Count and newest update time: changes when any geofence changes."""
        row = await self._pool.fetchrow(
            "SELECT count(*) AS n, max(update_time) AS t FROM analytics.geofences"
        )
        assert row is not None
        return int(row["n"]), row["t"]

    async def update(self, geofence: analytics_pb2.Geofence, paths: Sequence[str]) -> analytics_pb2.Geofence:
        """Overwrite the masked fields; ABORTED for a stale etag, INVALID_ARGUMENT if the result is bad."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT * FROM analytics.geofences WHERE geofence_id = $1 FOR UPDATE", geofence.geofence_id
            )
            if row is None:
                raise not_found(geofence.geofence_id)
            if geofence.etag and geofence.etag != row["etag"]:
                raise stale(geofence.geofence_id)
            merged = analytics_pb2.Geofence.FromString(row["payload"])
            source: Any = geofence  # paths are validated field names; the stubs want literals
            target: Any = merged
            for path in paths:
                target.ClearField(path)
                if path in ("boundary", "speed_limit_kmh") and not source.HasField(path):
                    continue
                if path == "labels":
                    merged.labels.update(geofence.labels)
                elif path == "device_ids":
                    merged.device_ids.extend(geofence.device_ids)
                elif path == "boundary":
                    merged.boundary.CopyFrom(geofence.boundary)
                else:
                    setattr(merged, path, getattr(geofence, path))
            problems = validate(merged)
            if problems:
                raise status_error(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"invalid {problems[0][0]}: {problems[0][1]}",
                    field_violations=problems,
                )
            payload = _record(merged).SerializeToString(deterministic=True)
            now = datetime.now(UTC)
            await connection.execute(
                "UPDATE analytics.geofences SET device_ids = $2, payload = $3, etag = $4, update_time = $5 "
                "WHERE geofence_id = $1",
                merged.geofence_id,
                list(merged.device_ids),
                payload,
                _etag(payload),
                now,
            )
            return _with_stored(payload, _etag(payload), row["create_time"], now)

    async def delete(self, geofence_id: str, etag: str) -> None:
        """Remove a geofence; NOT_FOUND when missing, ABORTED for a stale etag."""
        async with self._pool.acquire() as connection, connection.transaction():
            current = await connection.fetchval(
                "SELECT etag FROM analytics.geofences WHERE geofence_id = $1 FOR UPDATE", geofence_id
            )
            if current is None:
                raise not_found(geofence_id)
            if etag and etag != current:
                raise stale(geofence_id)
            await connection.execute("DELETE FROM analytics.geofences WHERE geofence_id = $1", geofence_id)


def _record(geofence: analytics_pb2.Geofence) -> analytics_pb2.Geofence:
    """The stored form: output-only fields cleared."""
    record = analytics_pb2.Geofence()
    record.CopyFrom(geofence)
    for name in ("create_time", "update_time", "etag"):
        record.ClearField(name)
    return record
