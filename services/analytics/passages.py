"""Counting-line crossings of tracks, turned into passages with lane, direction and speed.

A track counts at most once per line, so jitter around the line or a track that coasts through an
occlusion across it cannot double count. The crossing is found between consecutive raw observations and
its time interpolated between their capture times; the passage is emitted once capture time has passed
half the widest speed window after the crossing (or the track ended), so the speed fit is centred on the
crossing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from services.analytics.geometry import LineGeometry, SceneGeometry
from services.analytics.model import Direction, Passage, deterministic_id
from services.analytics.speed import MS_TO_KMH, SpeedFit, fit_around
from services.analytics.tracker import Track


def to_datetime(t: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(t, UTC)


@dataclass(slots=True)
class PendingCrossing:
    """A detected crossing waiting for the observations after it."""

    track: Track
    line: LineGeometry
    t: float
    u_px: float
    v_px: float
    lane: str
    forward: bool


@dataclass(frozen=True, slots=True)
class MeasuredPassage:
    """A passage with the speed fit behind it (the fit feeds the speeding rule's evidence)."""

    passage: Passage
    fit: SpeedFit | None
    crossing_t: float


class PassageDetector:
    """Finds crossings as tracks move and emits passages when their speed can be measured."""

    def __init__(
        self,
        camera_id: str,
        geometry: SceneGeometry,
        speed_window_s: float,
        max_speed_window_s: float | None = None,
    ) -> None:
        self.camera_id = camera_id
        self.geometry = geometry
        self.speed_window_s = speed_window_s
        self.max_speed_window_s = max(speed_window_s, max_speed_window_s or speed_window_s)
        self._counted: dict[str, set[str]] = {}
        self._pending: list[PendingCrossing] = []

    @property
    def pending_count(self) -> int:
        """Crossings waiting for their speed window."""
        return len(self._pending)

    def observe(self, track: Track) -> None:
        """Check the track's latest movement (its last two observations) against every line."""
        h = track.history
        if len(h) < 2 or not self.geometry.lines:
            return
        p0, p1 = h[-2], h[-1]
        counted = self._counted.get(track.track_id)
        for line in self.geometry.lines:
            if counted is not None and line.line_id in counted:
                continue
            c = line.crosses(p0.u_px, p0.v_px, p1.u_px, p1.v_px)
            if c is None:
                continue
            lane = self.geometry.lane_at(c.u_px, c.v_px)
            if line.lane_ids and lane not in line.lane_ids:
                continue
            self._counted.setdefault(track.track_id, set()).add(line.line_id)
            t = p0.t + c.fraction * (p1.t - p0.t)
            self._pending.append(PendingCrossing(track, line, t, c.u_px, c.v_px, lane, c.forward))

    def due(self, watermark: float, ended: set[str]) -> list[MeasuredPassage]:
        """Passages whose speed window has passed ``watermark`` or whose track ``ended``."""
        half = self.max_speed_window_s / 2.0
        out: list[MeasuredPassage] = []
        keep: list[PendingCrossing] = []
        for p in self._pending:
            done = p.track.track_id in ended or watermark >= p.t + half
            if not done:
                keep.append(p)
            elif p.track.confirmed:
                out.append(self._measure(p))
        self._pending = keep
        out.sort(key=lambda m: m.crossing_t)
        return out

    def forget(self, track_ids: set[str]) -> None:
        """Drop the counted-lines memory of ended tracks (after their pending passages were taken)."""
        for tid in track_ids:
            self._counted.pop(tid, None)

    def _measure(self, p: PendingCrossing) -> MeasuredPassage:
        tr = p.track
        h = tr.history
        fit = fit_around(
            [o.t for o in h],
            [o.x_m for o in h],
            [o.y_m for o in h],
            p.t,
            self.speed_window_s,
            max_window_s=self.max_speed_window_s,
        )
        wrong_way = False
        lane = self.geometry.lane(p.lane)
        if fit is not None and lane is not None:
            direction = lane.direction_at(fit.x_m, fit.y_m)
            if direction is not None:
                along = fit.vx_mps * direction[0] + fit.vy_mps * direction[1]
                wrong_way = along < 0.0
                # Speed along the lane: the lateral component of a box's bottom-centre drifts with
                # perspective (its hull changes shape as it approaches) and would only add a bias.
                fit = replace(fit, speed_kmh=abs(along) * MS_TO_KMH)
        direction_name: Direction = "forward" if p.forward else "reverse"
        passage = Passage(
            time=to_datetime(p.t),
            camera_id=self.camera_id,
            event_id=deterministic_id("passage", self.camera_id, tr.track_id, p.line.line_id),
            track_id=tr.track_id,
            line_id=p.line.line_id,
            lane=p.lane,
            direction=direction_name,
            object_class=tr.object_class,
            speed_kmh=fit.speed_kmh if fit else None,
            entry_time=to_datetime(tr.first_time),
            exit_time=to_datetime(tr.last_time),
            wrong_way=wrong_way,
            speed_uncertainty_kmh=fit.uncertainty_kmh if fit else 0.0,
            sample_count=fit.sample_count if fit else 0,
            crossing_x_m=fit.x_m if fit else 0.0,
            crossing_y_m=fit.y_m if fit else 0.0,
            confidence=tr.confidence,
        )
        return MeasuredPassage(passage, fit, p.t)
