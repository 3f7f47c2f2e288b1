"""Traffic metrics per fixed window (10 s by default) for the camera, each lane and each occupancy zone.

Counts, classes, mean and 85th-percentile speed and headway come from passages (by crossing time).
Occupancy emulates an induction loop at the counting lines: the share of observed time in which some
vehicle's position was within half its length of a line (a vehicle of length L at speed v covers a
point for L/v seconds). The congestion level also uses the space-mean speed of all tracked vehicles,
which stays defined in a standstill when nobody crosses a line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from services.analytics.model import MetricWindow, Passage
from services.analytics.passages import to_datetime

SeriesKey = tuple[str, str]
"""(lane, zone); ("", "") is the whole camera."""
CAMERA: SeriesKey = ("", "")

VEHICLE_LENGTH_M: Mapping[str, float] = MappingProxyType(
    {
        "car": 4.5,
        "van": 5.5,
        "truck": 12.0,
        "bus": 12.0,
        "motorcycle": 2.2,
        "bicycle": 1.8,
        "pedestrian": 0.6,
    }
)
"""Typical lengths for the loop emulation; other classes count as 4.5 m."""

MAX_OBSERVED_GAP_S = 1.0
"""A gap between frames longer than this counts as unobserved time (camera stall), not as empty road."""


def congestion_level(mean_speed_kmh: float | None, occupancy: float | None, limit_kmh: float) -> int:
    """CongestionLevel number: 1 free flow … 5 standstill; 1 on an empty road, 0 without observations."""
    if occupancy is None:
        return 0
    if mean_speed_kmh is None:
        return 1 if occupancy < 0.05 else 5
    ratio = mean_speed_kmh / limit_kmh if limit_kmh > 0 else 1.0
    if mean_speed_kmh < 5.0:
        level = 5
    elif ratio < 0.25:
        level = 4
    elif ratio < 0.5:
        level = 3
    elif ratio < 0.75:
        level = 2
    else:
        level = 1
    if occupancy >= 0.6:
        level = max(level, 4)
    elif occupancy >= 0.35:
        level = max(level, 2)
    return level


@dataclass(slots=True)
class _Series:
    tracks: set[str] = field(default_factory=set)
    classes: dict[str, int] = field(default_factory=dict)
    speeds: list[float] = field(default_factory=list)
    crossings: list[float] = field(default_factory=list)
    occupied_s: float = 0.0
    observed_s: float = 0.0
    tracked_speed_sum: float = 0.0
    tracked_speed_n: int = 0
    present: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A finished window of one series, with the extra figures the rules use."""

    metric: MetricWindow
    tracked_mean_speed_kmh: float | None
    """Mean speed of every tracked vehicle sampled per frame (space-mean)."""
    observed_s: float


