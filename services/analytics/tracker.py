"""Multi-object tracking on the road plane: a constant-velocity Kalman filter per track and Hungarian
assignment of detections to tracks (scipy's ``linear_sum_assignment``).

Tracking in metres rather than pixels keeps the motion model honest under perspective (a vehicle at
constant speed slows down in the image as it recedes), so a track coasts through an occlusion on its
predicted path. Each axis is filtered separately with closed-form 2x2 algebra in plain floats, which is
several times faster than small numpy matrices per track. Time steps come from capture timestamps, so
dropped frames and irregular intervals are just longer or shorter predictions.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

FloatArray = npt.NDArray[np.float64]

_BIG = 1e9
TRIM_EVERY = 16
"""Steps between trims of the tracks' observation history (trimming every frame costs more than it saves)."""


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """Tunables of the tracker."""

    accel_noise_mps2: float = 2.0
    """Standard deviation of unmodelled acceleration (braking, lane changes)."""
    initial_speed_std_mps: float = 40.0
    """Prior uncertainty of a new track's velocity (unknown direction and speed)."""
    gate_chi2: float = 16.0
    """Squared normalised distance beyond which a detection cannot belong to a track."""
    min_gate_m: float = 1.0
    """Detections this close to a prediction are always admissible (absorbs model error)."""
    min_hits: int = 3
    """Updates before a track is confirmed."""
    max_age_s: float = 1.0
    """A confirmed track is dropped after this long without a detection."""
    tentative_max_age_s: float = 0.3
    """A tentative track is dropped after this long without a detection."""
    history_s: float = 3.0
    """How much raw observation history a track keeps (speed fits, evidence)."""


@dataclass(slots=True)
class Observation:
    """One raw detection assigned to a track."""

    t: float
    x_m: float
    y_m: float
    u_px: float
    v_px: float
    sequence: int
    box_index: int
    r_x: float = 0.0
    """Measurement variance along world x (m²)."""
    r_y: float = 0.0


@dataclass(slots=True, eq=False)
class Track:
    """A tracked object: Kalman state per axis, raw history and class votes."""

    track_id: str
    first_time: float
    last_time: float
    t_state: float
    x: float
    vx: float
    y: float
    vy: float
    # covariance of (x, vx) and of (y, vy): [p00, p01, p11]
    px: list[float]
    py: list[float]
    hits: int = 1
    confirmed: bool = False
    history: deque[Observation] = field(default_factory=deque)
    class_votes: dict[str, int] = field(default_factory=dict)
    best_class: str = "vehicle"
    confidence_sum: float = 0.0
    updated: bool = True
    """Whether the latest step assigned a detection to this track."""

    @property
    def speed_mps(self) -> float:
        """Filtered speed on the road plane."""
        return math.hypot(self.vx, self.vy)

    @property
    def object_class(self) -> str:
        """Majority class over the track's detections (ties: the class that got there first)."""
        return self.best_class

    @property
    def confidence(self) -> float:
        """Mean detector confidence."""
        return self.confidence_sum / self.hits if self.hits else 0.0

    @property
    def last(self) -> Observation:
        """Newest raw observation."""
        return self.history[-1]


@dataclass(slots=True)
class Detections:
    """One frame's detections on the road plane with their measurement noise and image points."""

    t: float
    sequence: int
    x_m: FloatArray
    y_m: FloatArray
    r_x: FloatArray
    """Measurement variance along world x (m²)."""
    r_y: FloatArray
    u_px: FloatArray
    v_px: FloatArray
    classes: tuple[str, ...]
    confidences: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(slots=True)
class StepResult:
    """What one tracker step did."""

    assigned: list[Track]
    """The track of each detection, by detection index (new tracks included)."""
    removed: list[Track]
    """Tracks dropped in this step (lost for too long)."""


def _predict(axis: list[float], dt: float, q: float) -> None:
    p00, p01, p11 = axis
    dt2 = dt * dt
    axis[0] = p00 + dt * (2.0 * p01 + dt * p11) + q * dt2 * dt / 3.0
    axis[1] = p01 + dt * p11 + q * dt2 / 2.0
    axis[2] = p11 + q * dt


