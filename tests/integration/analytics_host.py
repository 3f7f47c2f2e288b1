"""A real analytics service on loopback for the analytics tests, with topics and a consumer group of its own,
and helpers that publish detection and telemetry events the way the streaming service does."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf import timestamp_pb2
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.polygon import orient

from itsmesh.v1 import analytics_pb2_grpc, common_pb2, events_pb2
from mesh.client import MeshClient
from mesh.events import EventPublisher, ensure_topics
from mesh.host import ServiceHost
from services.analytics.camera_config import CameraConfig
from services.analytics.config import AnalyticsSettings
from services.analytics.model import DetectionFrame
from services.analytics.service import build


@dataclass(frozen=True, slots=True)
class Topics:
    """Per-test topics standing in for camera.detections.v1, telemetry.readings.v1 and camera.events.v1."""

    detections: str
    telemetry: str
    camera_events: str

    @classmethod
    def fresh(cls) -> Topics:
        tag = uuid.uuid4().hex[:10]
        return cls(f"test.det.{tag}", f"test.tel.{tag}", f"test.cam.{tag}")

    async def create(self, bootstrap: str, partitions: int = 3) -> None:
        await ensure_topics(
            bootstrap, {self.detections: partitions, self.telemetry: partitions, self.camera_events: 1}
        )


def address(host: ServiceHost | None) -> list[str]:
    return [f"127.0.0.1:{host.grpc_port}"] if host is not None else []


@asynccontextmanager
async def analytics_host(
    infra: Any,
    topics: Topics,
    *,
    group: str | None = None,
    streaming: ServiceHost | None = None,
    alert_port: int | None = None,
    **overrides: Any,
) -> AsyncIterator[ServiceHost]:
    """An analytics host without auth on a free port; calls streaming/alert at fixed addresses."""
    values: dict[str, Any] = {
        "database_url": infra.database_url,
        "redis_url": infra.redis_url,
        "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
        "bind_host": "127.0.0.1",
        "grpc_port": 0,
        "register_in_discovery": False,
        "metrics_port": None,
        "drain_grace_s": 1.0,
        "require_auth": False,
        "consumer_group": group or f"analytics-{uuid.uuid4().hex[:8]}",
        "outbox_poll_interval_s": 0.2,
        "outbox_backoff_max_s": 1.0,
        "geofence_reload_interval_s": 0.5,
        **overrides,
    }
    endpoints = {
        "streaming": address(streaming),
        "alert": [f"127.0.0.1:{alert_port}"] if alert_port is not None else [],
    }
    spec = build(
        AnalyticsSettings(**values),
        mesh_client=lambda: MeshClient.static(endpoints),
        topics=(topics.detections, topics.telemetry, topics.camera_events),
    )
    host = ServiceHost(spec)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@asynccontextmanager
async def analytics_stub(host: ServiceHost) -> AsyncIterator[analytics_pb2_grpc.AnalyticsServiceStub]:
    """A client of ``host``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield analytics_pb2_grpc.AnalyticsServiceStub(channel)


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def reading(
    device_id: str, sequence: int, moment: datetime, lat: float, lon: float, speed: float
) -> events_pb2.TelemetryReading:
    """A telemetry event with a deterministic event id (as streaming derives it)."""
    return events_pb2.TelemetryReading(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{device_id}/{sequence}")),
        device_id=device_id,
        sequence=sequence,
        reading_time=stamp(moment),
        receive_time=stamp(moment),
        position=common_pb2.GeoPoint(latitude_deg=lat, longitude_deg=lon),
        speed_kmh=speed,
        heading_deg=90.0,
        idempotency_key=f"k{sequence}",
    )


async def publish_all(bootstrap: str, topic: str, events: list[Any], key: Callable[[Any], str]) -> None:
    """Publish ``events`` as the mesh publisher does (event-id, traceparent … headers); wait for acks."""
    async with EventPublisher(bootstrap) as publisher:
        acks = [await publisher.publish(topic, key(e), e) for e in events]
        for ack in acks:
            await ack


