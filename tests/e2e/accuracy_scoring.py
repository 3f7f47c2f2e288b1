"""Scoring analytics' rows against the simulator's ground truth: which passage is which vehicle, and
the speed error statistics (pure)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MATCH_WINDOW_S = 0.5
"""A passage belongs to a vehicle crossing in the same lane and direction at most this far apart."""


class ScaledClock:
    """Wall-clock time running ``factor`` times fast from ``lead_s`` in the past, so a simulation paced
    by it sends frames faster than real time while every capture time stays in the past."""

    def __init__(self, factor: float, lead_s: float) -> None:
        self._origin = time.time()
        self._factor = factor
        self._lead_s = lead_s

    def __call__(self) -> float:
        return self._origin - self._lead_s + self._factor * (time.time() - self._origin)


@dataclass(frozen=True, slots=True)
class Crossing:
    """One counted vehicle of the truth."""

    camera_id: str
    vehicle_id: str
    role: str
    lane: str
    direction: str
    """forward or reverse, as analytics names crossing directions."""
    time: float
    speed_kmh: float
    speeding: bool


@dataclass(frozen=True, slots=True)
class Measured:
    """One passage row."""

    track_id: str
    lane: str
    direction: str
    time: float
    speed_kmh: float | None


@dataclass(frozen=True, slots=True)
class SpeedScore:
    """Measured minus true speed over the matched passages."""

    errors: tuple[float, ...]

    @property
    def mae(self) -> float:
        return sum(abs(e) for e in self.errors) / len(self.errors)

    @property
    def p95(self) -> float:
        """95th percentile of the absolute error (nearest rank)."""
        ranked = sorted(abs(e) for e in self.errors)
        return ranked[max(0, math.ceil(0.95 * len(ranked)) - 1)]

    @property
    def bias(self) -> float:
        return sum(self.errors) / len(self.errors)

    def __str__(self) -> str:
        return f"MAE {self.mae:.2f} km/h, p95 {self.p95:.2f} km/h, bias {self.bias:+.2f} km/h"


def counted_crossings(truth: Iterable[Mapping[str, Any]], camera_id: str) -> list[Crossing]:
    """The vehicles a camera's truth says cross the counting line in time to be counted."""
    return [
        Crossing(
            r["camera_id"],
            r["vehicle_id"],
            r["role"],
            r["lane_id"],
            r["crossing_direction"].lower(),
            r["crossing_time"],
            r["speed_kmh"],
            r["speeding"],
        )
        for r in truth
        if r["type"] == "vehicle" and r["camera_id"] == camera_id and r["counted"]
    ]


def measured(rows: Iterable[Any]) -> list[Measured]:
    """Passage rows (``analytics.vehicle_passages``) as ``Measured``."""
    out = []
    for row in rows:
        moment: datetime = row["time"]
        out.append(
            Measured(row["track_id"], row["lane"], row["direction"], moment.timestamp(), row["speed_kmh"])
        )
    return sorted(out, key=lambda m: m.time)


def by_lane(items: Iterable[Crossing | Measured]) -> Counter[tuple[str, str]]:
    """Counts per (lane, direction)."""
    return Counter((i.lane, i.direction) for i in items)


def match(
    crossings: Sequence[Crossing], passages: Sequence[Measured]
) -> tuple[dict[Crossing, Measured], list[Crossing], list[Measured]]:
    """Each vehicle's passage (same lane and direction, nearest in time within ``MATCH_WINDOW_S``), the
    vehicles without one and the passages left over."""
    found: dict[Crossing, Measured] = {}
    pairs = sorted(
        (abs(p.time - c.time), i, j)
        for i, c in enumerate(crossings)
        for j, p in enumerate(passages)
        if (p.lane, p.direction) == (c.lane, c.direction) and abs(p.time - c.time) <= MATCH_WINDOW_S
    )
    used: set[int] = set()
    for _, i, j in pairs:
        crossing = crossings[i]
        if crossing in found or j in used:
            continue
        found[crossing] = passages[j]
        used.add(j)
    missing = [c for c in crossings if c not in found]
    free = [p for j, p in enumerate(passages) if j not in used]
    return found, missing, free


def speed_score(crossings: Sequence[Crossing], found: Mapping[Crossing, Measured]) -> SpeedScore:
    """Speed errors of every matched passage that has a speed."""
    errors = []
    for crossing in crossings:
        passage = found.get(crossing)
        if passage is not None and passage.speed_kmh is not None:
            errors.append(passage.speed_kmh - crossing.speed_kmh)
    return SpeedScore(tuple(errors))


def speed_report(crossings: Sequence[Crossing], found: Mapping[Crossing, Measured]) -> str:
    """One line per vehicle: true and measured speed (for failure messages)."""
    lines = []
    for c in crossings:
        p = found.get(c)
        got = "no passage" if p is None else f"{p.speed_kmh:.2f}" if p.speed_kmh is not None else "no speed"
        who = f"{c.camera_id} {c.vehicle_id} ({c.role}, {c.lane} {c.direction})"
        lines.append(f"{who}: true {c.speed_kmh:.2f}, got {got}")
    return "\n".join(lines)
