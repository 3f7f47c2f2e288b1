"""Rules over telemetry readings of GPS devices: overspeed and geofence exit/entry.

Each rule fires once per episode: a violation is raised when a device starts breaking the rule and the
rule re-arms only after the device complies again, so a device driving 20 minutes too fast yields one
violation, not one per reading. Geofences are shapely polygons in (longitude, latitude) order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import shapely
from shapely.geometry import Point, Polygon

from services.analytics.model import Clock, Severity, TrackPoint, Violation, deterministic_id

GeofenceKind = Literal["keep_inside", "keep_out", "speed_zone"]

_EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True, slots=True)
class GeofenceRule:
    """One geofence as the telemetry rules see it; ``polygon`` uses (longitude, latitude) vertices."""

    geofence_id: str
    kind: GeofenceKind
    polygon: Polygon
    name: str = ""
    device_ids: frozenset[str] = frozenset()  # empty = every device
    speed_limit_kmh: float | None = None
    tolerance_kmh: float = 0.0
    severity: Severity = "medium"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    disabled: bool = False

    def applies_to(self, device_id: str) -> bool:
        """Whether the geofence is evaluated for this device."""
        return not self.disabled and (not self.device_ids or device_id in self.device_ids)


@dataclass(slots=True)
class _DeviceState:
    overspeed_since: datetime | None = None
    # geofence_id -> whether the device is currently on the wrong side of it (exit/entry raised)
    violating: dict[str, bool] = field(default_factory=dict)


class TelemetryRules:
    """Evaluates overspeed and geofence rules reading by reading, per device."""

    def __init__(
        self,
        geofences: Iterable[GeofenceRule] = (),
        *,
        default_speed_limit_kmh: float | None = None,
        default_tolerance_kmh: float = 0.0,
        overspeed_severity: Severity = "medium",
        clock: Clock,
    ) -> None:
        self._clock = clock
        self._default_limit = default_speed_limit_kmh
        self._default_tolerance = default_tolerance_kmh
        self._overspeed_severity: Severity = overspeed_severity
        self._devices: dict[str, _DeviceState] = {}
        self._geofences: tuple[GeofenceRule, ...] = ()
        self.set_geofences(geofences)

    @property
    def devices_tracked(self) -> int:
        """Devices with rule state."""
        return len(self._devices)

    def set_geofences(self, geofences: Iterable[GeofenceRule]) -> None:
        """Replace the geofences (hot reload); device episode state of kept geofences survives."""
        self._geofences = tuple(geofences)
        for g in self._geofences:
            shapely.prepare(g.polygon)
        known = {g.geofence_id for g in self._geofences}
        for state in self._devices.values():
            for gid in [gid for gid in state.violating if gid not in known]:
                del state.violating[gid]

    def forget(self, device_id: str) -> None:
        """Drop a device's episode state (for example when its partition is revoked)."""
        self._devices.pop(device_id, None)

    def process_reading(
        self,
        device_id: str,
        time: datetime,
        lat: float,
        lon: float,
        speed_kmh: float | None,
        heading: float | None = None,
    ) -> list[Violation]:
        """Evaluate one reading; returns the violations that started with it."""
        state = self._devices.setdefault(device_id, _DeviceState())
        point = Point(lon, lat)
        applicable = [g for g in self._geofences if g.applies_to(device_id)]
        inside = {g.geofence_id: bool(g.polygon.covers(point)) for g in applicable}
        out: list[Violation] = []
        evidence_point = TrackPoint(time=time, latitude_deg=lat, longitude_deg=lon, speed_kmh=speed_kmh)

        for g in applicable:
            if g.kind == "speed_zone":
                continue
            wrong_side = not inside[g.geofence_id] if g.kind == "keep_inside" else inside[g.geofence_id]
            was = state.violating.get(g.geofence_id, False)
            state.violating[g.geofence_id] = wrong_side
            if wrong_side and not was:
                out.append(self._geofence_violation(device_id, time, g, lat, lon, evidence_point))

        limit, tolerance, zone = self._limit_at(applicable, inside)
        if speed_kmh is not None and limit is not None and speed_kmh > limit + tolerance:
            if state.overspeed_since is None:
                state.overspeed_since = time
                out.append(
                    self._overspeed_violation(
                        device_id, time, speed_kmh, limit, tolerance, zone, lat, lon, evidence_point
                    )
                )
        elif speed_kmh is not None:
            state.overspeed_since = None
        del heading  # not used by the current rules; kept in the signature for direction-aware rules
        return out

    def _limit_at(
        self, applicable: list[GeofenceRule], inside: Mapping[str, bool]
    ) -> tuple[float | None, float, GeofenceRule | None]:
        # The strictest limit among the areas the device is in applies; else the default.
        best: tuple[float | None, float, GeofenceRule | None] = (
            self._default_limit,
            self._default_tolerance,
            None,
        )
        for g in applicable:
            if g.speed_limit_kmh is None or not inside[g.geofence_id]:
                continue
            if best[0] is None or g.speed_limit_kmh + g.tolerance_kmh < best[0] + best[1]:
                best = (g.speed_limit_kmh, g.tolerance_kmh, g)
        return best

    def _geofence_violation(
        self,
        device_id: str,
        time: datetime,
        g: GeofenceRule,
        lat: float,
        lon: float,
        point: TrackPoint,
    ) -> Violation:
        kind: Literal["geofence_exit", "geofence_entry"] = (
            "geofence_exit" if g.kind == "keep_inside" else "geofence_entry"
        )
        distance = boundary_distance_m(g.polygon, lat, lon)
        verb = "left" if kind == "geofence_exit" else "entered"
        evidence: dict[str, Any] = {
            "geofence_id": g.geofence_id,
            "geofence_name": g.name,
            "position": {"latitude_deg": lat, "longitude_deg": lon},
            "distance_from_boundary_m": distance,
        }
        return Violation(
            violation_id=deterministic_id("violation", device_id, "", kind, g.geofence_id, time.isoformat()),
            kind=kind,
            severity=g.severity,
            start_time=time,
            end_time=time,
            detect_time=self._clock(),
            device_id=device_id,
            track=(point,),
            labels=g.labels,
            summary=f"{device_id} {verb} geofence {g.name or g.geofence_id} ({distance:.0f} m)",
            evidence=MappingProxyType(evidence),
        )

    def _overspeed_violation(
        self,
        device_id: str,
        time: datetime,
        speed_kmh: float,
        limit: float,
        tolerance: float,
        zone: GeofenceRule | None,
        lat: float,
        lon: float,
        point: TrackPoint,
    ) -> Violation:
        evidence: dict[str, Any] = {
            "measured_speed_kmh": speed_kmh,
            "speed_limit_kmh": limit,
            "tolerance_kmh": tolerance,
            "geofence_id": zone.geofence_id if zone else "",
            "position": {"latitude_deg": lat, "longitude_deg": lon},
        }
        return Violation(
            violation_id=deterministic_id(
                "violation", device_id, "", "telemetry_overspeed", time.isoformat()
            ),
            kind="telemetry_overspeed",
            severity=zone.severity if zone else self._overspeed_severity,
            start_time=time,
            end_time=time,
            detect_time=self._clock(),
            device_id=device_id,
            track=(point,),
            labels=zone.labels if zone else MappingProxyType({}),
            summary=f"{device_id} at {speed_kmh:.0f} km/h where {limit:.0f} km/h applies",
            evidence=MappingProxyType(evidence),
        )


def boundary_distance_m(polygon: Polygon, lat: float, lon: float) -> float:
    """Approximate distance in metres from a (lat, lon) point to the polygon's boundary
    (equirectangular projection around the point: exact enough for geofences of city size)."""
    scale_x = math.cos(math.radians(lat)) * math.pi / 180.0 * _EARTH_RADIUS_M
    scale_y = math.pi / 180.0 * _EARTH_RADIUS_M
    coords = [((x - lon) * scale_x, (y - lat) * scale_y) for x, y in polygon.exterior.coords]
    return float(Polygon(coords).exterior.distance(Point(0.0, 0.0)))
