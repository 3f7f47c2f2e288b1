"""Camera configuration checks: each problem names its field."""

from __future__ import annotations

from itsmesh.v1 import common_pb2
from services.streaming.validation import validate_calibration, validate_camera, validate_polygon


def pt(x: float, y: float) -> common_pb2.ImagePoint:
    return common_pb2.ImagePoint(x_px=x, y_px=y)


def poly(*points: tuple[float, float]) -> common_pb2.Polygon:
    return common_pb2.Polygon(vertices=[pt(x, y) for x, y in points])


def cam(**overrides) -> common_pb2.Camera:
    values = {
        "camera_id": "cam-1",
        "name": "north",
        "resolution": common_pb2.ImageSize(width_px=640, height_px=360),
        "fps": 10.0,
        "speed_limit_kmh": 80.0,
        **overrides,
    }
    return common_pb2.Camera(**values)


def fields(violations) -> list[str]:
    return [f for f, _ in violations]


def pairs(*points: tuple[float, float, float, float]) -> common_pb2.Calibration:
    return common_pb2.Calibration(
        point_pairs=[
            common_pb2.CalibrationPointPair(
                image_point=pt(ix, iy), world_point=common_pb2.WorldPoint(x_m=wx, y_m=wy)
            )
            for ix, iy, wx, wy in points
        ]
    )


def test_a_complete_camera_is_valid():
    lane = common_pb2.Lane(
        lane_id="l1", area=poly((0, 0), (100, 0), (100, 100)), centerline=[pt(50, 0), pt(50, 100)]
    )
    line = common_pb2.CountingLine(
        line_id="c1", segment=common_pb2.LineSegment(start=pt(0, 50), end=pt(100, 50)), lane_ids=["l1"]
    )
    camera = cam(
        lanes=[lane],
        counting_lines=[line],
        calibration=pairs((0, 0, 0, 0), (640, 0, 10, 0), (640, 360, 10, 30), (0, 360, 0, 30)),
        time_zone="Europe/Berlin",
    )
    assert validate_camera(camera) == []


def test_ranges_name_their_fields():
    camera = cam(fps=0, speed_limit_kmh=400, name="", time_zone="Mars/Olympus")
    assert fields(validate_camera(camera)) == [
        "camera.name",
        "camera.fps",
        "camera.speed_limit_kmh",
        "camera.time_zone",
    ]


def test_calibration_needs_four_pairs_without_three_collinear():
    assert fields(validate_calibration(pairs((0, 0, 0, 0)), "c")) == ["c.point_pairs"]
    collinear = pairs((0, 0, 0, 0), (1, 1, 5, 0), (2, 2, 10, 3), (0, 5, 0, 9))
    assert validate_calibration(collinear, "c") == [("c.point_pairs", "three image_points are collinear")]


def test_polygons_must_be_inside_the_image_have_area_and_not_cross_themselves():
    size = (640.0, 360.0)
    assert fields(validate_polygon(poly((0, 0), (10, 0)), size, "a")) == ["a.vertices"]
    assert fields(validate_polygon(poly((0, 0), (700, 0), (0, 10)), size, "a")) == ["a.vertices"]
    assert fields(validate_polygon(poly((0, 0), (5, 5), (10, 10)), size, "a")) == ["a.vertices"]
    bow_tie = poly((0, 0), (10, 10), (10, 0), (0, 20))
    assert validate_polygon(bow_tie, size, "a") == [("a.vertices", "edges cross each other")]


def test_ids_must_be_unique_and_lines_refer_to_known_lanes():
    zone = common_pb2.Zone(
        zone_id="z", kind=common_pb2.ZONE_KIND_DETECTION, area=poly((0, 0), (9, 0), (0, 9))
    )
    line = common_pb2.CountingLine(
        line_id="c", segment=common_pb2.LineSegment(start=pt(0, 0), end=pt(5, 5)), lane_ids=["ghost"]
    )
    assert fields(validate_camera(cam(zones=[zone, zone], counting_lines=[line]))) == [
        "camera.zones[1].zone_id",
        "camera.counting_lines[0].lane_ids",
    ]
