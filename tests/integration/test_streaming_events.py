"""mesh.events against the real Kafka-protocol broker: headers, keys, acks and topic creation."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from itsmesh.v1 import events_pb2
from mesh.events import EventPublisher, ensure_topics
from mesh.interceptors import configure_tracing

pytestmark = pytest.mark.integration


async def test_published_event_carries_key_headers_and_payload(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    event = events_pb2.CameraEvent(event_id=str(uuid.uuid4()), camera_id="cam-1")
    provider = configure_tracing("streaming", "test-instance", InMemorySpanExporter(), set_global=False)
    async with EventPublisher(kafka_bootstrap, tracer_provider=provider) as publisher:
        acked = await publisher.publish(unique_topic, "cam-1", event)
        await acked
    consumer = AIOKafkaConsumer(
        unique_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    headers = dict(record.headers)
    assert record.key == b"cam-1"
    assert events_pb2.CameraEvent.FromString(record.value) == event
    assert headers["event-id"] == event.event_id.encode()
    assert headers["content-type"] == b"application/x-protobuf"
    assert headers["schema"] == b"itsmesh.v1.CameraEvent"
    assert headers["produced-at"]
    assert headers["traceparent"].startswith(b"00-")


async def test_ensure_topics_creates_missing_topics_with_their_partition_counts(kafka_bootstrap: str) -> None:
    names = dict(zip((f"test.{uuid.uuid4().hex}" for _ in range(2)), (3, 1), strict=True))
    assert sorted(await ensure_topics(kafka_bootstrap, names)) == sorted(names)
    assert await ensure_topics(kafka_bootstrap, names) == []
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == names