class Tracker:
    """Assigns each frame's detections to tracks and keeps the tracks' state."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._q = self.settings.accel_noise_mps2**2
        self.tracks: list[Track] = []
        self._steps = 0

    def predict_to(self, t: float) -> None:
        """Advance every track's state to time ``t`` (no-op for tracks already there)."""
        q = self._q
        for tr in self.tracks:
            dt = t - tr.t_state
            if dt <= 0.0:
                continue
            tr.x += tr.vx * dt
            tr.y += tr.vy * dt
            _predict(tr.px, dt, q)
            _predict(tr.py, dt, q)
            tr.t_state = t

    def expire(self, t: float) -> list[Track]:
        """Drop tracks not updated for too long before ``t``; returns them."""
        s = self.settings
        keep: list[Track] = []
        removed: list[Track] = []
        for tr in self.tracks:
            limit = s.max_age_s if tr.confirmed else s.tentative_max_age_s
            (removed if t - tr.last_time > limit else keep).append(tr)
        self.tracks = keep
        return removed

    def step(self, det: Detections) -> StepResult:
        """Process one frame's detections at time ``det.t`` (must not go backwards)."""
        removed = self.expire(det.t)
        self.predict_to(det.t)
        for tr in self.tracks:
            tr.updated = False
        n_det = len(det)
        assigned: list[Track | None] = [None] * n_det
        if n_det and self.tracks:
            confirmed = [tr for tr in self.tracks if tr.confirmed]
            tentative = [tr for tr in self.tracks if not tr.confirmed]
            free = list(range(n_det))
            for group in (confirmed, tentative):
                if group and free:
                    free = self._match(group, det, free, assigned)
        for j in range(n_det):
            if assigned[j] is None:
                assigned[j] = self._new_track(det, j)
        self._steps += 1
        if self._steps % TRIM_EVERY == 0:
            self._trim(det.t)
        return StepResult([tr for tr in assigned if tr is not None], removed)

    def _match(
        self, group: list[Track], det: Detections, free: list[int], assigned: list[Track | None]
    ) -> list[int]:
        s = self.settings
        cols = np.asarray(free)
        zx, zy = det.x_m[cols], det.y_m[cols]
        rx, ry = det.r_x[cols], det.r_y[cols]
        px = np.fromiter((tr.x for tr in group), np.float64, len(group))
        py = np.fromiter((tr.y for tr in group), np.float64, len(group))
        sx = np.fromiter((tr.px[0] for tr in group), np.float64, len(group))
        sy = np.fromiter((tr.py[0] for tr in group), np.float64, len(group))
        dx = px[:, None] - zx[None, :]
        dy = py[:, None] - zy[None, :]
        cost = dx * dx / (sx[:, None] + rx[None, :]) + dy * dy / (sy[:, None] + ry[None, :])
        near = dx * dx + dy * dy <= s.min_gate_m * s.min_gate_m
        admissible = (cost <= s.gate_chi2) | near
        cost = np.where(admissible, np.minimum(cost, s.gate_chi2), _BIG)
        rows, picked = linear_sum_assignment(cost)
        taken: set[int] = set()
        for i, k in zip(rows.tolist(), picked.tolist(), strict=True):
            if not admissible[i, k]:
                continue
            j = free[k]
            self._update(group[i], det, j)
            assigned[j] = group[i]
            taken.add(j)
        return [j for j in free if j not in taken]

    def _update(self, tr: Track, det: Detections, j: int) -> None:
        zx, zy = float(det.x_m[j]), float(det.y_m[j])
        tr.x, tr.vx = _kalman_update(tr.px, tr.x, tr.vx, zx, float(det.r_x[j]))
        tr.y, tr.vy = _kalman_update(tr.py, tr.y, tr.vy, zy, float(det.r_y[j]))
        tr.last_time = det.t
        tr.hits += 1
        tr.updated = True
        if not tr.confirmed and tr.hits >= self.settings.min_hits:
            tr.confirmed = True
        self._record(tr, det, j, zx, zy)

    def _new_track(self, det: Detections, j: int) -> Track:
        zx, zy = float(det.x_m[j]), float(det.y_m[j])
        v0 = self.settings.initial_speed_std_mps**2
        tr = Track(
            track_id=f"{det.sequence}-{j}",
            first_time=det.t,
            last_time=det.t,
            t_state=det.t,
            x=zx,
            vx=0.0,
            y=zy,
            vy=0.0,
            px=[float(det.r_x[j]), 0.0, v0],
            py=[float(det.r_y[j]), 0.0, v0],
            confirmed=self.settings.min_hits <= 1,
        )
        self._record(tr, det, j, zx, zy)
        self.tracks.append(tr)
        return tr

    @staticmethod
    def _record(tr: Track, det: Detections, j: int, zx: float, zy: float) -> None:
        tr.history.append(
            Observation(
                det.t,
                zx,
                zy,
                float(det.u_px[j]),
                float(det.v_px[j]),
                det.sequence,
                j,
                float(det.r_x[j]),
                float(det.r_y[j]),
            )
        )
        cls = det.classes[j]
        votes = tr.class_votes
        count = votes[cls] = votes.get(cls, 0) + 1
        if len(votes) == 1 or count > votes.get(tr.best_class, 0):
            tr.best_class = cls
        tr.confidence_sum += det.confidences[j]

    def _trim(self, t: float) -> None:
        horizon = t - self.settings.history_s
        for tr in self.tracks:
            h = tr.history
            while len(h) > 2 and h[0].t < horizon:
                h.popleft()


def _kalman_update(p: list[float], pos: float, vel: float, z: float, r: float) -> tuple[float, float]:
    p00, p01, p11 = p
    s = p00 + r
    k0 = p00 / s
    k1 = p01 / s
    innovation = z - pos
    p[0] = (1.0 - k0) * p00
    p[1] = (1.0 - k0) * p01
    p[2] = p11 - k1 * p01
    return pos + k0 * innovation, vel + k1 * innovation