class WindowAggregator:
    """Accumulates passages and per-frame presence into windows and closes them in time order."""

    def __init__(
        self,
        camera_id: str,
        window_s: int,
        lane_ids: Iterable[str],
        zone_ids: Iterable[str],
        speed_limit_for: Callable[[str], float],
    ) -> None:
        self.camera_id = camera_id
        self.window_s = window_s
        self._keys: tuple[SeriesKey, ...] = (
            CAMERA,
            *((lane, "") for lane in lane_ids),
            *(("", zone) for zone in zone_ids),
        )
        self._speed_limit_for = speed_limit_for
        self._windows: dict[int, dict[SeriesKey, _Series]] = {}
        self._closed_before = -math.inf

    def reconfigure(
        self, lane_ids: Iterable[str], zone_ids: Iterable[str], speed_limit_for: Callable[[str], float]
    ) -> None:
        """New lanes/zones apply from the next observations on; open windows keep what they have."""
        self._keys = (CAMERA, *((lane, "") for lane in lane_ids), *(("", zone) for zone in zone_ids))
        self._speed_limit_for = speed_limit_for

    @property
    def open_windows(self) -> int:
        """Windows not closed yet."""
        return len(self._windows)

    def _start(self, t: float) -> int:
        return math.floor(t / self.window_s) * self.window_s

    def _series(self, start: int) -> dict[SeriesKey, _Series] | None:
        if start < self._closed_before:
            return None  # late data for a window already written
        window = self._windows.get(start)
        if window is None:
            window = self._windows[start] = {key: _Series() for key in self._keys}
        return window

    def add_passage(self, passage: Passage, t: float) -> None:
        """Count a passage in the window of its crossing time (once per track per series)."""
        window = self._series(self._start(t))
        if window is None:
            return
        keys = [CAMERA] + ([(passage.lane, "")] if passage.lane else [])
        for key in keys:
            series = window.get(key)
            if series is None or passage.track_id in series.tracks:
                continue
            series.tracks.add(passage.track_id)
            series.classes[passage.object_class] = series.classes.get(passage.object_class, 0) + 1
            if passage.speed_kmh is not None:
                series.speeds.append(passage.speed_kmh)
            series.crossings.append(t)

    def add_interval(
        self,
        t0: float,
        t1: float,
        occupied: Mapping[SeriesKey, bool],
        speeds: Mapping[SeriesKey, tuple[float, int]],
        present: Mapping[SeriesKey, Iterable[str]],
    ) -> None:
        """Account the time from t0 to t1 (the state observed at t0 held until the next frame).

        ``occupied`` says whether a series' loop was covered, ``speeds`` gives (sum km/h, n) of tracked
        vehicles sampled at t0, ``present`` the track ids seen in a series (zone counts).
        """
        if t1 <= t0:
            return
        t1 = min(t1, t0 + MAX_OBSERVED_GAP_S)
        start = self._start(t0)
        first = True
        while t0 < t1:
            end = min(t1, start + self.window_s)
            window = self._series(start)
            if window is not None:
                span = end - t0
                for key, series in window.items():
                    series.observed_s += span
                    if occupied.get(key, False):
                        series.occupied_s += span
                    if first:
                        s, n = speeds.get(key, (0.0, 0))
                        series.tracked_speed_sum += s
                        series.tracked_speed_n += n
                        series.present.update(present.get(key, ()))
            first = False
            t0 = end
            start += self.window_s

    def close_until(self, t: float) -> list[ClosedWindow]:
        """Close every window that ends at or before ``t``, oldest first."""
        out: list[ClosedWindow] = []
        for start in sorted(self._windows):
            if start + self.window_s > t:
                break
            window = self._windows.pop(start)
            self._closed_before = start + self.window_s
            lane_rows: list[ClosedWindow] = []
            rows: list[ClosedWindow] = []
            for key, series in window.items():
                row = self._row(start, key, series)
                (lane_rows if key[0] else rows).append(row)
            camera_row = rows[0]
            if lane_rows:
                camera_row = self._with_lane_occupancy(camera_row, lane_rows)
            out.append(camera_row)
            out.extend(lane_rows)
            out.extend(rows[1:])
        return out

    def _row(self, start: int, key: SeriesKey, s: _Series) -> ClosedWindow:
        lane, zone = key
        speeds = s.speeds
        mean_speed = float(sum(speeds) / len(speeds)) if speeds else None
        p85 = float(np.percentile(speeds, 85)) if speeds else None
        crossings = sorted(s.crossings)
        headway = (crossings[-1] - crossings[0]) / (len(crossings) - 1) if len(crossings) >= 2 else None
        occupancy = s.occupied_s / s.observed_s if s.observed_s > 0 else None
        tracked = s.tracked_speed_sum / s.tracked_speed_n if s.tracked_speed_n else None
        count = len(s.tracks) if not zone else len(s.present)
        classes = dict(s.classes)
        metric = MetricWindow(
            time=to_datetime(start),
            camera_id=self.camera_id,
            lane=lane,
            zone=zone,
            window_s=self.window_s,
            vehicle_count=count,
            counts_by_class=MappingProxyType(classes),
            mean_speed_kmh=mean_speed if not zone else tracked,
            p85_speed_kmh=p85,
            occupancy=occupancy,
            headway_s=headway,
            congestion_level=congestion_level(
                tracked if tracked is not None else mean_speed, occupancy, self._speed_limit_for(lane)
            ),
        )
        return ClosedWindow(metric, tracked, s.observed_s)

    def _with_lane_occupancy(self, camera: ClosedWindow, lanes: list[ClosedWindow]) -> ClosedWindow:
        # The camera's occupancy is the mean over its lanes (one loop per lane), as traffic engineers
        # report it, rather than "any lane occupied", which saturates on multi-lane roads.
        values = [w.metric.occupancy for w in lanes if w.metric.occupancy is not None]
        if not values:
            return camera
        occupancy = sum(values) / len(values)
        m = camera.metric
        speed = camera.tracked_mean_speed_kmh
        level = congestion_level(
            speed if speed is not None else m.mean_speed_kmh, occupancy, self._speed_limit_for("")
        )
        metric = replace(m, occupancy=occupancy, congestion_level=level)
        return ClosedWindow(metric, camera.tracked_mean_speed_kmh, camera.observed_s)
