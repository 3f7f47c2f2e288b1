"""Assembles the analytics process for the service host.

Resources, started in this order and closed in reverse: token verification (when auth is on), the
PostgreSQL pool (attached to the servicer for the analyst API), the mesh client (streaming's GetCamera,
alert's RaiseAlert, with this service's token), then the pipeline: the Kafka consumer, the camera
config-change follower, the geofence reloader and the outbox relay. On stop the consumer finishes its
batch, flushes every camera and commits before the rest closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Final

import asyncpg
import grpc

from itsmesh.v1 import alert_pb2_grpc, analytics_pb2, analytics_pb2_grpc, streaming_pb2_grpc
from mesh.client import MeshClient
from mesh.credentials import service_interceptors
from mesh.events import (
    CAMERA_DETECTIONS_TOPIC,
    CAMERA_EVENTS_TOPIC,
    TELEMETRY_READINGS_TOPIC,
    ensure_topics,
)
from mesh.host import GrpcService, Resource, ServiceHost, ServiceSpec
from mesh.pg_pool import DATABASE_DOWN
from mesh.tokens import token_auth
from services.analytics import geofences as geofence_rules
from services.analytics.cameras import CameraConfigs
from services.analytics.config import AnalyticsSettings
from services.analytics.consumer import AnalyticsConsumer, ConsumerLimits
from services.analytics.geofences import GeofenceStore
from services.analytics.live import follow_windows
from services.analytics.model import Clock
from services.analytics.outbox import OutboxRelay, prune_forever
from services.analytics.pipeline import CameraPipeline, PipelineSettings
from services.analytics.server import AnalyticsServicer
from services.analytics.telemetry_rules import TelemetryRules
from services.analytics.writer import prepare_connection

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 15.0
TOPICS_TIMEOUT_S: Final = 10.0


def utc_now() -> datetime:
    """The wall clock, timezone-aware."""
    return datetime.now(UTC)


def build(
    settings: AnalyticsSettings | None = None,
    *,
    clock: Clock = utc_now,
    pipeline_settings: PipelineSettings | None = None,
    client_interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    mesh_client: Callable[[], MeshClient] | None = None,
    topics: tuple[str, str, str] = (CAMERA_DETECTIONS_TOPIC, TELEMETRY_READINGS_TOPIC, CAMERA_EVENTS_TOPIC),
) -> ServiceSpec:
    """The analytics service as the host runs it.

    ``mesh_client`` replaces discovery (tests pass static endpoints); ``client_interceptors`` replace the
    service-token interceptors of outgoing calls; ``topics`` (detections, telemetry, camera events) lets
    tests use topics of their own.
    """
    settings = settings or AnalyticsSettings()
    servicer = AnalyticsServicer(settings.instance_id)
    authenticator, auth_resources = token_auth(settings)  # every RPC but health/reflection needs a token

    @asynccontextmanager
    async def database(host: ServiceHost) -> AsyncIterator[asyncpg.Pool]:
        pool = await asyncpg.create_pool(
            settings.database_url, min_size=1, max_size=10, init=prepare_connection
        )
        try:
            servicer.pool = pool
            servicer.geofences = GeofenceStore(pool)
            servicer.draining = host.draining
            servicer.timescaledb = bool(
                await pool.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")
            )
            yield pool
        finally:
            servicer.pool = servicer.geofences = None
            await pool.close()

    clients: list[MeshClient] = []

    @asynccontextmanager
    async def mesh(host: ServiceHost) -> AsyncIterator[MeshClient]:
        if mesh_client is not None:
            client = mesh_client()
        else:
            interceptors = (
                client_interceptors
                if client_interceptors is not None
                else service_interceptors("analytics", data_dir=settings.data_dir)
            )
            client = await MeshClient.from_registry(
                settings.redis_url, ["streaming", "alert"], interceptors=interceptors
            )
        clients.append(client)
        try:
            yield client
        finally:
            clients.clear()
            await client.close()

    @asynccontextmanager
    async def pipeline(host: ServiceHost) -> AsyncIterator[None]:
        pool, client = servicer.pool, clients[0]
        # the database resource started first
        assert pool is not None
        assert servicer.geofences is not None
        tasks: list[asyncio.Task[None]] = []
        consumer: AnalyticsConsumer | None = None
        consumer_task: asyncio.Task[None] | None = None
        if settings.consume:
            telemetry = TelemetryRules(
                default_speed_limit_kmh=settings.telemetry_speed_limit_kmh,
                default_tolerance_kmh=settings.telemetry_tolerance_kmh,
                clock=clock,
            )
            reloader = _GeofenceReloader(servicer.geofences, telemetry)
            await reloader.reload()
            servicer.geofences_changed = reloader.poke
            cameras = CameraConfigs(client.stub("streaming", streaming_pb2_grpc.StreamingServiceStub))
            consumer = AnalyticsConsumer(
                settings.kafka_bootstrap_servers,
                pool,
                cameras,
                lambda config: CameraPipeline(config, clock=clock, settings=pipeline_settings),
                telemetry,
                group_id=settings.consumer_group,
                limits=ConsumerLimits(
                    max_batch_records=settings.max_batch_records,
                    max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
                    fetch_max_bytes=settings.fetch_max_bytes,
                    idle_flush_s=settings.idle_flush_s,
                ),
                topics=topics[:2],
            )
            servicer.consumer = consumer
            consumer_task = asyncio.create_task(_consume(consumer, settings.kafka_bootstrap_servers))
            tasks += [
                consumer_task,
                asyncio.create_task(cameras.follow(settings.kafka_bootstrap_servers, topics[2])),
                asyncio.create_task(reloader.run(settings.geofence_reload_interval_s)),
            ]
        tasks.append(asyncio.create_task(prune_forever(pool, settings.retention_h * 3600)))
        tasks.append(asyncio.create_task(follow_windows(settings.database_url, pool, servicer.live)))
        if settings.relay_alerts:
            relay = OutboxRelay(
                pool,
                client.stub("alert", alert_pb2_grpc.AlertServiceStub),
                batch_size=settings.outbox_batch_size,
                backoff_max_s=settings.outbox_backoff_max_s,
            )
            tasks.append(asyncio.create_task(relay.run(settings.outbox_poll_interval_s)))
        try:
            yield None
        finally:
            if consumer is not None and consumer_task is not None:
                # the batch in progress finishes, every camera is flushed and committed, then the rest stops
                consumer.request_stop()
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(consumer_task), STOP_TIMEOUT_S)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            servicer.consumer = None

    resources: tuple[Resource, ...] = (*auth_resources, database, mesh, pipeline)
    return ServiceSpec(
        name="analytics",
        settings=settings,
        grpc_services=[
            GrpcService.from_generated(analytics_pb2, analytics_pb2_grpc, "AnalyticsService", servicer)
        ],
        authenticator=authenticator,
        resources=resources,
    )


async def _consume(consumer: AnalyticsConsumer, bootstrap_servers: str) -> None:
    """Make sure the topics exist (so the subscription sees them at once), then consume."""
    try:
        created = await asyncio.wait_for(ensure_topics(bootstrap_servers), TOPICS_TIMEOUT_S)
    except Exception as exc:  # best effort: brokers may auto-create topics or forbid creating them
        log.warning("could not ensure Kafka topics", extra={"error": str(exc)})
    else:
        if created:
            log.info("Kafka topics created", extra={"topics": created})
    await consumer.run()


class _GeofenceReloader:
    """Keeps the telemetry rules' geofences in step with the table (this instance's changes at once)."""

    def __init__(self, store: GeofenceStore, rules: TelemetryRules) -> None:
        self._store = store
        self._rules = rules
        self._version: tuple[int, datetime | None] | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Reload soon (a geofence changed here)."""
        self._poked.set()

    async def reload(self) -> None:
        """Load the geofences if they changed."""
        version = await self._store.version()
        if version != self._version:
            self._rules.set_geofences(geofence_rules.rule(g) for g in await self._store.all())
            self._version = version

    async def run(self, interval_s: float) -> None:
        """Reload until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), interval_s)
            self._poked.clear()
            try:
                await self.reload()
            except (asyncpg.PostgresError, *DATABASE_DOWN) as exc:
                log.warning("geofences not reloaded", extra={"error": str(exc)})
