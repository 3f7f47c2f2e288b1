"""Consumes camera.detections.v1 and telemetry.readings.v1 in the ``analytics`` group and writes the outputs.

One batch at a time: decode → skip event ids already applied → per-camera ``CameraPipeline`` and the
telemetry rules → one database transaction (``writer.write_batch``) → commit the Kafka offsets. So offsets
move only after the outputs are durable, and a replay changes nothing. When partitions are revoked (a
rebalance or a stop) the pipelines of their cameras are flushed and written before they go.

Memory stays bounded under overload: a batch holds at most ``max_batch_records`` records and the fetcher
at most ``fetch_max_bytes``; records that cannot be processed yet stay in Kafka (consumer lag grows and
returns to 0 once the load drops).

Tracing costs next to nothing per record: a record's processing gets no span of its own (an SDK span
costs 25 to 45 µs, a tenth or more of a frame's ~255 µs of pipeline work). Instead every violation and
anomaly keeps the ``traceparent`` header of the record that produced it; the outbox relay raises its alert
as a child of that context, so the trace of the frame's StreamFrames call and Kafka publish goes on
through analytics' RaiseAlert call into the alert service.

A record no retry can fix (an undecodable payload) is copied to the dead-letter topic of its source
(camera.dlq.v1, telemetry.dlq.v1) with the reason, and the broker's acknowledgement is awaited before the
batch is written and committed, so no such record is dropped unseen.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from itsmesh.v1 import events_pb2
from mesh.events import (
    CAMERA_DETECTIONS_TOPIC,
    CAMERA_DLQ_TOPIC,
    TELEMETRY_DLQ_TOPIC,
    TELEMETRY_READINGS_TOPIC,
    EventPublisher,
    PublishError,
)
from services.analytics.camera_config import CameraConfig
from services.analytics.cameras import CameraConfigs
from services.analytics.decode import detection_frame_from_event
from services.analytics.model import DetectionFrame, PipelineOutput
from services.analytics.pipeline import CameraPipeline
from services.analytics.telemetry_rules import TelemetryRules
from services.analytics.writer import (
    ReadingRow,
    WriteBatch,
    already_processed,
    write_batch,
)

log = logging.getLogger(__name__)

RETRY_S: Final = 1.0
RATE_WINDOW_S: Final = 10.0
FAR_FUTURE: Final = datetime.max.replace(tzinfo=UTC)
MAX_DLQ_PAYLOAD_BYTES: Final = 256 * 1024
MAX_TRACEPARENT_CHARS: Final = 256  # 55 in W3C version 00; room for later versions, no room for junk

PipelineFactory = Callable[[CameraConfig], CameraPipeline]
Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True, slots=True)
class ConsumerLimits:
    """How much the consumer takes in at once (see AnalyticsSettings)."""

    max_batch_records: int = 2000
    max_partition_fetch_bytes: int = 1_048_576
    fetch_max_bytes: int = 8_388_608
    poll_timeout_ms: int = 200
    idle_flush_s: float = 15.0
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000


@dataclass(slots=True)
class PipelineStats:
    """Counters GetPipelineStatus reports."""

    events_processed: int = 0
    events_duplicate: int = 0
    events_skipped: int = 0
    last_commit_time: datetime | None = None
    detections: deque[tuple[float, int]] = field(default_factory=deque)

    def add_detections(self, count: int, now: float) -> None:
        self.detections.append((now, count))
        while self.detections and self.detections[0][0] < now - RATE_WINDOW_S:
            self.detections.popleft()

    def detections_per_second(self, now: float) -> float:
        return sum(n for t, n in self.detections if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S


def _header(record: Record, name: str) -> str:
    for key, value in record.headers or ():
        if key == name and value:
            return bytes(value).decode(errors="replace")
    return ""


def traceparent_of(record: Record) -> str | None:
    """The record's W3C ``traceparent`` header (None without one, or with one no propagator could read)."""
    value = _header(record, "traceparent")
    return value if value and len(value) <= MAX_TRACEPARENT_CHARS else None


