"""Publishing protobuf events to Kafka: one producer per process, acknowledged by every in-sync replica.

Every record carries the headers DESIGN §4 names — ``event-id`` (UUID, equal to the payload's event_id),
``content-type`` (application/x-protobuf), ``schema`` (the payload's full message name), ``traceparent``
(W3C trace context) and ``produced-at`` (RFC 3339) — and is keyed by the camera or device id, so the order
of one source holds within its partition. ``publish_many`` sends records that arrived together under one
span, each still with all of these headers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Generator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from opentelemetry.trace import TracerProvider
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.interceptors import inject_kafka_headers, kafka_producer_span

log = logging.getLogger(__name__)

CAMERA_DETECTIONS_TOPIC: Final = "camera.detections.v1"
CAMERA_EVENTS_TOPIC: Final = "camera.events.v1"
TELEMETRY_READINGS_TOPIC: Final = "telemetry.readings.v1"
TELEMETRY_DLQ_TOPIC: Final = "telemetry.dlq.v1"
CAMERA_DLQ_TOPIC: Final = "camera.dlq.v1"
ALERT_NOTIFICATIONS_TOPIC: Final = "alerts.notifications.v1"

TOPIC_PARTITIONS: Final[Mapping[str, int]] = {
    CAMERA_DETECTIONS_TOPIC: 6,
    CAMERA_EVENTS_TOPIC: 3,
    TELEMETRY_READINGS_TOPIC: 6,
    TELEMETRY_DLQ_TOPIC: 1,
    CAMERA_DLQ_TOPIC: 1,
    ALERT_NOTIFICATIONS_TOPIC: 3,
}
"""Every itsmesh topic and its partition count (keys hash to partitions, so per-source order holds)."""

CONTENT_TYPE: Final = b"application/x-protobuf"

_PARTITION_CACHE_SIZE: Final = 65_536
"""Most (topic, key) partitions remembered; beyond, the cache starts over (bounded memory)."""


class KafkaSettings(BaseSettings):
    """How the event producer talks to Kafka; env vars are prefixed ITSMESH_KAFKA_."""

    model_config = SettingsConfigDict(
        env_prefix="ITSMESH_KAFKA_", extra="ignore", frozen=True, validate_by_name=True
    )

    enable_idempotence: bool = Field(
        False,
        description="Idempotent producer; only against Apache Kafka (the embedded broker refuses it).",
    )
    compression_type: str | None = Field("gzip", description="Record compression (gzip, or empty for none).")
    linger_ms: int = Field(2, ge=0, description="How long the producer waits to fill a batch, in ms.")
    request_timeout_ms: int = Field(30_000, gt=0, description="Broker request timeout in ms.")


class PublishError(Exception):
    """Kafka did not acknowledge a record; retrying later can succeed."""

    retriable = True


class EventPublisher:
    """Publishes protobuf messages to Kafka with acks=all; use ``async with`` or ``start()``/``stop()``."""

    def __init__(
        self,
        bootstrap_servers: str,
        settings: KafkaSettings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._settings = settings or KafkaSettings()
        self._tracer_provider = tracer_provider
        self._bootstrap_servers = bootstrap_servers
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[tuple[str, str], tuple[int, int]] = {}
        """(topic, key) → (partition count, partition) as the default partitioner chose it."""

    async def start(self) -> None:
        """Connect the producer; raises ``PublishError`` when the broker cannot be reached."""
        settings = self._settings
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            acks="all",
            enable_idempotence=settings.enable_idempotence,
            compression_type=settings.compression_type or None,
            linger_ms=settings.linger_ms,
            request_timeout_ms=settings.request_timeout_ms,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise PublishError(f"cannot connect to Kafka at {self._bootstrap_servers}: {exc}") from exc
        self._producer = producer

    @property
    def started(self) -> bool:
        """True once connected to the broker (and until stopped)."""
        return self._producer is not None

    async def stop(self) -> None:
        """Flush what is pending and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> EventPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def publish(
        self, topic: str, key: str, message: Message, event_id: str | None = None
    ) -> Awaitable[None]:
        """Hand ``message`` to the producer; the returned awaitable resolves once the broker acked it.

        Awaiting ``publish`` itself only queues the record (so many can be in flight in order); awaiting
        its result waits for acks=all and raises ``PublishError`` if Kafka refused or timed out.
        """
        (acknowledgement,) = await self._send(topic, ((key, message, event_id),))
        return acknowledgement

    async def publish_many(self, topic: str, records: Sequence[tuple[str, Message]]) -> list[Awaitable[None]]:
        """Hand ``records`` (key, message) to the producer in order, under one span; one awaitable each.

        Every record still carries all the headers of ``publish`` (its own event-id and schema; the
        batch's traceparent and produced-at). Each awaitable resolves once the broker acked that record
        and raises ``PublishError`` if it did not. A record the producer refuses at once fails together
        with every record after it, which are not sent, so a source's records never reach Kafka out of
        order; raises ``PublishError`` only when the publisher is not started.
        """
        return await self._send(topic, [(key, message, None) for key, message in records])

    async def _send(
        self, topic: str, records: Sequence[tuple[str, Message, str | None]]
    ) -> list[Awaitable[None]]:
        producer = self._producer
        if producer is None:
            raise PublishError("the event publisher is not started")
        acknowledgements: list[Awaitable[None]] = []
        if not records:
            return acknowledgements
        with kafka_producer_span(topic, tracer_provider=self._tracer_provider) as span:
            if len(records) > 1:
                span.set_attribute("messaging.batch.message_count", len(records))
            # Constant over the batch: computed once, not per record.
            shared = inject_kafka_headers(
                [("content-type", CONTENT_TYPE), ("produced-at", datetime.now(UTC).isoformat().encode())]
            )
            for index, (key, message, event_id) in enumerate(records):
                event_id = event_id or getattr(message, "event_id", "") or str(uuid.uuid4())
                headers = [
                    ("event-id", event_id.encode()),
                    ("schema", _schema(message)),
                    *shared,
                ]
                try:
                    sent = await producer.send(
                        topic,
                        value=message.SerializeToString(),
                        key=key.encode(),
                        partition=self._partition_of(topic, key),
                        headers=headers,
                    )
                except KafkaError as exc:
                    if len(records) == 1:
                        raise PublishError(f"cannot publish to {topic}: {exc}") from exc
                    refused = _Refused(f"cannot publish to {topic}: {exc}", exc)
                    acknowledgements += [refused] * (len(records) - index)
                    break
                acknowledgements.append(Acknowledgement(topic, sent))
        return acknowledgements

    def _partition_of(self, topic: str, key: str) -> int | None:
        """The partition the producer's default partitioner picks for ``key`` (cached: the pure-Python
        hash is a measurable part of a small record's cost); None before the topic's metadata is known."""
        producer = self._producer
        assert producer is not None
        known = producer.client.cluster.partitions_for_topic(topic)
        if not known:
            return None  # unknown topic: send waits for its metadata and partitions by itself
        cached = self._partitions.get((topic, key))
        if cached is not None and cached[0] == len(known):
            return cached[1]
        if len(self._partitions) >= _PARTITION_CACHE_SIZE:
            self._partitions.clear()
        # The same arguments the producer passes its partitioner (a key is never None here).
        partition = int(DefaultPartitioner()(key.encode(), list(known), []))
        self._partitions[(topic, key)] = (len(known), partition)
        return partition

    async def publish_and_wait(
        self, topic: str, key: str, message: Message, event_id: str | None = None
    ) -> None:
        """Publish and wait until the broker acked."""
        await (await self.publish(topic, key, message, event_id))


