"""The ground truth of a run as JSON lines, so analytics can be scored against it.

One JSON object per line, each with a ``type``:

- ``run``: run id, ``start_time`` (Unix seconds of scene time 0), ``sequence_base`` (added to every
  sequence below to get the sequence sent), options (seed, duration, rates...);
- ``camera``: camera id, world→image ``homography`` (3x3, road metres → pixels), counting line, lanes,
  frame statistics (captured count; dropped, duplicated and swapped plan sequences);
- ``vehicle``: per vehicle and camera: class, role, lane (``lane_id`` where it crosses the line), legal
  direction, ``crossing_direction`` (FORWARD/REVERSE as common.proto's CountingLine defines it),
  ``wrong_way``, ``crossing_time`` (Unix seconds; null when it does not cross during the run),
  ``counted`` (crossed at least 1 s before the end, so a tracker can see it), ``speed_kmh`` at the line,
  ``speeding`` (above the limit + tolerance), the stop, lane change and occlusion intervals when it has
  them, and its entry/exit times;
- ``fleet``: the geofence (lat/lon vertices) and the devices' speed limit;
- ``device_event``: ``overspeed`` (start, end, max speed, limit) or ``geofence_exit`` (time, geofence).

Times are Unix seconds (floats) so they compare directly with frame capture times.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from itsmesh.v1 import common_pb2
from services.simulator.camera_config import (
    COUNTING_LINE_ID,
    SPEEDING_TOLERANCE_KMH,
    direction_label,
    lane_id,
)
from services.simulator.frames import ScheduleStats
from services.simulator.geometry import PinholeCamera
from services.simulator.gps import GEOFENCE_ID, Fleet
from services.simulator.scene import Scene, Vehicle

COUNTED_MARGIN_S: Final = 1.0


def line_side(segment: common_pb2.LineSegment, point: tuple[float, float]) -> float:
    """Negative on the left-hand side of the segment (looking from start to end, y down), positive right."""
    sx, sy = segment.start.x_px, segment.start.y_px
    dx, dy = segment.end.x_px - sx, segment.end.y_px - sy
    return dx * (point[1] - sy) - dy * (point[0] - sx)


def crossing_direction(
    segment: common_pb2.LineSegment, before: tuple[float, float], after: tuple[float, float]
) -> str:
    """FORWARD when moving from the left-hand side to the right-hand side, else REVERSE."""
    return "FORWARD" if line_side(segment, before) < 0 <= line_side(segment, after) else "REVERSE"


@dataclass(frozen=True, slots=True)
class CameraTruth:
    """What a camera's truth records need besides the scene."""

    camera_id: str
    scene: Scene
    camera: PinholeCamera
    line: common_pb2.LineSegment
    stats: ScheduleStats


def _stop_interval(vehicle: Vehicle) -> tuple[float, float] | None:
    for segment in vehicle.segments:
        if segment.v0 == 0.0 and segment.a == 0.0 and segment.t1 > segment.t0:
            return segment.t0, segment.t1
    return None