def dead_letter(record: Record, payload_type: str, reason: str) -> events_pb2.DeadLetter:
    """The DLQ copy of a consumed record: its payload (cut to the size limit), where it was and why it
    failed. The id derives from topic/partition/offset, so a batch retried after a crash sends the same
    letter again rather than a new one."""
    payload = record.value or b""
    letter = events_pb2.DeadLetter(
        event_id=str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"kafka:{record.topic}/{record.partition}/{record.offset}")
        ),
        source=events_pb2.DEAD_LETTER_SOURCE_KAFKA_RECORD,
        source_id=bytes(record.key or b"").decode(errors="replace"),
        reason_detail=reason,
        payload=payload[:MAX_DLQ_PAYLOAD_BYTES],
        payload_type=payload_type,
        payload_truncated=len(payload) > MAX_DLQ_PAYLOAD_BYTES,
        payload_size_bytes=len(payload),
        original_topic=record.topic,
        original_partition=record.partition,
        original_offset=record.offset,
    )
    letter.reject_time.FromDatetime(datetime.now(UTC))
    return letter


def reading_row(reading: events_pb2.TelemetryReading, event_id: str) -> ReadingRow:
    """A telemetry reading event as a stored row."""
    return ReadingRow(
        time=reading.reading_time.ToDatetime(UTC),
        device_id=reading.device_id,
        seq=int(reading.sequence),
        lat=reading.position.latitude_deg,
        lon=reading.position.longitude_deg,
        speed_kmh=reading.speed_kmh,
        heading_deg=reading.heading_deg,
        event_id=event_id,
        horizontal_accuracy_m=reading.horizontal_accuracy_m or None,
        measurements=dict(reading.measurements) or None,
    )


