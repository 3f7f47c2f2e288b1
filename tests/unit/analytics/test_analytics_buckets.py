"""Stored sums → TrafficMetricBucket (encode.MetricBucketShape): fields asked for, class filters, p85 across
windows flagged approximate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from itsmesh.v1 import analytics_pb2, common_pb2
from services.analytics.encode import MetricBucketShape
from services.analytics.queries import MetricsRow

_F = analytics_pb2
ALL = frozenset(analytics_pb2.TrafficMetricField.values()) - {0}
START = datetime(2026, 3, 2, 8, 0, 10, 500_000, tzinfo=UTC)


def _row(**fields: Any) -> MetricsRow:
    values: dict[str, Any] = {
        "camera_id": "cam-1",
        "lane": "l1",
        "zone": "",
        "bucket_start": START,
        "vehicle_count": 4,
        "counts_by_class": {"truck": 1, "car": 3},
        "speed_sum": 200.0,
        "speed_weight": 4,
        "p85_sum": 240.0,
        "p85_weight": 4,
        "p85_single": 61.0,
        "occupancy_sum": 0.6,
        "occupancy_n": 2,
        "headway_sum": 12.0,
        "headway_weight": 4,
        "congestion_max": 2,
        "window_count": 1,
    }
    values.update(fields)
    return MetricsRow(**values)


def test_a_single_window_becomes_a_bucket_with_every_field() -> None:
    bucket = MetricBucketShape(10, ALL, ()).bucket(_row())
    assert (bucket.camera_id, bucket.lane_id, bucket.zone_id) == ("cam-1", "l1", "")
    assert (bucket.bucket_start_time.seconds, bucket.bucket_start_time.nanos) == (
        int(START.timestamp()),
        500_000_000,
    )
    assert bucket.bucket.seconds == 10
    assert (bucket.vehicle_count, bucket.flow_vehicles_per_hour) == (4, 1440.0)
    assert [(c.object_class, c.count) for c in bucket.class_counts] == [
        (common_pb2.OBJECT_CLASS_CAR, 3),
        (common_pb2.OBJECT_CLASS_TRUCK, 1),
    ]
    assert (bucket.mean_speed_kmh, bucket.p85_speed_kmh, bucket.occupancy_ratio) == (50.0, 61.0, 0.3)
    assert (bucket.mean_headway_s, bucket.congestion_level, bucket.window_count) == (3.0, 2, 1)
    assert not bucket.approximate


def test_p85_over_several_windows_is_the_count_weighted_mean_and_flagged() -> None:
    bucket = MetricBucketShape(60, ALL, ()).bucket(_row(window_count=6, p85_single=None))
    assert bucket.p85_speed_kmh == 60.0
    assert bucket.approximate


def test_missing_values_stay_unset_and_unasked_fields_are_left_out() -> None:
    empty = _row(vehicle_count=0, counts_by_class={}, speed_weight=0, p85_weight=0, p85_single=None)
    bucket = MetricBucketShape(10, ALL, ()).bucket(empty._replace(occupancy_n=0, headway_weight=0))
    for name in ("mean_speed_kmh", "p85_speed_kmh", "occupancy_ratio", "mean_headway_s"):
        assert not bucket.HasField(name), name
    assert not bucket.class_counts
    only_speed = MetricBucketShape(10, frozenset({_F.TRAFFIC_METRIC_FIELD_MEAN_SPEED}), ()).bucket(_row())
    assert only_speed.mean_speed_kmh == 50.0
    assert (only_speed.vehicle_count, len(only_speed.class_counts), only_speed.congestion_level) == (0, 0, 0)


def test_requested_classes_narrow_the_count_and_the_class_list() -> None:
    shape = MetricBucketShape(10, ALL, ("truck",))
    assert shape.needs_classes
    bucket = shape.bucket(_row())
    assert bucket.vehicle_count == 1
    assert [c.object_class for c in bucket.class_counts] == [common_pb2.OBJECT_CLASS_TRUCK]
    assert not MetricBucketShape(10, frozenset({_F.TRAFFIC_METRIC_FIELD_MEAN_SPEED}), ()).needs_classes


def test_buckets_sharing_a_class_mix_get_equal_but_separate_entries() -> None:
    shape = MetricBucketShape(10, ALL, ())
    response = analytics_pb2.GetTrafficMetricsResponse()
    first = shape.bucket(_row(), response.buckets.add())
    second = shape.bucket(_row(counts_by_class={"truck": 1, "car": 3}), response.buckets.add())
    assert first.class_counts == second.class_counts
    second.class_counts[0].count = 99
    assert first.class_counts[0].count == 3


def _stored(**values: Any) -> tuple[Any, ...]:
    """A queries.metric_windows row (WINDOW_COLUMNS order) of the window ``_row()`` sums up."""
    window: dict[str, Any] = {
        "camera_id": "cam-1",
        "lane": "l1",
        "zone": "",
        "start_us": int(START.timestamp() * 1_000_000),
        "vehicle_count": 4,
        "counts": '{"car": 3, "truck": 1}',
        "mean": 50.0,
        "p85": 61.0,
        "occupancy": 0.3,
        "headway": 3.0,
        "congestion": 2,
    }
    window.update(values)
    return tuple(window.values())


def _summed(**values: Any) -> MetricsRow:
    """The MetricsRow of the single window ``_stored(**values)``, as the grouping query would sum it."""
    (camera_id, lane, zone, start_us, n, counts, mean, p85, occupancy, headway, congestion) = _stored(
        **values
    )
    return _row(
        camera_id=camera_id,
        lane=lane,
        zone=zone,
        bucket_start=datetime.fromtimestamp(start_us / 1_000_000, UTC),
        vehicle_count=n,
        counts_by_class=dict(json.loads(counts)) if counts else {},
        speed_sum=(mean or 0.0) * n,
        speed_weight=n if mean is not None else 0,
        p85_sum=(p85 or 0.0) * n,
        p85_weight=n if p85 is not None else 0,
        p85_single=p85,
        occupancy_sum=occupancy or 0.0,
        occupancy_n=int(occupancy is not None),
        headway_sum=(headway or 0.0) * n,
        headway_weight=n if headway is not None else 0,
        congestion_max=congestion,
    )


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"lane": "", "zone": "z1"},
        {"vehicle_count": 0, "counts": None, "mean": None, "p85": None, "headway": None},
        {"vehicle_count": 0, "counts": None, "mean": 40.0, "headway": 2.0},  # no vehicle: no mean
        {"occupancy": None, "start_us": 1_772_438_400_000_000},
    ],
)
@pytest.mark.parametrize(
    ("fields", "classes"),
    [(ALL, ()), (ALL, ("truck",)), (frozenset({_F.TRAFFIC_METRIC_FIELD_VEHICLE_COUNT}), ("car",))],
)
def test_a_stored_window_reads_as_the_bucket_its_sums_give(
    values: dict[str, Any], fields: frozenset[int], classes: tuple[str, ...]
) -> None:
    shape = MetricBucketShape(10, fields, classes)
    assert shape.window(_stored(**values)) == shape.bucket(_summed(**values))
