"""The ``Camera`` the streaming service registers for a simulated camera, consistent with its rendering.

Lanes, zones and the counting line are road-plane shapes projected through the same ``PinholeCamera``
that draws the frames; the calibration pairs are road points and their exact images, so the homography
analytics fits from them is the simulator's own (reprojection error ~0).
"""

from __future__ import annotations

from typing import Final

from google.protobuf import duration_pb2

from itsmesh.v1 import common_pb2
from services.simulator.geometry import PinholeCamera
from services.simulator.scene import APPROACHING, RoadConfig

COUNTING_LINE_ID: Final = "count-1"
NEAR_MARGIN_PX: Final = 2.0
FAR_LANE_Y_M: Final = 160.0
"""Lanes and the detection zone reach this far along the road."""
OCCUPANCY_HALF_LENGTH_M: Final = 5.0
SHOULDER_M: Final = 2.5
SPEEDING_TOLERANCE_KMH: Final = 5.0
STOPPED_MIN_S: Final = 10
WRONG_WAY_MIN_DISTANCE_M: Final = 10.0


def lane_id(lane: int) -> str:
    """Id of a lane in the camera configuration (lane 0 is the outer, right-hand one)."""
    return f"lane-{lane + 1}"


def direction_label(direction: int) -> str:
    """Operator-facing name of a direction of travel."""
    return "towards camera" if direction == APPROACHING else "away from camera"


def near_y(camera: PinholeCamera) -> float:
    """The nearest road distance drawn inside the image (a little above its bottom row)."""
    return camera.road_y_at_row(camera.height_px - NEAR_MARGIN_PX)


def _point(camera: PinholeCamera, x: float, y: float) -> common_pb2.ImagePoint:
    u, v = camera.project(x, y)
    u = min(max(u, 0.0), float(camera.width_px))
    return common_pb2.ImagePoint(x_px=u, y_px=v)


def _polygon(camera: PinholeCamera, x0: float, x1: float, y0: float, y1: float) -> common_pb2.Polygon:
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return common_pb2.Polygon(vertices=[_point(camera, x, y) for x, y in corners])


def counting_line(camera: PinholeCamera, road: RoadConfig) -> common_pb2.LineSegment:
    """The counting line across all lanes at ``road.counting_line_y_m``, drawn left to right in the image.

    With y down, left of a segment drawn left to right is up the image, so a FORWARD crossing is one
    moving down the image: towards the camera.
    """
    y = road.counting_line_y_m
    return common_pb2.LineSegment(start=_point(camera, 0.0, y), end=_point(camera, road.width_m, y))


def calibration_pairs(camera: PinholeCamera, road: RoadConfig) -> list[common_pb2.CalibrationPointPair]:
    """Five road points (lane-edge corners and one inside, no three collinear) with their exact images."""
    w = road.width_m
    world = [(0.0, 25.0), (w, 25.0), (w, 100.0), (0.0, 100.0), (w / 2, 60.0)]
    pairs = []
    for x, y in world:
        u, v = camera.project(x, y)
        pairs.append(
            common_pb2.CalibrationPointPair(
                image_point=common_pb2.ImagePoint(x_px=u, y_px=v),
                world_point=common_pb2.WorldPoint(x_m=x, y_m=y),
            )
        )
    return pairs


def build_camera(
    camera_id: str,
    camera: PinholeCamera,
    road: RoadConfig,
    *,
    fps: float,
    edge_detection: bool,
    location: tuple[float, float] = (52.52, 13.405),
) -> common_pb2.Camera:
    """The full registration of a simulated camera."""
    near, far = near_y(camera), FAR_LANE_Y_M
    lanes = []
    for lane in range(road.lanes):
        x0, x1 = lane * road.lane_width_m, (lane + 1) * road.lane_width_m
        direction = road.lane_direction(lane)
        ordered = (far, near) if direction == APPROACHING else (near, far)
        lanes.append(
            common_pb2.Lane(
                lane_id=lane_id(lane),
                name=f"lane {lane + 1}",
                area=_polygon(camera, x0, x1, near, far),
                centerline=[_point(camera, road.lane_centre_x(lane), y) for y in ordered],
                direction_label=direction_label(direction),
            )
        )
    line_y = road.counting_line_y_m
    zones = [
        common_pb2.Zone(
            zone_id="roadway",
            name="carriageway",
            kind=common_pb2.ZONE_KIND_DETECTION,
            area=_polygon(camera, 0.0, road.width_m, near, far),
        ),
        common_pb2.Zone(
            zone_id="occupancy-1",
            name="occupancy at the counting line",
            kind=common_pb2.ZONE_KIND_OCCUPANCY,
            area=_polygon(
                camera,
                0.0,
                road.width_m,
                line_y - OCCUPANCY_HALF_LENGTH_M,
                line_y + OCCUPANCY_HALF_LENGTH_M,
            ),
        ),
        common_pb2.Zone(
            zone_id="shoulder",
            name="hard shoulder (stopping allowed)",
            kind=common_pb2.ZONE_KIND_STOP,
            area=_polygon(camera, -SHOULDER_M, 0.0, near, 120.0),
        ),
    ]
    rules = common_pb2.RulesConfig(
        speeding=common_pb2.SpeedingRule(
            enabled=True,
            tolerance_kmh=SPEEDING_TOLERANCE_KMH,
            severity=common_pb2.SEVERITY_MEDIUM,
            critical_excess_kmh=40.0,
        ),
        wrong_way=common_pb2.WrongWayRule(
            enabled=True, min_distance_m=WRONG_WAY_MIN_DISTANCE_M, severity=common_pb2.SEVERITY_CRITICAL
        ),
        stopped_vehicle=common_pb2.StoppedVehicleRule(
            enabled=True,
            max_speed_kmh=3.0,
            min_stopped_duration=duration_pb2.Duration(seconds=STOPPED_MIN_S),
            severity=common_pb2.SEVERITY_HIGH,
        ),
    )
    width = camera.width_px
    return common_pb2.Camera(
        camera_id=camera_id,
        name=f"simulated {camera_id}",
        description="itsmesh simulate: synthetic straight road with ground truth",
        location=common_pb2.GeoPoint(latitude_deg=location[0], longitude_deg=location[1]),
        resolution=common_pb2.ImageSize(width_px=width, height_px=camera.height_px),
        fps=fps,
        speed_limit_kmh=road.speed_limit_kmh,
        time_zone="Europe/Berlin",
        edge_detection=edge_detection,
        zones=zones,
        lanes=lanes,
        counting_lines=[
            common_pb2.CountingLine(
                line_id=COUNTING_LINE_ID,
                name="counting line",
                segment=counting_line(camera, road),
                lane_ids=[lane_id(i) for i in range(road.lanes)],
            )
        ],
        calibration=common_pb2.Calibration(point_pairs=calibration_pairs(camera, road)),
        rules=rules,
        labels={"source": "simulator"},
    )