def vehicle_record(truth: CameraTruth, vehicle: Vehicle, start_time: float) -> dict[str, Any]:
    """The ground-truth record of one vehicle on one camera."""
    scene, camera = truth.scene, truth.camera
    road = scene.road
    crossing = vehicle.crossing_time(road.counting_line_y_m)
    duration = scene.config.duration_s
    if crossing is not None and crossing >= duration:
        crossing = None
    record: dict[str, Any] = {
        "type": "vehicle",
        "camera_id": truth.camera_id,
        "vehicle_id": vehicle.vehicle_id,
        "class": common_pb2.ObjectClass.Name(vehicle.kind.object_class),
        "role": vehicle.role,
        "entry_lane_id": lane_id(vehicle.lane),
        "direction": direction_label(vehicle.direction),
        "wrong_way": not vehicle.legal,
        "line_id": COUNTING_LINE_ID,
        "entry_time": start_time + vehicle.entry_s,
        "exit_time": start_time + vehicle.exit_s,
        "crossing_time": None,
        "counted": False,
        "lane_id": None,
        "crossing_direction": None,
        "speed_kmh": None,
        "speeding": False,
    }
    if crossing is not None:
        x, y = vehicle.position(crossing, road)
        before = camera.project(*vehicle.position(crossing - 0.2, road))
        after = camera.project(*vehicle.position(crossing + 0.2, road))
        speed = vehicle.speed_kmh(crossing)
        record.update(
            crossing_time=start_time + crossing,
            counted=crossing <= duration - COUNTED_MARGIN_S,
            lane_id=lane_id(road.lane_at(x)),
            crossing_direction=crossing_direction(truth.line, before, after),
            speed_kmh=round(speed, 3),
            speeding=speed > road.speed_limit_kmh + SPEEDING_TOLERANCE_KMH,
            crossing_position_m=[round(x, 3), round(y, 3)],
        )
    stop = _stop_interval(vehicle)
    if stop is not None:
        x, y = vehicle.position(stop[0], road)
        record["stopped"] = {
            "start_time": start_time + stop[0],
            "end_time": start_time + stop[1],
            "position_m": [round(x, 3), round(y, 3)],
        }
    if vehicle.lane_change is not None:
        change = vehicle.lane_change
        record["lane_change"] = {
            "from_lane_id": lane_id(change.from_lane),
            "to_lane_id": lane_id(change.to_lane),
            "start_time": start_time + change.start_s,
            "end_time": start_time + change.start_s + change.duration_s,
        }
    if vehicle.occluded is not None:
        record["occluded"] = [start_time + vehicle.occluded[0], start_time + vehicle.occluded[1]]
    return record


def camera_records(truth: CameraTruth, start_time: float) -> Iterator[dict[str, Any]]:
    """The camera record, then one record per vehicle."""
    road = truth.scene.road
    yield {
        "type": "camera",
        "camera_id": truth.camera_id,
        "homography": truth.camera.homography.tolist(),
        "resolution": [truth.camera.width_px, truth.camera.height_px],
        "speed_limit_kmh": road.speed_limit_kmh,
        "counting_line": {
            "line_id": COUNTING_LINE_ID,
            "y_m": road.counting_line_y_m,
            "start_px": [truth.line.start.x_px, truth.line.start.y_px],
            "end_px": [truth.line.end.x_px, truth.line.end.y_px],
        },
        "lanes": [
            {"lane_id": lane_id(i), "direction": direction_label(road.lane_direction(i))}
            for i in range(road.lanes)
        ],
        "frames": {
            "captured": truth.stats.captured,
            "dropped": truth.stats.dropped,
            "duplicated": truth.stats.duplicated,
            "swapped": truth.stats.swapped,
        },
    }
    for vehicle in truth.scene.vehicles:
        if vehicle.entry_s < truth.scene.config.duration_s:
            yield vehicle_record(truth, vehicle, start_time)


def fleet_records(fleet: Fleet, start_time: float) -> Iterator[dict[str, Any]]:
    """The fleet record, then one record per device event."""
    yield {
        "type": "fleet",
        "devices": [d.device_id for d in fleet.devices],
        "speed_limit_kmh": fleet.config.speed_limit_kmh,
        "geofence": {"geofence_id": GEOFENCE_ID, "vertices": [list(p) for p in fleet.geofence()]},
    }
    for event in fleet.events:
        record: dict[str, Any] = {
            "type": "device_event",
            "device_id": event.device_id,
            "event": event.kind,
            "time": start_time + event.start_s,
        }
        if event.end_s is not None:
            record["end_time"] = start_time + event.end_s
        if event.max_speed_kmh is not None:
            record["max_speed_kmh"] = round(event.max_speed_kmh, 3)
            record["limit_kmh"] = event.limit_kmh
        if event.geofence_id is not None:
            record["geofence_id"] = event.geofence_id
        yield record


def write_truth(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records as JSON lines (replacing the file); returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            count += 1
    return count


def read_truth(path: Path) -> list[dict[str, Any]]:
    """The records of a truth file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
