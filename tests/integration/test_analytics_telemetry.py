"""Analytics consumes telemetry from a real broker: rows once per event id, violations through the outbox to a
real alert service, also when that service was down for a while."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from itsmesh.v1 import analytics_pb2, common_pb2, events_pb2
from mesh.events import CAMERA_DLQ_TOPIC, TELEMETRY_DLQ_TOPIC
from tests.integration.alert_host import MovableClock, alert_host
from tests.integration.analytics_host import (
    Topics,
    analytics_host,
    analytics_stub,
    eventually,
    publish_all,
    reading,
    stamp,
)
from tests.integration.streaming_host import records


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _readings(device: str, count: int, speed: float = 40.0) -> list[events_pb2.TelemetryReading]:
    start = datetime.now(UTC) - timedelta(minutes=5)
    return [
        reading(device, i + 1, start + timedelta(seconds=i), 52.52 + i * 1e-5, 13.40, speed)
        for i in range(count)
    ]


async def _count(pg: asyncpg.Connection, device: str) -> int:
    return int(
        await pg.fetchval("SELECT count(*) FROM analytics.telemetry_readings WHERE device_id = $1", device)
    )


async def test_readings_are_stored_once_even_when_the_topic_is_replayed(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    events = _readings(device, 40)
    async with analytics_host(infra, topics, relay_alerts=False) as host:
        await publish_all(infra.kafka_bootstrap_servers, topics.telemetry, events, lambda e: e.device_id)
        await eventually(lambda: _equals(_count(pg, device), 40), what="40 readings stored")
        # the same events again (a producer retry, a republished batch): recognised by event-id
        await publish_all(infra.kafka_bootstrap_servers, topics.telemetry, events, lambda e: e.device_id)
        async with analytics_stub(host) as stub:

            async def duplicates_seen() -> bool:
                status = await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())
                return status.events_duplicate_total >= 40

            await eventually(duplicates_seen, what="the replay to be recognised")
            status = await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())
            assert status.consumer_group.startswith("analytics-")
            assert sum(p.lag for p in status.partitions) == 0
        assert await _count(pg, device) == 40
    # a new consumer group reads the whole topic from the start: everything is already applied
    async with analytics_host(infra, topics, relay_alerts=False) as host, analytics_stub(host) as stub:

        async def replayed() -> bool:
            status = await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())
            return status.events_duplicate_total >= 80

        await eventually(replayed, what="a full replay")
    assert await _count(pg, device) == 40


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def test_readings_are_listed_by_device_and_time(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    events = _readings(device, 12)
    async with analytics_host(infra, topics, relay_alerts=False) as host, analytics_stub(host) as stub:
        await publish_all(infra.kafka_bootstrap_servers, topics.telemetry, events, lambda e: e.device_id)
        await eventually(lambda: _equals(_count(pg, device), 12), what="12 readings stored")
        request = analytics_pb2.ListTelemetryReadingsRequest(
            device_ids=[device],
            time_range=common_pb2.TimeRange(start_time=events[0].reading_time),
            order=common_pb2.SORT_ORDER_OLDEST_FIRST,
            page_size=5,
        )
        pages = []
        while True:
            response = await stub.ListTelemetryReadings(request)
            pages.append([r.sequence for r in response.readings])
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token
        assert pages == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]


async def _raised(pg: asyncpg.Connection, client_alert_id: str) -> bool:
    found = await pg.fetchval("SELECT count(*) FROM alert.raises WHERE client_alert_id = $1", client_alert_id)
    return bool(found)


async def test_overspeed_reaches_the_alert_service_after_it_comes_back(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    alert_port = _free_port()
    async with (
        analytics_host(infra, topics, alert_port=alert_port, telemetry_speed_limit_kmh=50.0) as host,
        analytics_stub(host) as stub,
    ):
        # the alert service is down: the violation is stored and waits in the outbox
        await publish_all(
            infra.kafka_bootstrap_servers,
            topics.telemetry,
            _readings(device, 5, speed=90.0),
            lambda e: e.device_id,
        )
        start = stamp(datetime.now(UTC) - timedelta(hours=1))

        async def listed() -> bool:
            response = await stub.ListViolations(
                analytics_pb2.ListViolationsRequest(
                    device_ids=[device], time_range=common_pb2.TimeRange(start_time=start)
                )
            )
            return len(response.violations) == 1

        await eventually(listed, what="the overspeed violation")
        violations = (
            await stub.ListViolations(
                analytics_pb2.ListViolationsRequest(
                    device_ids=[device], time_range=common_pb2.TimeRange(start_time=start)
                )
            )
        ).violations
        violation = violations[0]
        assert violation.kind == events_pb2.VIOLATION_KIND_TELEMETRY_OVERSPEED
        assert violation.telemetry_overspeed.measured_speed_kmh == 90.0
        assert (
            await stub.GetViolation(analytics_pb2.GetViolationRequest(violation_id=violation.violation_id))
        ) == violation

        async def attempted() -> bool:
            attempts = await pg.fetchval(
                "SELECT attempts FROM analytics.alert_outbox WHERE source_id = $1", violation.violation_id
            )
            return bool(attempts) and attempts >= 2

        await eventually(attempted, what="failed delivery attempts")
        status = await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())
        assert status.outbox_pending >= 1
        assert not await _raised(pg, violation.violation_id)

        # the alert service comes up on its address: the waiting violation is delivered, once
        async with alert_host(infra, MovableClock(), grpc_port=alert_port):
            await eventually(lambda: _raised(pg, violation.violation_id), what="delivery after the outage")
            sent = await pg.fetchval(
                "SELECT sent_at FROM analytics.alert_outbox WHERE source_id = $1", violation.violation_id
            )
            assert sent is not None
            alerts = await pg.fetchval(
                "SELECT count(*) FROM alert.alerts WHERE labels ->> 'device_id' = $1", device
            )
            assert alerts == 1


async def test_a_backlog_builds_lag_in_bounded_batches_and_drains_to_zero(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers, partitions=1)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    events = _readings(device, 3000)
    limits = {"max_batch_records": 100, "max_partition_fetch_bytes": 16_384, "fetch_max_bytes": 65_536}
    # The backlog is there before the consumer starts (a consumer on a quiet machine keeps up with a
    # publisher), so it has 30 transactions of 100 records to work through.
    await publish_all(infra.kafka_bootstrap_servers, topics.telemetry, events, lambda e: e.device_id)
    async with (
        analytics_host(infra, topics, relay_alerts=False, **limits) as host,
        analytics_stub(host) as stub,
    ):
        lags = []
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            status = await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())
            if status.partitions:
                lags.append(sum(p.lag for p in status.partitions))
                if lags[-1] == 0 and await _count(pg, device) == 3000:
                    break
            assert asyncio.get_running_loop().time() < deadline, f"the backlog did not drain: {lags[-5:]}"
            await asyncio.sleep(0.01)
        assert max(lags) > 0, "the consumer never fell behind"
        consumer: Any = host.spec.grpc_services[0].servicer.consumer
        assert consumer.stats.events_processed >= 3000


async def test_an_undecodable_record_is_skipped_and_copied_to_the_dlq_with_the_reason(infra, pg) -> None:
    topics = Topics.fresh()
    await topics.create(infra.kafka_bootstrap_servers, partitions=1)
    device, camera = f"dev-{uuid.uuid4().hex[:8]}", f"cam-{uuid.uuid4().hex[:8]}"
    junk = b"\xff\x00 not a protobuf"
    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.telemetry, junk, key=device.encode(), headers=[("event-id", b"junk")]
        )
        await producer.send_and_wait(topics.detections, junk, key=camera.encode())
    finally:
        await producer.stop()
    async with analytics_host(infra, topics, relay_alerts=False) as host, analytics_stub(host) as stub:
        await publish_all(
            infra.kafka_bootstrap_servers, topics.telemetry, _readings(device, 3), lambda e: e.device_id
        )
        await eventually(lambda: _equals(_count(pg, device), 3), what="the readings behind the bad record")
        status = await stub.GetPipelineStatus(analytics_pb2.GetPipelineStatusRequest())
        assert status.events_processed_total == 5
    expected = {
        TELEMETRY_DLQ_TOPIC: (device, topics.telemetry, "itsmesh.v1.TelemetryReading", "telemetry reading"),
        CAMERA_DLQ_TOPIC: (camera, topics.detections, "itsmesh.v1.CameraDetectionEvent", "detection event"),
    }
    for dlq, (key, topic, payload_type, what) in expected.items():
        found = await records(infra.kafka_bootstrap_servers, dlq, key, lambda f: len(f) >= 1)
        assert len(found) == 1, dlq
        letter = events_pb2.DeadLetter.FromString(found[0].value or b"")
        assert letter.source == events_pb2.DEAD_LETTER_SOURCE_KAFKA_RECORD
        assert (letter.source_id, letter.original_topic, letter.payload_type) == (key, topic, payload_type)
        assert (letter.original_partition, letter.original_offset) == (0, 0)
        assert letter.payload == junk
        assert letter.payload_size_bytes == len(junk)
        assert letter.reason_detail.startswith(f"undecodable {what}: ")
        assert dict(found[0].headers)["event-id"].decode() == letter.event_id
