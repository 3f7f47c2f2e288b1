"""One trace from a camera's StreamFrames call to the alert it causes: streaming publishes the frame's
detections to Kafka, analytics turns them into a speeding violation and its outbox row, the relay raises
the alert — and the alert service's RaiseAlert span belongs to the trace of the frame's stream.

Real streaming, analytics and alert hosts share this process, so one in-memory exporter sees every span.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from itsmesh.v1 import streaming_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC
from mesh.interceptors import configure_tracing
from services.analytics.testing import SCENE_START, Scene, Vehicle, build_scene, scene_config
from tests.integration.alert_host import MovableClock, alert_host
from tests.integration.analytics_host import (
    Topics,
    analytics_host,
    camera_proto,
    detection_event,
    eventually,
)
from tests.integration.streaming_host import Camera, real_jpeg, streaming_host
from tests.integration.streaming_host import stub as streaming_stub

pytestmark = pytest.mark.integration

STREAM_FRAMES = "itsmesh.v1.StreamingService/StreamFrames"
RAISE_ALERT = "itsmesh.v1.AlertService/RaiseAlert"
JPEG_720P = real_jpeg(width=1280, height=720)  # the resolution camera_proto registers


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span the hosts of this process record (they use the global tracer provider)."""
    exporter = InMemorySpanExporter()
    current = trace.get_tracer_provider()
    if isinstance(current, SdkTracerProvider):  # OpenTelemetry allows one global provider per process
        current.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        configure_tracing("itsmesh-tests", "trace-across-services", exporter, set_global=True)
    yield exporter
    exporter.shutdown()  # spans recorded after this module are dropped, not kept in memory


def _speeding_scene(camera_id: str) -> Scene:
    """One car at 160 km/h (limit 100) crossing the counting line 1.5 s in, with 3.5 s of frames after."""
    config = dataclasses.replace(scene_config(), camera_id=camera_id)
    return build_scene(
        7,
        vehicles=[Vehicle(0, "l1", 160.0, 0.5)],
        config=config,
        duration_s=5.0,
        jitter_px=0.5,
        drop_rate=0.0,
        time_jitter_s=0.0,
        duplicate_rate=0.0,
        swap_rate=0.0,
    )


def _frames(scene: Scene) -> list[streaming_pb2.Frame]:
    """The scene as edge-detected frames captured over the last few seconds."""
    shift = datetime.now(UTC) - timedelta(seconds=scene.duration_s + 2.0) - SCENE_START
    out = []
    for detections in scene.frames:
        frame = streaming_pb2.Frame(
            sequence=detections.sequence,
            jpeg=JPEG_720P,
            detections=detection_event(detections).detections,
            has_edge_detections=True,
        )
        frame.capture_time.FromDatetime(detections.capture_time + shift)
        out.append(frame)
    return out


async def _stream(streaming: Any, scene: Scene) -> None:
    """Register the camera and send the scene over one StreamFrames call, as fast as credit allows."""
    frames = _frames(scene)
    registered = camera_proto(scene.config)
    registered.rules.speeding.enabled = True  # camera_proto carries no rules
    async with streaming_stub(streaming) as client:
        await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=registered))
        camera = Camera(client, scene.config.camera_id)
        await camera.start()
        sent = 0
        while sent < len(frames):
            chunk = frames[sent : sent + max(1, min(camera.credit, 25))]
            await camera.send(*chunk, batch=True)
            sent += len(chunk)
            await camera.read_until(chunk[-1].sequence)
        await camera.close()
    assert camera.rejections() == {}


def _one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, f"expected one {what}, found {[s.name for s in found]}"
    return found[0]


async def test_the_alert_of_a_speeding_car_joins_the_trace_of_its_camera_stream(
    infra: Any, pg: asyncpg.Connection, spans: InMemorySpanExporter
) -> None:
    topics = dataclasses.replace(Topics.fresh(), detections=CAMERA_DETECTIONS_TOPIC)
    scene = _speeding_scene(f"cam-{uuid.uuid4().hex[:10]}")
    async with (
        alert_host(infra, MovableClock()) as alert,
        streaming_host(infra) as streaming,
    ):
        await topics.create(infra.kafka_bootstrap_servers)
        async with analytics_host(
            infra, topics, streaming=streaming, alert_port=alert.grpc_port, idle_flush_s=30.0
        ):
            spans.clear()
            await _stream(streaming, scene)

            def raised() -> list[ReadableSpan]:
                return [
                    s
                    for s in spans.get_finished_spans()
                    if s.name == RAISE_ALERT and s.kind is SpanKind.SERVER
                ]

            async def alert_raised() -> bool:
                return bool(raised())

            await eventually(alert_raised, timeout=25.0, what="RaiseAlert at the alert service")

    finished = spans.get_finished_spans()
    stream = _one(
        [s for s in finished if s.name == STREAM_FRAMES and s.kind is SpanKind.SERVER], "StreamFrames span"
    )
    trace_id = stream.context.trace_id
    server = _one(raised(), "RaiseAlert server span")
    assert server.context.trace_id == trace_id

    # the hops in between, each the parent of the next: Kafka publish → analytics' RaiseAlert call → alert
    by_id = {s.context.span_id: s for s in finished if s.context.trace_id == trace_id}
    assert server.parent is not None
    client = by_id[server.parent.span_id]
    assert (client.name, client.kind) == (RAISE_ALERT, SpanKind.CLIENT)
    assert client.parent is not None
    publish = by_id[client.parent.span_id]
    assert (publish.name, publish.kind) == (f"{CAMERA_DETECTIONS_TOPIC} publish", SpanKind.PRODUCER)
    assert publish.parent is not None
    assert publish.parent.span_id == stream.context.span_id

    # the outbox row keeps the record's context: it points at that publish span
    stored = await pg.fetchval(
        "SELECT o.traceparent FROM analytics.alert_outbox o "
        "JOIN analytics.violations v ON v.violation_id = o.source_id WHERE v.camera_id = $1",
        scene.config.camera_id,
    )
    assert stored.split("-")[1:3] == [f"{trace_id:032x}", f"{publish.context.span_id:016x}"]
