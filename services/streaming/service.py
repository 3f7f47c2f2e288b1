"""Assembles the streaming process for the service host.

Resources, started in this order and closed in reverse: token verification (when auth is on), the Kafka
event publisher, Redis (latest-frame thumbnails, the cluster view of streams), the PostgreSQL pool — the
last attaches the registry (with its outbox relay task) and frame ingest to the servicer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import grpc
from redis.asyncio import Redis

from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.events import EventPublisher, KafkaSettings, PublishError, ensure_topics
from mesh.host import GrpcService, Resource, ServiceHost, ServiceSpec
from mesh.pg_pool import keep_session
from mesh.tasks import stop_task
from mesh.tokens import token_auth
from services.streaming.config import StreamingSettings
from services.streaming.ingest import FrameIngest, IngestLimits
from services.streaming.live_status import LiveStatusStore
from services.streaming.outbox import OutboxRelay, RelaySettings
from services.streaming.registry import CameraRegistry
from services.streaming.server import StreamingServicer
from services.streaming.store import CameraStore, Outbox
from services.streaming.telemetry_config import TelemetrySettings
from services.streaming.telemetry_service import telemetry_resource
from services.streaming.thumbnails import ThumbnailStore

log = logging.getLogger(__name__)

CONNECT_RETRY_S = 1.0


def build(
    settings: StreamingSettings | None = None,
    *,
    kafka: KafkaSettings | None = None,
    limits: IngestLimits | None = None,
    telemetry: TelemetrySettings | None = None,
    auth_interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    relay_settings: RelaySettings | None = None,
) -> ServiceSpec:
    """The streaming service as the host runs it."""
    settings = settings or StreamingSettings()
    servicer = StreamingServicer()
    authenticator, auth_resources = token_auth(settings)  # every RPC but health/reflection needs a token
    publisher = EventPublisher(settings.kafka_bootstrap_servers, kafka or KafkaSettings())

    @asynccontextmanager
    async def kafka_publisher(host: ServiceHost) -> AsyncIterator[EventPublisher]:
        # The broker may come up after us (or restart): connect in the background so health, auth and
        # reads work meanwhile; publishing answers UNAVAILABLE + RetryInfo until connected.
        connector = asyncio.create_task(_connect(publisher, settings.kafka_bootstrap_servers))
        try:
            yield publisher
        finally:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
            await publisher.stop()

    # Connects on first use, so a Redis outage costs thumbnails only, never start-up.
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    thumbnails = ThumbnailStore(redis)

    @asynccontextmanager
    async def redis_client(host: ServiceHost) -> AsyncIterator[Redis]:
        try:
            yield redis
        finally:
            await redis.aclose()

    @asynccontextmanager
    async def database(host: ServiceHost) -> AsyncIterator[asyncpg.Pool]:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10, reset=keep_session)
        try:
            store = CameraStore(pool)
            relay = OutboxRelay(Outbox(pool), publisher, relay_settings)
            relayer = asyncio.create_task(relay.run(), name="streaming-outbox-relay")
            servicer.registry = CameraRegistry(store, relay, settings.instance_id)
            servicer.ingest = FrameIngest(
                store,
                publisher,
                settings.instance_id,
                host.draining,
                limits,
                thumbnails=thumbnails,
                live=LiveStatusStore(redis),
            )
            lapsed = asyncio.create_task(
                servicer.ingest.report_lapsed_streams(), name="streaming-lapsed-streams"
            )
            yield pool
        finally:
            servicer.registry = servicer.ingest = None
            await stop_task(lapsed)
            await stop_task(relayer)
            await pool.close()

    telemetry_ingest = telemetry_resource(
        servicer, settings, telemetry or TelemetrySettings(), publisher, redis, auth_interceptors
    )
    resources: tuple[Resource, ...] = (
        *auth_resources,
        kafka_publisher,
        redis_client,
        database,
        telemetry_ingest,
    )
    return ServiceSpec(
        name="streaming",
        settings=settings,
        grpc_services=[
            GrpcService.from_generated(streaming_pb2, streaming_pb2_grpc, "StreamingService", servicer)
        ],
        authenticator=authenticator,
        resources=resources,
    )


async def _connect(publisher: EventPublisher, bootstrap_servers: str) -> None:
    """Start the publisher, retrying until the broker answers; then make sure the topics exist."""
    while True:
        try:
            await publisher.start()
            break
        except PublishError as exc:
            log.warning("Kafka not reachable yet; retrying", extra={"error": str(exc)})
            await asyncio.sleep(CONNECT_RETRY_S)
    try:
        created = await ensure_topics(bootstrap_servers)
    except Exception as exc:  # topic creation is best effort: brokers may auto-create or forbid it
        log.warning("could not ensure Kafka topics", extra={"error": str(exc)})
    else:
        if created:
            log.info("Kafka topics created", extra={"topics": created})