class Acknowledgement:
    """Awaitable that resolves once the broker acknowledged one record; raises PublishError if it did not.

    A plain awaitable rather than a coroutine: a stream that ends before awaiting it leaves no
    never-awaited coroutine behind.
    """

    __slots__ = ("_sent", "_topic")

    def __init__(self, topic: str, sent: asyncio.Future[Any]) -> None:
        self._topic = topic
        self._sent = sent

    def done(self) -> bool:
        """True once the broker answered (awaiting then does not wait)."""
        return self._sent.done()

    def __await__(self) -> Generator[Any, None, None]:
        return self._wait().__await__()

    async def _wait(self) -> None:
        try:
            await self._sent
        except KafkaError as exc:
            raise PublishError(f"Kafka did not acknowledge a record on {self._topic}: {exc}") from exc


class _Refused:
    """Awaitable of a record the producer refused before sending: raises its PublishError."""

    __slots__ = ("_cause", "_message")

    def __init__(self, message: str, cause: KafkaError) -> None:
        self._message = message
        self._cause = cause

    def __await__(self) -> Generator[Any, None, None]:
        raise PublishError(self._message) from self._cause
        yield  # a generator: awaiting raises, calling __await__ does not


@functools.cache
def _schema_of(descriptor: Descriptor) -> bytes:
    return descriptor.full_name.encode()


def _schema(message: Message) -> bytes:
    """The ``schema`` header of ``message``: its full message name."""
    return _schema_of(message.DESCRIPTOR)


async def ensure_topics(
    bootstrap_servers: str, partitions: Mapping[str, int] = TOPIC_PARTITIONS, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet with their partition counts; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in partitions if name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(name, partitions[name], replication_factor) for name in missing]
                )
            except TopicAlreadyExistsError:  # another instance created it in between
                log.info("topics created concurrently", extra={"topics": missing})
        return missing
    finally:
        await admin.close()