async def start_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit ``group``'s offsets at the end of ``topic``, so a consumer of that group skips what was
    published there before (earlier tests or benchmarks sharing the broker)."""
    await ensure_topics(bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        ends = await consumer.end_offsets(assigned)
        await consumer.commit({tp: ends[tp] for tp in assigned})
    finally:
        await consumer.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def camera_proto(config: CameraConfig, width: int = 1280, height: int = 720) -> common_pb2.Camera:
    """A registrable Camera for a pipeline configuration: outlines are clipped to the image, as the
    registry only accepts points inside it."""
    frame = box(0.0, 0.0, float(width - 1), float(height - 1))

    def points(shape: Any) -> list[common_pb2.ImagePoint]:
        return [common_pb2.ImagePoint(x_px=x, y_px=y) for x, y in shape]

    def area(vertices: Any) -> common_pb2.Polygon:
        clipped = orient(Polygon(vertices).intersection(frame).simplify(0.01))
        return common_pb2.Polygon(vertices=points(list(clipped.exterior.coords)[:-1]))

    def centerline(line: Any) -> list[common_pb2.ImagePoint]:
        clipped = LineString(line).intersection(frame)
        coords = list(clipped.coords)
        if Point(coords[0]).distance(Point(line[0])) > Point(coords[-1]).distance(Point(line[0])):
            coords.reverse()  # keep the legal direction of travel
        return points(coords)

    kinds = {"detection": 1, "occupancy": 2, "stop": 3, "restricted": 4}
    return common_pb2.Camera(
        camera_id=config.camera_id,
        name="synthetic three-lane road",
        resolution=common_pb2.ImageSize(width_px=width, height_px=height),
        fps=25.0,
        speed_limit_kmh=config.speed_limit_kmh,
        time_zone="UTC",
        edge_detection=True,
        lanes=[
            common_pb2.Lane(
                lane_id=lane.lane_id,
                area=area(lane.vertices),
                centerline=centerline(lane.centerline),
                direction_label=lane.direction_label,
            )
            for lane in config.lanes
        ],
        counting_lines=[
            common_pb2.CountingLine(
                line_id=line.line_id,
                segment=common_pb2.LineSegment(
                    start=common_pb2.ImagePoint(x_px=line.start[0], y_px=line.start[1]),
                    end=common_pb2.ImagePoint(x_px=line.end[0], y_px=line.end[1]),
                ),
            )
            for line in config.lines
        ],
        zones=[
            common_pb2.Zone(
                zone_id=zone.zone_id,
                name=zone.name,
                kind=kinds.get(zone.kind, 0),  # type: ignore[arg-type]
                area=area(zone.vertices),
                restricted_classes=[
                    common_pb2.ObjectClass.Value(f"OBJECT_CLASS_{c.upper()}") for c in zone.restricted_classes
                ],
            )
            for zone in config.zones
        ],
        calibration=common_pb2.Calibration(
            point_pairs=[
                common_pb2.CalibrationPointPair(
                    image_point=common_pb2.ImagePoint(x_px=p.image[0], y_px=p.image[1]),
                    world_point=common_pb2.WorldPoint(x_m=p.world[0], y_m=p.world[1]),
                )
                for p in config.calibration[:4]  # the corners: the registry refuses near-collinear triples
            ]
        ),
    )


def detection_event(frame: DetectionFrame, config_version: int = 1) -> events_pb2.CameraDetectionEvent:
    """The camera.detections.v1 event streaming publishes for a frame (event id per camera and sequence)."""
    return events_pb2.CameraDetectionEvent(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{frame.camera_id}/{frame.sequence}")),
        camera_id=frame.camera_id,
        sequence=frame.sequence,
        capture_time=stamp(frame.capture_time),
        receive_time=stamp(frame.capture_time),
        frame_size=common_pb2.ImageSize(width_px=1280, height_px=720),
        detection_source=common_pb2.DETECTION_SOURCE_EDGE,
        camera_config_version=config_version,
        detections=[
            common_pb2.Detection(
                object_class=common_pb2.ObjectClass.Value(f"OBJECT_CLASS_{b.object_class.upper()}"),
                confidence=b.confidence,
                box=common_pb2.BoundingBox(
                    left_px=b.x1, top_px=b.y1, width_px=b.x2 - b.x1, height_px=b.y2 - b.y1
                ),
            )
            for b in frame.boxes
        ],
    )
