"""The per-camera analytics pipeline: detection frames in, passages, metric windows, violations and
anomalies out. Pure: no I/O, time comes from the frames' capture times (event time) and ``flush(now)``;
the injected clock only stamps ``detect_time``.

One ``CameraPipeline`` per camera; the adapter keeps them in a dict keyed by camera id, feeds frames in
partition order and calls ``flush`` on partition revoke (with a far-future ``now``) and periodically for
idle cameras.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt

from services.analytics.anomalies import AnomalyDetector
from services.analytics.camera_config import CameraConfig
from services.analytics.geometry import SceneGeometry
from services.analytics.homography import CalibrationError, Homography
from services.analytics.metrics import CAMERA, VEHICLE_LENGTH_M, SeriesKey, WindowAggregator
from services.analytics.model import (
    EMPTY_OUTPUT,
    Anomaly,
    Clock,
    DetectionFrame,
    MetricWindow,
    Passage,
    PipelineOutput,
    Violation,
)
from services.analytics.passages import PassageDetector, to_datetime
from services.analytics.rules import CongestionMonitor, TrackRules, speeding
from services.analytics.speed import MS_TO_KMH
from services.analytics.tracker import Detections, Track, Tracker, TrackerSettings

FloatArray = npt.NDArray[np.float64]

PIXEL_NOISE_PX: Final = 1.5
"""Assumed standard deviation of a box's bottom-centre in pixels (detector jitter)."""
MIN_NOISE_M: Final = 0.05
"""Floor of the road-plane measurement noise (near field, where a pixel is a few centimetres)."""
UNCALIBRATED_M_PER_PX: Final = 0.05
"""Pseudo scale used to track a camera without a usable calibration (speeds are then not reported)."""
SEEN_SEQUENCES: Final = 4096
"""Frames remembered to recognise duplicates."""


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """Tunables of the pipeline (defaults suit 10 to 30 fps cameras)."""

    window_s: int = 10
    """Length of a metric window."""
    reorder_delay_s: float = 0.2
    """Frames are held this long (in capture time) so that out-of-order frames are processed in order;
    a frame older than the newest processed one by more than this is dropped."""
    max_track_age_s: float = 1.0
    """A confirmed track survives this long without detections (occlusions up to this length)."""
    min_hits: int = 3
    """Detections before a track is confirmed (and may count, speed or violate)."""
    speed_window_s: float = 1.0
    """Span of the least-squares speed fit around a crossing (centred on it)."""
    max_speed_window_s: float = 2.0
    """At low frame rates the fit window widens up to this until it holds enough observations."""
    window_grace_s: float = 1.0
    """A metric window closes when capture time passes its end by half the widest speed window plus this."""


