"""Camera rules: speeding (per passage), wrong-way, stopped vehicle and zone intrusion (per track, per
frame) and congestion (per closed window). Each fires once per track (or per congestion episode) with a
deterministic id, so reprocessing the same frames raises the same violations.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from services.analytics.camera_config import CameraConfig
from services.analytics.geometry import SceneGeometry
from services.analytics.metrics import ClosedWindow
from services.analytics.model import Severity, TrackPoint, Violation, ViolationKind, deterministic_id
from services.analytics.passages import MeasuredPassage, to_datetime
from services.analytics.speed import MS_TO_KMH, fit_velocity
from services.analytics.tracker import Track

EVIDENCE_POINTS = 10
"""Newest observations attached to a violation as its track."""

WRONG_WAY_MIN_SPEED_MPS = 0.5
"""Velocity against the lane below this is treated as standing still (jitter), not wrong-way travel."""

WRONG_WAY_FIT_S = 2.0
"""Span of the observations that confirm travel against the lane."""

WRONG_WAY_SIGMAS = 3.0
"""How many standard errors the speed against the lane must exceed to count."""

STOPPED_FIT_S = 2.0
"""Span of the position fit that decides whether a slow vehicle stands still."""

STOPPED_RESUME_MARGIN_KMH = 2.0
"""A stopped vehicle counts as moving again only this much above the stopped threshold (hysteresis)."""


def evidence_track(track: Track, limit: int = EVIDENCE_POINTS) -> tuple[TrackPoint, ...]:
    """The track's newest observations as evidence points, oldest first."""
    points = list(track.history)[-limit:]
    return tuple(
        TrackPoint(
            time=to_datetime(o.t),
            frame_sequence=o.sequence,
            image_x=o.u_px,
            image_y=o.v_px,
            world_x_m=o.x_m,
            world_y_m=o.y_m,
        )
        for o in points
    )


def _violation(
    config: CameraConfig,
    kind: ViolationKind,
    severity: Severity,
    track: Track | None,
    lane: str,
    start: float,
    end: float,
    detect_time: Any,
    summary: str,
    evidence: Mapping[str, Any],
    *id_extra: object,
) -> Violation:
    track_id = track.track_id if track else ""
    points = evidence_track(track) if track else ()
    return Violation(
        violation_id=deterministic_id(
            "violation", config.camera_id, track_id, kind, *id_extra, to_datetime(start).isoformat()
        ),
        kind=kind,
        severity=severity,
        start_time=to_datetime(start),
        end_time=to_datetime(end),
        detect_time=detect_time,
        camera_id=config.camera_id,
        track_id=track_id,
        lane_id=lane,
        object_class=track.object_class if track else "",
        track=points,
        evidence_frame_sequences=tuple(p.frame_sequence for p in points),
        labels=config.labels,
        summary=summary,
        camera_config_version=config.config_version,
        evidence=MappingProxyType(dict(evidence)),
    )


def speeding(config: CameraConfig, measured: MeasuredPassage, detect_time: Any) -> Violation | None:
    """A speeding violation for a passage above the lane's limit plus the tolerance, else None."""
    rule = config.rules.speeding
    p, fit = measured.passage, measured.fit
    if not rule.enabled or fit is None or p.speed_kmh is None:
        return None
    limit = config.speed_limit_for(p.lane)
    if p.speed_kmh <= limit + rule.tolerance_kmh:
        return None
    excess = p.speed_kmh - limit
    severity: Severity = (
        "critical" if rule.critical_excess_kmh > 0 and excess >= rule.critical_excess_kmh else rule.severity
    )
    lane = f" (lane {p.lane})" if p.lane else ""
    return Violation(
        violation_id=deterministic_id(
            "violation", config.camera_id, p.track_id, "speeding", p.line_id, p.time.isoformat()
        ),
        kind="speeding",
        severity=severity,
        start_time=p.time,
        end_time=p.time,
        detect_time=detect_time,
        camera_id=config.camera_id,
        track_id=p.track_id,
        lane_id=p.lane,
        object_class=p.object_class,
        labels=config.labels,
        summary=f"{p.speed_kmh:.0f} km/h in a {limit:.0f} km/h zone{lane}",
        camera_config_version=config.config_version,
        evidence=MappingProxyType(
            {
                "measured_speed_kmh": p.speed_kmh,
                "speed_limit_kmh": limit,
                "tolerance_kmh": rule.tolerance_kmh,
                "speed_uncertainty_kmh": fit.uncertainty_kmh,
                "sample_count": fit.sample_count,
                "fit_window_s": fit.span_s,
                "passage_id": p.event_id,
            }
        ),
    )


