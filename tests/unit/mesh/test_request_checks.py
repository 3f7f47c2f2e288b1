"""request_violations: requests protobuf accepts but no handler can use, named by field path."""

from __future__ import annotations

import math

from google.protobuf import duration_pb2, timestamp_pb2

from itsmesh.v1 import alert_pb2, common_pb2, streaming_pb2
from mesh.request_checks import request_violations


def test_a_sane_request_has_no_violations():
    camera = common_pb2.Camera(camera_id="cam-1", name="Main St")
    camera.labels["group"] = "downtown"
    assert request_violations(streaming_pb2.RegisterCameraRequest(camera=camera)) == []


def test_nul_characters_are_named_with_their_path_including_map_keys():
    camera = common_pb2.Camera(camera_id="cam\x00")
    camera.labels["bad\x00key"] = "ok"
    found = request_violations(streaming_pb2.RegisterCameraRequest(camera=camera))
    assert ("camera.camera_id", "must not contain NUL characters") in found
    assert ("camera.labels['bad\\x00key']", "must not contain NUL characters") in found


def test_out_of_range_timestamps_and_durations():
    request = alert_pb2.ListAlertsRequest()
    request.time_range.start_time.CopyFrom(timestamp_pb2.Timestamp(seconds=2**62))
    request.time_range.end_time.CopyFrom(timestamp_pb2.Timestamp(seconds=0, nanos=-5))
    found = dict(request_violations(request))
    assert found["time_range.start_time"] == "must be between 0001-01-01 and 9999-12-31"
    assert found["time_range.end_time"] == "nanos must be between 0 and 999999999"
    assert request_violations(duration_pb2.Duration(seconds=5, nanos=-1))
    assert request_violations(duration_pb2.Duration(seconds=-5, nanos=-1)) == []


def test_unknown_enum_numbers_in_repeated_fields():
    request = alert_pb2.ListAlertsRequest(statuses=[1, -3])
    assert request_violations(request) == [("statuses[1]", "-3 is not a value of AlertStatus")]


def test_nan_and_infinite_floats():
    point = common_pb2.GeoPoint(latitude_deg=math.nan, longitude_deg=math.inf)
    found = request_violations(point)
    assert [path for path, _ in found] == ["latitude_deg", "longitude_deg"]


def test_the_report_is_bounded():
    request = alert_pb2.ListAlertsRequest(statuses=[-1] * 50)
    assert len(request_violations(request, max_reported=5)) == 5
