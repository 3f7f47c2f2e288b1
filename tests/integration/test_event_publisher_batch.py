"""EventPublisher.publish_many against the real Kafka-protocol broker: headers on every record, one span,
per-record acknowledgements and a refused record failing only itself and what follows it."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from itsmesh.v1 import events_pb2
from mesh.events import EventPublisher, PublishError, ensure_topics
from mesh.interceptors import configure_tracing

pytestmark = pytest.mark.integration


async def _consume(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"test-{uuid.uuid4().hex}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[ConsumerRecord[bytes, bytes]] = []
        while len(found) < count:
            batches = await consumer.getmany(timeout_ms=5000)
            assert batches, f"only {len(found)} of {count} records arrived"
            for records in batches.values():
                found += records
        return found
    finally:
        await consumer.stop()


def _event(camera_id: str, sequence: int) -> events_pb2.CameraDetectionEvent:
    return events_pb2.CameraDetectionEvent(event_id=str(uuid.uuid4()), camera_id=camera_id, sequence=sequence)


async def test_every_record_of_a_batch_carries_its_own_headers_under_one_span(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = configure_tracing("streaming", "test-instance", exporter, set_global=False)
    await ensure_topics(kafka_bootstrap, {unique_topic: 3})
    events = [_event("cam-a" if i % 2 else "cam-b", i) for i in range(6)]
    camera_event = events_pb2.CameraEvent(event_id=str(uuid.uuid4()), camera_id="cam-a")
    async with EventPublisher(kafka_bootstrap, tracer_provider=provider) as publisher:
        acks = await publisher.publish_many(
            unique_topic, [(e.camera_id, e) for e in events] + [("cam-a", camera_event)]
        )
        assert len(acks) == 7
        for acked in acks:
            await acked
    provider.force_flush()  # type: ignore[attr-defined]
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert len(spans) == 1
    assert spans[0].attributes is not None
    assert spans[0].attributes["messaging.batch.message_count"] == 7
    trace_id = f"{spans[0].context.trace_id:032x}".encode()

    found = await _consume(kafka_bootstrap, unique_topic, 7)
    assert len(found) == 7
    by_id = {dict(r.headers)["event-id"]: r for r in found}
    assert set(by_id) == {e.event_id.encode() for e in [*events, camera_event]}
    for message in [*events, camera_event]:
        record = by_id[message.event_id.encode()]
        headers = dict(record.headers)
        assert record.key == message.camera_id.encode()
        assert record.value == message.SerializeToString()
        assert headers["content-type"] == b"application/x-protobuf"
        assert headers["schema"] == f"itsmesh.v1.{type(message).__name__}".encode()
        assert headers["produced-at"]
        assert headers["traceparent"].split(b"-")[1] == trace_id
    # Keyed like publish: one camera's records share a partition, in the order given.
    for camera_id in ("cam-a", "cam-b"):
        mine = [
            r for r in found if r.key == camera_id.encode() and r.value != camera_event.SerializeToString()
        ]
        assert len({r.partition for r in mine}) == 1
        sequences = [events_pb2.CameraDetectionEvent.FromString(r.value).sequence for r in mine]
        assert sequences == sorted(sequences)


async def test_batch_and_single_publications_of_a_key_land_on_the_same_partition(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    await ensure_topics(kafka_bootstrap, {unique_topic: 6})
    async with EventPublisher(kafka_bootstrap) as publisher:
        await publisher.publish_and_wait(unique_topic, "cam-x", _event("cam-x", 1))  # the producer partitions
        for acked in await publisher.publish_many(unique_topic, [("cam-x", _event("cam-x", 2))] * 2):
            await acked
        await publisher.publish_and_wait(unique_topic, "cam-x", _event("cam-x", 3))
    found = await _consume(kafka_bootstrap, unique_topic, 4)
    assert len({r.partition for r in found}) == 1
    assert [events_pb2.CameraDetectionEvent.FromString(r.value).sequence for r in found] == [1, 2, 2, 3]


async def test_a_refused_record_fails_itself_and_the_records_after_it_only(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    too_large = events_pb2.DeadLetter(event_id=str(uuid.uuid4()), source_id="cam-1", payload=b"x" * 2_000_000)
    batch = [_event("cam-1", 1), _event("cam-1", 2), too_large, _event("cam-1", 4)]
    async with EventPublisher(kafka_bootstrap) as publisher:
        acks = await publisher.publish_many(unique_topic, [("cam-1", m) for m in batch])
        assert len(acks) == 4
        await acks[0]
        await acks[1]
        for refused in acks[2:]:
            with pytest.raises(PublishError, match=unique_topic):
                await refused
        await publisher.publish_and_wait(unique_topic, "cam-1", _event("cam-1", 5))  # still serving
    found = await _consume(kafka_bootstrap, unique_topic, 3)
    # The record after the refused one was never sent: the key's order holds.
    assert [events_pb2.CameraDetectionEvent.FromString(r.value).sequence for r in found] == [1, 2, 5]


async def test_publish_many_before_start_raises_and_an_empty_batch_is_nothing(kafka_bootstrap: str) -> None:
    publisher = EventPublisher(kafka_bootstrap)
    with pytest.raises(PublishError, match="not started"):
        await publisher.publish_many("any.topic", [("cam-1", _event("cam-1", 1))])
    async with publisher:
        assert await publisher.publish_many("any.topic", []) == []