class CameraPipeline:
    """Tracking, speed, passages, metrics, rules and anomalies of one camera."""

    def __init__(
        self, config: CameraConfig, *, clock: Clock, settings: PipelineSettings | None = None
    ) -> None:
        self._clock = clock
        self._settings = s = settings or PipelineSettings()
        self._tracker = Tracker(TrackerSettings(min_hits=s.min_hits, max_age_s=s.max_track_age_s))
        self._anomalies = AnomalyDetector()
        self._buffer: list[tuple[float, int, DetectionFrame]] = []
        # (sequence, capture time) of recent frames: a duplicate repeats both; a camera whose sequence
        # numbers restart does not.
        self._seen: set[tuple[int, float]] = set()
        self._seen_order: deque[tuple[int, float]] = deque()
        self._newest = -math.inf
        self._last_t = -math.inf
        self._presence: _Presence | None = None
        self.frames_processed = 0
        self.frames_dropped = 0  # duplicate or too-late frames ignored
        self._config = config
        self._compile(config)
        self._passages = PassageDetector(
            config.camera_id, self._geometry, s.speed_window_s, s.max_speed_window_s
        )
        self._track_rules = TrackRules(config, self._geometry)
        self._congestion = CongestionMonitor(config)
        self._windows = WindowAggregator(
            config.camera_id,
            s.window_s,
            (lane.lane_id for lane in config.lanes),
            (z.zone_id for z in config.zones if z.kind == "occupancy"),
            config.speed_limit_for,
        )

    # -- configuration ---------------------------------------------------------------------------------

    def _compile(self, config: CameraConfig) -> None:
        try:
            self._homography = Homography.from_pairs(
                [p.image for p in config.calibration], [p.world for p in config.calibration]
            )
            self.calibrated = True
        except CalibrationError:
            # Without a calibration the tracker runs on scaled pixels: counts are approximate (perspective
            # breaks the constant-velocity model) and speeds are not reported.
            self._homography = Homography(np.diag([UNCALIBRATED_M_PER_PX, UNCALIBRATED_M_PER_PX, 1.0]))
            self.calibrated = False
        self._geometry = SceneGeometry(config, self._homography)
        self._detection_zones = self._geometry.zones_of_kind("detection")
        self._occupancy_zones = self._geometry.zones_of_kind("occupancy")

    @property
    def config(self) -> CameraConfig:
        """The configuration in force."""
        return self._config

    def reconfigure(self, config: CameraConfig) -> None:
        """Apply a new configuration (hot reload); live tracks, open windows and baselines are kept.

        When the calibration changed, live tracks are moved onto the new road plane through the image.
        """
        old = self._homography
        calibration_changed = config.calibration != self._config.calibration
        self._config = config
        self._compile(config)
        if calibration_changed:
            self._remap_tracks(old, self._homography)
        self._passages.geometry = self._geometry
        self._track_rules.reconfigure(config, self._geometry)
        self._congestion.reconfigure(config)
        self._windows.reconfigure(
            (lane.lane_id for lane in config.lanes),
            (z.zone_id for z in config.zones if z.kind == "occupancy"),
            config.speed_limit_for,
        )

    def _remap_tracks(self, old: Homography, new: Homography) -> None:
        back = old.inverse()
        for tr in self._tracker.tracks:
            x1, y1 = new.to_world(*back.to_world(tr.x + tr.vx, tr.y + tr.vy))
            tr.x, tr.y = new.to_world(*back.to_world(tr.x, tr.y))
            tr.vx, tr.vy = x1 - tr.x, y1 - tr.y
            for o in tr.history:
                o.x_m, o.y_m = new.to_world(o.u_px, o.v_px)

    # -- state -----------------------------------------------------------------------------------------

    @property
    def active_tracks(self) -> int:
        """Tracks currently alive (confirmed or tentative)."""
        return len(self._tracker.tracks)

    @property
    def watermark(self) -> datetime | None:
        """Capture time of the newest frame processed, or None before the first."""
        return to_datetime(self._last_t) if self._last_t > -math.inf else None

    @property
    def anomaly_detector(self) -> AnomalyDetector:
        """The camera's baselines (``snapshot``/``restore`` persist them)."""
        return self._anomalies

    # -- input -----------------------------------------------------------------------------------------

    def process(self, frame: DetectionFrame) -> PipelineOutput:
        """Feed one frame (duplicates by sequence and too-late frames are ignored); returns what closed."""
        t = frame.capture_time.timestamp()
        key = (frame.sequence, t)
        if key in self._seen or t <= self._last_t:
            self.frames_dropped += 1
            return EMPTY_OUTPUT
        self._remember(key)
        heapq.heappush(self._buffer, (t, frame.sequence, frame))
        self._newest = max(self._newest, t)
        out = _Collector()
        self._drain(self._newest - self._settings.reorder_delay_s, out)
        return out.result()

    def flush(self, now: datetime) -> PipelineOutput:
        """Release buffered frames, end tracks and close metric windows up to ``now`` (event time).

        Call with a far-future ``now`` (``datetime.max`` in UTC) on partition revoke to finalise everything,
        or with the wall-clock time for a camera that has sent nothing for a while. Frames that arrive later
        than a closed window still update tracks but no longer change that window.
        """
        t = now.timestamp() if now.tzinfo else now.replace(tzinfo=UTC).timestamp()
        out = _Collector()
        self._drain(t, out)
        removed = self._tracker.expire(t)
        ended = {tr.track_id for tr in removed}
        self._advance(t, out, ended)
        self._forget(ended)
        return out.result()

    def _remember(self, key: tuple[int, float]) -> None:
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > SEEN_SEQUENCES:
            self._seen.discard(self._seen_order.popleft())

    def _drain(self, until: float, out: _Collector) -> None:
        while self._buffer and self._buffer[0][0] <= until:
            t, _, frame = heapq.heappop(self._buffer)
            if t <= self._last_t:
                self.frames_dropped += 1
                continue
            self._step(frame, t, out)

    # -- one frame -------------------------------------------------------------------------------------

    def _detections(self, frame: DetectionFrame, t: float) -> Detections:
        boxes = frame.boxes
        if self._detection_zones and boxes:
            boxes = tuple(
                b
                for b in boxes
                if any(self._geometry.inside(z, *b.bottom_centre) for z in self._detection_zones)
            )
        n = len(boxes)
        image = np.array([((b.x1 + b.x2) * 0.5, b.y2) for b in boxes], dtype=np.float64).reshape(n, 2)
        if n:
            world = self._homography.map_many(image)
            scale = self._homography.scale_many(image) * PIXEL_NOISE_PX
        else:
            world = scale = np.empty((0, 2))
        return Detections(
            t=t,
            sequence=frame.sequence,
            x_m=world[:, 0],
            y_m=world[:, 1],
            r_x=scale[:, 0] ** 2 + MIN_NOISE_M**2,
            r_y=scale[:, 1] ** 2 + MIN_NOISE_M**2,
            u_px=image[:, 0],
            v_px=image[:, 1],
            classes=tuple(b.object_class for b in boxes),
            confidences=tuple(b.confidence for b in boxes),
        )

    def _step(self, frame: DetectionFrame, t: float, out: _Collector) -> None:
        det = self._detections(frame, t)
        result = self._tracker.step(det)
        self.frames_processed += 1
        prev_t, self._last_t = self._last_t, t
        for tr in result.assigned:
            self._passages.observe(tr)
        confirmed = [tr for tr in self._tracker.tracks if tr.confirmed]
        u = np.fromiter((tr.last.u_px for tr in confirmed), np.float64, len(confirmed))
        v = np.fromiter((tr.last.v_px for tr in confirmed), np.float64, len(confirmed))
        lanes = self._geometry.lanes_of(u, v) if self._geometry.lanes else [""] * len(confirmed)
        rules = self._config.rules
        if rules.wrong_way.enabled or rules.stopped_vehicle.enabled or rules.zone_intrusion.enabled:
            detect_time = self._clock()
            for tr, lane in zip(confirmed, lanes, strict=True):
                if tr.updated and self.calibrated:
                    out.violations.extend(self._track_rules.evaluate(tr, lane, t, detect_time))
        if self._presence is not None and prev_t > -math.inf:
            p = self._presence
            self._windows.add_interval(prev_t, t, p.occupied, p.speeds, p.present)
        self._presence = self._measure_presence(confirmed, lanes, u, v)
        ended = {tr.track_id for tr in result.removed}
        self._advance(t, out, ended)
        self._forget(ended)

    def _measure_presence(
        self, tracks: list[Track], lanes: list[str], u: FloatArray, v: FloatArray
    ) -> _Presence:
        n = len(tracks)
        x = np.fromiter((tr.x for tr in tracks), np.float64, n)
        y = np.fromiter((tr.y for tr in tracks), np.float64, n)
        speed = np.fromiter((tr.speed_mps for tr in tracks), np.float64, n) * MS_TO_KMH
        half = np.fromiter((VEHICLE_LENGTH_M.get(tr.object_class, 4.5) / 2.0 for tr in tracks), np.float64, n)
        on_loop = np.zeros(n, dtype=np.bool_)
        for line in self._geometry.lines:
            on_loop |= line.distance_m(x, y) <= half
        occupied: dict[SeriesKey, bool] = {CAMERA: bool(on_loop.any())}
        speeds: dict[SeriesKey, tuple[float, int]] = {CAMERA: (float(speed.sum()), n)}
        present: dict[SeriesKey, list[str]] = {}
        if self._geometry.lanes:
            lane_arr = np.asarray(lanes, dtype=object)
            for lane in self._geometry.lanes:
                mask = lane_arr == lane.lane_id
                key = (lane.lane_id, "")
                occupied[key] = bool((on_loop & mask).any())
                speeds[key] = (float(speed[mask].sum()), int(mask.sum()))
        for zone in self._occupancy_zones:
            inside = self._geometry.inside_many(zone, u, v) if n else np.zeros(0, dtype=np.bool_)
            key = ("", zone.zone_id)
            occupied[key] = bool(inside.any())
            speeds[key] = (float(speed[inside].sum()), int(inside.sum()))
            present[key] = [tracks[i].track_id for i in np.flatnonzero(inside).tolist()]
        if not self.calibrated:
            speeds = {}
        return _Presence(occupied, speeds, present)

    def _advance(self, t: float, out: _Collector, ended: set[str]) -> None:
        detect_time: datetime | None = None
        for measured in self._passages.due(t, ended):
            p = measured.passage
            if not self.calibrated:
                measured = replace(measured, passage=replace(p, speed_kmh=None), fit=None)
                p = measured.passage
            out.passages.append(p)
            self._windows.add_passage(p, measured.crossing_t)
            detect_time = detect_time or self._clock()
            violation = speeding(self._config, measured, detect_time)
            if violation is not None:
                out.violations.append(violation)
        s = self._settings
        for closed in self._windows.close_until(t - s.max_speed_window_s / 2.0 - s.window_grace_s):
            m = closed.metric
            out.metrics.append(m)
            detect_time = detect_time or self._clock()
            if not m.lane and not m.zone:
                violation = self._congestion.on_window(closed, detect_time)
                if violation is not None:
                    out.violations.append(violation)
            out.anomalies.extend(
                self._anomalies.on_window(
                    m,
                    self._config.rules.anomaly,
                    time_zone=self._config.time_zone,
                    labels=self._config.labels,
                    detect_time=detect_time,
                )
            )

    def _forget(self, ended: set[str]) -> None:
        if ended:
            self._passages.forget(ended)
            self._track_rules.forget(ended)


@dataclass(slots=True)
class _Presence:
    occupied: dict[SeriesKey, bool]
    speeds: dict[SeriesKey, tuple[float, int]]
    present: dict[SeriesKey, list[str]]


@dataclass(slots=True)
class _Collector:
    passages: list[Passage] = field(default_factory=list)
    metrics: list[MetricWindow] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)

    def result(self) -> PipelineOutput:
        if not (self.passages or self.metrics or self.violations or self.anomalies):
            return EMPTY_OUTPUT
        return PipelineOutput(
            tuple(self.passages), tuple(self.metrics), tuple(self.violations), tuple(self.anomalies)
        )