@dataclass(slots=True)
class _TrackState:
    wrong_way_done: bool = False
    stopped_since: float | None = None
    stopped_max_kmh: float = 0.0
    stopped_done: bool = False
    zone_entered: dict[str, float] = field(default_factory=dict)
    zone_done: set[str] = field(default_factory=set)


class TrackRules:
    """Per-track rules evaluated on every frame in which a confirmed track is alive."""

    def __init__(self, config: CameraConfig, geometry: SceneGeometry) -> None:
        self.config = config
        self.geometry = geometry
        self._states: dict[str, _TrackState] = {}
        self._restricted = self._restricted_classes(geometry)

    @staticmethod
    def _restricted_classes(geometry: SceneGeometry) -> frozenset[str]:
        return frozenset(c for z in geometry.zones_of_kind("restricted") for c in z.restricted_classes)

    def reconfigure(self, config: CameraConfig, geometry: SceneGeometry) -> None:
        """New thresholds and zones apply from the next frame; per-track progress is kept."""
        self.config = config
        self.geometry = geometry
        self._restricted = self._restricted_classes(geometry)

    def forget(self, track_ids: set[str]) -> None:
        """Drop the state of ended tracks."""
        for tid in track_ids:
            self._states.pop(tid, None)

    def evaluate(self, track: Track, lane: str, t: float, detect_time: Any) -> list[Violation]:
        """Violations that started at this frame for this track."""
        state = self._states.get(track.track_id)
        if state is None:
            state = self._states[track.track_id] = _TrackState()
        out: list[Violation] = []
        rules = self.config.rules
        if rules.wrong_way.enabled and not state.wrong_way_done and lane:
            v = self._wrong_way(track, lane, t, state, detect_time)
            if v:
                out.append(v)
        if rules.stopped_vehicle.enabled:
            v = self._stopped(track, lane, t, state, detect_time)
            if v:
                out.append(v)
        if rules.zone_intrusion.enabled and track.best_class in self._restricted:
            out.extend(self._intrusions(track, lane, t, state, detect_time))
        return out

    def _wrong_way(
        self, track: Track, lane_id: str, t: float, state: _TrackState, detect_time: Any
    ) -> Violation | None:
        lane = self.geometry.lane(lane_id)
        direction = lane.direction_at(track.x, track.y) if lane else None
        if lane is None or direction is None:
            return None
        ux, uy = direction
        if track.vx * ux + track.vy * uy >= -WRONG_WAY_MIN_SPEED_MPS:
            return None  # the filter says it is not moving against the lane: nothing to check
        # Confirm with a least-squares fit of the position along the lane over the recent observations
        # (from the track's start, so a driver is flagged as soon as it has covered the distance since it
        # came into view). Far from the camera a pixel spans metres, so the slope must also be
        # significant against the known measurement noise; that keeps jittery far-field tracks of legal
        # traffic from being flagged.
        recent = [o for o in track.history if o.t >= t - WRONG_WAY_FIT_S]
        if len(recent) < 3:
            return None
        n = len(recent)
        t_mean = sum(o.t for o in recent) / n
        s = [o.x_m * ux + o.y_m * uy for o in recent]
        s_mean = sum(s) / n
        stt = sum((o.t - t_mean) ** 2 for o in recent)
        if stt <= 0.0:
            return None
        slope = sum((o.t - t_mean) * (si - s_mean) for o, si in zip(recent, s, strict=True)) / stt
        noise = sum(o.r_x * ux * ux + o.r_y * uy * uy for o in recent) / n
        significant = -slope > max(WRONG_WAY_MIN_SPEED_MPS, WRONG_WAY_SIGMAS * math.sqrt(noise / stt))
        since = recent[0].t
        against = -slope * (t - since)
        rule = self.config.rules.wrong_way
        if not significant or against < rule.min_distance_m:
            return None
        state.wrong_way_done = True
        speed = -slope * MS_TO_KMH
        label = lane.direction_label or "the lane direction"
        return _violation(
            self.config,
            "wrong_way",
            rule.severity,
            track,
            lane_id,
            since,
            t,
            detect_time,
            f"wrong-way at {speed:.0f} km/h against {label} (lane {lane_id})",
            {
                "distance_against_m": against,
                "duration_s": t - since,
                "lane_direction_label": lane.direction_label,
                "speed_kmh": speed,
            },
        )

    def _stopped(
        self, track: Track, lane: str, t: float, state: _TrackState, detect_time: Any
    ) -> Violation | None:
        rule = self.config.rules.stopped_vehicle
        speed = track.speed_mps * MS_TO_KMH
        if speed < 2.0 * rule.max_speed_kmh + 5.0:
            # Near standstill the filter's velocity is dominated by jitter; a least-squares fit of the
            # raw positions over a longer window is steadier (about 0.4 km/h at 0.4 m of jitter).
            recent = [o for o in track.history if o.t >= t - STOPPED_FIT_S]
            fit = fit_velocity([o.t for o in recent], [o.x_m for o in recent], [o.y_m for o in recent], t)
            if fit is None or fit.span_s < STOPPED_FIT_S / 2.0:
                return None
            speed = fit.speed_kmh
        if speed >= rule.max_speed_kmh + STOPPED_RESUME_MARGIN_KMH:
            state.stopped_since, state.stopped_max_kmh, state.stopped_done = None, 0.0, False
            return None
        if speed >= rule.max_speed_kmh and state.stopped_since is None:
            return None
        if state.stopped_since is None:
            state.stopped_since = t
        state.stopped_max_kmh = max(state.stopped_max_kmh, speed)
        if state.stopped_done or t - state.stopped_since < rule.min_stopped_s:
            return None
        last = track.last
        if any(self.geometry.inside(z, last.u_px, last.v_px) for z in self.geometry.zones_of_kind("stop")):
            return None
        state.stopped_done = True
        duration = t - state.stopped_since
        return _violation(
            self.config,
            "stopped_vehicle",
            rule.severity,
            track,
            lane,
            state.stopped_since,
            t,
            detect_time,
            f"vehicle stopped for {duration:.0f} s" + (f" in lane {lane}" if lane else ""),
            {
                "stopped_duration_s": duration,
                "max_speed_kmh": state.stopped_max_kmh,
                "world_position": {"x_m": track.x, "y_m": track.y},
            },
        )

    def _intrusions(
        self, track: Track, lane: str, t: float, state: _TrackState, detect_time: Any
    ) -> list[Violation]:
        rule = self.config.rules.zone_intrusion
        cls = track.object_class
        out: list[Violation] = []
        last = track.last
        for zone in self.geometry.zones_of_kind("restricted"):
            if cls not in zone.restricted_classes or zone.zone_id in state.zone_done:
                continue
            if not self.geometry.inside(zone, last.u_px, last.v_px):
                state.zone_entered.pop(zone.zone_id, None)
                continue
            entered = state.zone_entered.setdefault(zone.zone_id, last.t)
            if t - entered < rule.min_dwell_s:
                continue
            state.zone_done.add(zone.zone_id)
            out.append(
                _violation(
                    self.config,
                    "zone_intrusion",
                    rule.severity,
                    track,
                    lane,
                    entered,
                    t,
                    detect_time,
                    f"{cls} in restricted zone {zone.name or zone.zone_id}",
                    {
                        "zone_id": zone.zone_id,
                        "zone_name": zone.name,
                        "dwell_duration_s": t - entered,
                    },
                    zone.zone_id,
                )
            )
        return out