class AnalyticsConsumer:
    """The Kafka → pipeline → PostgreSQL loop of one instance; ``run()`` until cancelled."""

    def __init__(
        self,
        bootstrap_servers: str,
        pool: asyncpg.Pool,
        cameras: CameraConfigs,
        make_pipeline: PipelineFactory,
        telemetry: TelemetryRules,
        *,
        group_id: str = "analytics",
        limits: ConsumerLimits | None = None,
        topics: Sequence[str] = (CAMERA_DETECTIONS_TOPIC, TELEMETRY_READINGS_TOPIC),
        dead_letter_topics: Sequence[str] = (CAMERA_DLQ_TOPIC, TELEMETRY_DLQ_TOPIC),
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._pool = pool
        self._cameras = cameras
        self._make_pipeline = make_pipeline
        self._telemetry = telemetry
        self.group_id = group_id
        self._limits = limits or ConsumerLimits()
        self._topics = tuple(topics)
        self._detections_topic = self._topics[0]
        self._dead_letter_topics = dict(zip(self._topics, dead_letter_topics, strict=True))
        self._publisher: EventPublisher | None = None
        self._dead_letters: list[Awaitable[None]] = []
        self.pipelines: dict[str, CameraPipeline] = {}
        self._camera_partition: dict[str, TopicPartition] = {}
        self._device_partition: dict[str, TopicPartition] = {}
        self._last_frame_at: dict[str, float] = {}
        self._processed_offsets: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.stats = PipelineStats()
        cameras.on_change = self._reconfigure

    # --- introspection ---------------------------------------------------------------------------------

    @property
    def active_tracks(self) -> int:
        """Tracks alive over all cameras of this instance."""
        return sum(p.active_tracks for p in self.pipelines.values())

    @property
    def devices_tracked(self) -> int:
        """Devices with telemetry rule state on this instance."""
        return self._telemetry.devices_tracked

    async def partitions(self) -> list[tuple[TopicPartition, int, int]]:
        """(partition, committed offset, end offset) of every partition assigned to this instance."""
        consumer = self.consumer
        if consumer is None:
            return []
        assigned = sorted(consumer.assignment())
        if not assigned:
            return []
        ends = await consumer.end_offsets(assigned)
        out = []
        for tp in assigned:
            committed = await consumer.committed(tp)
            out.append((tp, committed or 0, ends.get(tp, 0)))
        return out

    # --- the loop --------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Make ``run`` return after the batch in progress, with every pipeline flushed and committed."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``request_stop``; reconnects when the broker or the database goes away."""
        while not self._stopping.is_set():
            limits = self._limits
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap_servers,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=limits.max_partition_fetch_bytes,
                fetch_max_bytes=limits.fetch_max_bytes,
                session_timeout_ms=limits.session_timeout_ms,
                heartbeat_interval_ms=limits.heartbeat_interval_ms,
            )
            consumer.subscribe(list(self._topics), listener=_Revoker(self))
            publisher = EventPublisher(self._bootstrap_servers)
            try:
                await publisher.start()
                self._publisher = publisher
                await consumer.start()
                self.consumer = consumer
                while not self._stopping.is_set():
                    batches = await consumer.getmany(
                        timeout_ms=limits.poll_timeout_ms, max_records=limits.max_batch_records
                    )
                    if batches:
                        await self._handle(consumer, batches)
                    await self._flush_idle()
                await self._finish(consumer)
            except (KafkaError, PublishError) as exc:
                log.warning("analytics consumer lost the broker; reconnecting", extra={"error": str(exc)})
                self._drop_state()
            except Exception:
                # Nothing of the failed batch was committed, so it comes again; the pipelines restart
                # from the committed offsets rather than keep state the database never received.
                log.exception("batch not written; consuming again from the last commit")
                self._drop_state()
            finally:
                self.consumer = self._publisher = None
                await consumer.stop()
                await publisher.stop()
            if not self._stopping.is_set():
                await asyncio.sleep(RETRY_S)

    async def _finish(self, consumer: AIOKafkaConsumer) -> None:
        """On stop: flush every pipeline and commit what was written, so a successor starts clean."""
        try:
            async with self._lock:
                await self._flush_cameras(list(self.pipelines))
                await self._commit(consumer, list(self._processed_offsets))
        except Exception:
            log.exception("pipelines not flushed on stop; their records will be consumed again")
        self._drop_state()

    def _drop_state(self) -> None:
        self.pipelines.clear()
        self._camera_partition.clear()
        for device in list(self._device_partition):
            self._telemetry.forget(device)
        self._device_partition.clear()
        self._last_frame_at.clear()
        self._processed_offsets.clear()
        self._dead_letters.clear()

    async def _handle(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, list[Record]]
    ) -> None:
        async with self._lock:
            records = [r for tp in sorted(batches) for r in batches[tp]]
            event_ids = {id(r): _header(r, "event-id") for r in records}
            async with self._pool.acquire() as connection:
                # a record repeated within one fetch counts once, like one already applied
                seen = await already_processed(connection, [e for e in event_ids.values() if e])
                batch = WriteBatch()
                for record in records:
                    event_id = event_ids[id(record)]
                    if event_id and event_id in seen:
                        self.stats.events_duplicate += 1
                        continue
                    await self._apply(record, event_id, batch)
                    if batch.untraced:  # rare: only records that raised something pay the header scan
                        batch.trace_new_outputs(traceparent_of(record))
                    if event_id:
                        seen.add(event_id)
                        batch.event_ids.append(event_id)
                # before the write: its event ids would mark the dead records as applied
                await self._dead_letters_sent()
                await write_batch(connection, batch)
            self.stats.events_processed += len(records)
            for tp, recs in batches.items():
                self._processed_offsets[tp] = recs[-1].offset + 1
        await self._commit(consumer, list(batches))

    async def _apply(self, record: Record, event_id: str, batch: WriteBatch) -> None:
        tp = TopicPartition(record.topic, record.partition)
        if record.topic == self._detections_topic:
            try:
                frame = detection_frame_from_event(
                    events_pb2.CameraDetectionEvent.FromString(record.value or b"")
                )
            except (DecodeError, ValueError, OverflowError) as exc:  # no retry can fix it: never block
                await self._dead_letter(
                    record, events_pb2.CameraDetectionEvent, "undecodable detection event", exc
                )
                return
            if not frame.event_id:
                frame = _with_event_id(frame, event_id)
            pipeline = await self._pipeline(frame.camera_id, frame.config_version, tp)
            if pipeline is None:
                self._skip(record, "unknown camera")
                return
            self._last_frame_at[frame.camera_id] = time.monotonic()
            self.stats.add_detections(len(frame.boxes), time.monotonic())
            _extend(batch, pipeline.process(frame))
        else:
            try:
                reading = events_pb2.TelemetryReading.FromString(record.value or b"")
                row = reading_row(reading, _uuid_of(event_id or reading.event_id, record))
            except (DecodeError, ValueError, OverflowError) as exc:
                await self._dead_letter(
                    record, events_pb2.TelemetryReading, "undecodable telemetry reading", exc
                )
                return
            self._device_partition[row.device_id] = tp
            batch.readings.append(row)
            batch.violations.extend(
                self._telemetry.process_reading(
                    row.device_id, row.time, row.lat, row.lon, row.speed_kmh, row.heading_deg
                )
            )

    def _skip(self, record: Record, why: str) -> None:
        self.stats.events_skipped += 1
        log.warning(
            why, extra={"topic": record.topic, "partition": record.partition, "offset": record.offset}
        )

    async def _dead_letter(self, record: Record, expected: Any, what: str, error: Exception) -> None:
        """Skip ``record`` and queue its copy to the dead-letter topic of its source."""
        self._skip(record, what)
        topic = self._dead_letter_topics.get(record.topic)
        if topic is None or self._publisher is None:
            return
        letter = dead_letter(record, expected.DESCRIPTOR.full_name, f"{what}: {error}")
        self._dead_letters.append(await self._publisher.publish(topic, letter.source_id, letter))

    async def _dead_letters_sent(self) -> None:
        """Wait until the broker holds every queued dead letter (PublishError: the batch is retried)."""
        letters, self._dead_letters = self._dead_letters, []
        for acknowledgement in letters:
            await acknowledgement

    async def _pipeline(self, camera_id: str, version: int, tp: TopicPartition) -> CameraPipeline | None:
        config = await self._cameras.get(camera_id, version)
        if config is None:
            return None
        pipeline = self.pipelines.get(camera_id)
        if pipeline is None:
            pipeline = self.pipelines[camera_id] = self._make_pipeline(config)
        elif pipeline.config.config_version < config.config_version:
            pipeline.reconfigure(config)
        self._camera_partition[camera_id] = tp
        return pipeline

    def _reconfigure(self, config: CameraConfig) -> None:
        pipeline = self.pipelines.get(config.camera_id)
        if pipeline is not None and pipeline.config.config_version < config.config_version:
            pipeline.reconfigure(config)

    async def _commit(self, consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
        offsets = {tp: self._processed_offsets[tp] for tp in partitions if tp in self._processed_offsets}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partition: its records come again to the new owner, which finds
            # their event ids already applied.
            log.warning("offset commit failed", extra={"error": str(exc)})
            return
        self.stats.last_commit_time = datetime.now(UTC)

    async def _flush_cameras(self, camera_ids: Sequence[str], now: datetime = FAR_FUTURE) -> None:
        batch = WriteBatch()
        for camera_id in camera_ids:
            pipeline = self.pipelines.get(camera_id)
            if pipeline is not None:
                _extend(batch, pipeline.flush(now))
        if len(batch):
            async with self._pool.acquire() as connection:
                await write_batch(connection, batch)

    async def _flush_idle(self) -> None:
        cutoff = time.monotonic() - self._limits.idle_flush_s
        idle = [c for c, t in self._last_frame_at.items() if t < cutoff]
        if not idle:
            return
        async with self._lock:
            await self._flush_cameras(idle, datetime.now(UTC))
            for camera_id in idle:
                self._last_frame_at.pop(camera_id, None)

    async def revoke(self, revoked: Iterable[TopicPartition]) -> None:
        """Flush and forget the cameras and devices of ``revoked`` partitions, then commit them."""
        revoked = set(revoked)
        async with self._lock:
            cameras = [c for c, tp in self._camera_partition.items() if tp in revoked]
            try:
                await self._flush_cameras(cameras)
            except Exception:
                log.exception("revoked cameras not flushed; their records will be consumed again")
            for camera_id in cameras:
                self.pipelines.pop(camera_id, None)
                self._camera_partition.pop(camera_id, None)
                self._last_frame_at.pop(camera_id, None)
            for device in [d for d, tp in self._device_partition.items() if tp in revoked]:
                self._telemetry.forget(device)
                del self._device_partition[device]
            if self.consumer is not None:
                await self._commit(self.consumer, revoked)
            for tp in revoked:
                self._processed_offsets.pop(tp, None)


def _uuid_of(event_id: str, record: Record) -> str:
    """The event id as the UUID the readings table stores; a foreign id maps to a stable UUID of itself."""
    try:
        return str(uuid.UUID(event_id))
    except ValueError:
        return str(
            uuid.uuid5(uuid.NAMESPACE_URL, event_id or f"{record.topic}/{record.partition}/{record.offset}")
        )


def _extend(batch: WriteBatch, output: PipelineOutput) -> None:
    batch.passages.extend(output.passages)
    batch.metrics.extend(output.metrics)
    batch.violations.extend(output.violations)
    batch.anomalies.extend(output.anomalies)


def _with_event_id(frame: DetectionFrame, event_id: str) -> DetectionFrame:
    return DetectionFrame(
        frame.camera_id, frame.sequence, frame.capture_time, frame.boxes, event_id, frame.config_version
    )


class _Revoker(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka's ABC is untyped
    def __init__(self, owner: AnalyticsConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info(
            "partitions assigned", extra={"partitions": [f"{tp.topic}/{tp.partition}" for tp in assigned]}
        )
