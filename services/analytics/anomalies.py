"""Flow and speed anomalies against a time-of-week baseline.

For each camera (and lane) and metric, every time-of-week slot (15 min by default, in the camera's local
time) keeps an exponentially weighted mean and variance. A window whose value lies more than the rule's
z-score threshold away from its slot's baseline is an anomaly; a flow that falls to zero right after
traffic, where the baseline expects several vehicles per window, is a FLOW_DROP_TO_ZERO. The standard
deviation used for flow never falls below the Poisson spread of the expected count, so sparse traffic
does not produce anomalies from ordinary randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.analytics.camera_config import AnomalyRule
from services.analytics.model import Anomaly, AnomalyKind, MetricWindow, deterministic_id

Metric = Literal["flow", "speed"]
WEEK_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """Tunables of the baseline."""

    slot_s: int = 900
    """Length of a time-of-week slot."""
    alpha: float = 0.05
    """EWMA weight of a new value (early values get 1/n until 1/n < alpha)."""
    min_samples: int = 20
    """Values a slot must have seen before it judges anything."""
    min_stddev_flow_vph: float = 60.0
    min_stddev_speed_kmh: float = 3.0
    drop_min_expected_count: float = 3.0
    """Expected vehicles per window below which a zero flow is not remarkable."""
    anomalous_weight: float = 0.25
    """Anomalous values still update the baseline, with this share of the usual weight."""


@dataclass(slots=True)
class Baseline:
    """EWMA mean and variance of one slot."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0

    def update(self, x: float, alpha: float, weight: float = 1.0) -> None:
        """Fold in one value."""
        self.n += 1
        a = max(alpha, 1.0 / self.n) * weight
        diff = x - self.mean
        incr = a * diff
        self.mean += incr
        self.var = (1.0 - a) * (self.var + diff * incr)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def time_of_week_slot(moment: datetime, time_zone: str, slot_s: int) -> int:
    """Slot of ``moment`` counted from Monday 00:00 local time."""
    local = moment.astimezone(_zone(time_zone))
    seconds = local.weekday() * 86400 + local.hour * 3600 + local.minute * 60 + local.second
    return seconds // slot_s


class AnomalyDetector:
    """Baselines of one camera's series; feed it every closed window in time order."""

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self._baselines: dict[tuple[str, Metric, int], Baseline] = {}
        self._previous_flow: dict[str, float] = {}

    def on_window(
        self,
        window: MetricWindow,
        rule: AnomalyRule,
        *,
        time_zone: str,
        labels: Mapping[str, str],
        detect_time: datetime,
    ) -> list[Anomaly]:
        """Score a camera or lane window (zone windows are ignored) and learn from it."""
        if window.zone:
            return []
        slot = time_of_week_slot(window.time, time_zone, self.settings.slot_s)
        flow = window.vehicle_count * 3600.0 / window.window_s
        out: list[Anomaly] = []
        found = self._score(window, "flow", flow, slot, rule)
        previous = self._previous_flow.get(window.lane)
        self._previous_flow[window.lane] = flow
        if found is not None:
            out.append(self._anomaly(window, rule, slot, flow, found, labels, detect_time))
        elif flow == 0.0 and previous:
            drop = self._drop(window, slot)
            if drop is not None:
                out.append(self._anomaly(window, rule, slot, flow, drop, labels, detect_time))
        if window.mean_speed_kmh is not None:
            found = self._score(window, "speed", window.mean_speed_kmh, slot, rule)
            if found is not None:
                out.append(
                    self._anomaly(window, rule, slot, window.mean_speed_kmh, found, labels, detect_time)
                )
        if not rule.enabled:
            return []
        return out

    def _score(
        self, window: MetricWindow, metric: Metric, value: float, slot: int, rule: AnomalyRule
    ) -> tuple[AnomalyKind, Baseline, float, float] | None:
        s = self.settings
        baseline = self._baselines.setdefault((window.lane, metric, slot), Baseline())
        found: tuple[AnomalyKind, Baseline, float, float] | None = None
        if baseline.n >= s.min_samples:
            std = self._stddev(baseline, metric, window.window_s)
            z = (value - baseline.mean) / std
            if abs(z) > rule.z_score_threshold:
                high: AnomalyKind = "flow_high" if metric == "flow" else "speed_high"
                low: AnomalyKind = "flow_low" if metric == "flow" else "speed_low"
                found = (high if z > 0 else low, Baseline(baseline.mean, baseline.var, baseline.n), std, z)
        baseline.update(value, s.alpha, s.anomalous_weight if found else 1.0)
        return found

    def _stddev(self, baseline: Baseline, metric: Metric, window_s: int) -> float:
        s = self.settings
        if metric == "speed":
            return max(math.sqrt(max(baseline.var, 0.0)), s.min_stddev_speed_kmh)
        expected = max(baseline.mean, 0.0) * window_s / 3600.0
        poisson = math.sqrt(expected) * 3600.0 / window_s
        return max(math.sqrt(max(baseline.var, 0.0)), poisson, s.min_stddev_flow_vph)

    def _drop(self, window: MetricWindow, slot: int) -> tuple[AnomalyKind, Baseline, float, float] | None:
        s = self.settings
        baseline = self._baselines.get((window.lane, "flow", slot))
        if baseline is None or baseline.n < s.min_samples:
            return None
        if baseline.mean * window.window_s / 3600.0 < s.drop_min_expected_count:
            return None
        std = self._stddev(baseline, "flow", window.window_s)
        return ("flow_drop_to_zero", baseline, std, -baseline.mean / std)

    def _anomaly(
        self,
        window: MetricWindow,
        rule: AnomalyRule,
        slot: int,
        value: float,
        found: tuple[AnomalyKind, Baseline, float, float],
        labels: Mapping[str, str],
        detect_time: datetime,
    ) -> Anomaly:
        kind, baseline, std, z = found
        unit = "km/h" if kind.startswith("speed") else "veh/h"
        where = f" lane {window.lane}" if window.lane else ""
        return Anomaly(
            anomaly_id=deterministic_id(
                "anomaly", window.camera_id, window.lane, kind, window.time.isoformat()
            ),
            kind=kind,
            severity=rule.severity,
            camera_id=window.camera_id,
            lane_id=window.lane,
            window_start_time=window.time,
            window_s=window.window_s,
            observed_value=value,
            baseline_mean=baseline.mean,
            baseline_stddev=std,
            z_score=z,
            z_score_threshold=rule.z_score_threshold,
            time_of_week_slot=slot,
            detect_time=detect_time,
            summary=(
                f"{kind.replace('_', ' ')} on {window.camera_id}{where}: {value:.0f} {unit} "
                f"vs usual {baseline.mean:.0f} ± {std:.0f}"
            ),
            labels=labels,
        )

    def snapshot(self) -> dict[str, Any]:
        """The learned baselines as JSON-compatible data (to persist across restarts)."""
        return {
            "baselines": [
                [lane, metric, slot, b.mean, b.var, b.n]
                for (lane, metric, slot), b in self._baselines.items()
            ]
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Load baselines saved by ``snapshot``."""
        for lane, metric, slot, mean, var, n in data.get("baselines", []):
            self._baselines[(str(lane), metric, int(slot))] = Baseline(float(mean), float(var), int(n))