class CongestionMonitor:
    """Raises a congestion violation when the camera's windows over the rule's span are slow and full."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self._recent: deque[ClosedWindow] = deque()
        self._active = False

    def reconfigure(self, config: CameraConfig) -> None:
        """New thresholds apply to the next window."""
        self.config = config

    def on_window(self, window: ClosedWindow, detect_time: Any) -> Violation | None:
        """Feed one closed camera-wide window (lane "" and zone "")."""
        rule = self.config.rules.congestion
        m = window.metric
        span = max(1, rule.window_s // m.window_s)
        if self._recent and self._recent[-1].metric.time.timestamp() + m.window_s != m.time.timestamp():
            self._recent.clear()  # a gap in the data: start over
        self._recent.append(window)
        while len(self._recent) > span:
            self._recent.popleft()
        if not rule.enabled or len(self._recent) < span:
            return None
        speeds = [
            w.tracked_mean_speed_kmh if w.tracked_mean_speed_kmh is not None else w.metric.mean_speed_kmh
            for w in self._recent
        ]
        occupancies = [w.metric.occupancy for w in self._recent]
        if any(s is None for s in speeds) or any(o is None for o in occupancies):
            self._active = False
            return None
        mean_speed = sum(s for s in speeds if s is not None) / span
        occupancy = sum(o for o in occupancies if o is not None) / span
        congested = mean_speed < rule.max_mean_speed_kmh and occupancy > rule.min_occupancy_ratio
        if not congested:
            self._active = False
            return None
        if self._active:
            return None
        self._active = True
        first = self._recent[0].metric
        start = first.time.timestamp()
        level = max(w.metric.congestion_level for w in self._recent)
        count = sum(w.metric.vehicle_count for w in self._recent)
        return _violation(
            self.config,
            "congestion",
            rule.severity,
            None,
            "",
            start,
            m.time.timestamp() + m.window_s,
            detect_time,
            f"congestion: {mean_speed:.0f} km/h at {occupancy:.0%} occupancy over {rule.window_s} s",
            {
                "mean_speed_kmh": mean_speed,
                "occupancy_ratio": occupancy,
                "level": level,
                "window_s": rule.window_s,
                "vehicle_count": count,
            },
        )
