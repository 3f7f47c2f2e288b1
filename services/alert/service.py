"""Assembles the alert process for the service host.

Resources, started in this order and closed in reverse: token verification (when auth is on), then the
PostgreSQL pool, which attaches the stores to the servicer; then the routing configuration, loaded
from its file and re-read whenever the file's mtime changes; then the workers: delivery, group flusher,
escalation, suppression recheck, the Redis change bus (WatchAlerts across instances) and the camera-event
consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from itsmesh.v1 import alert_pb2, alert_pb2_grpc
from mesh.events import EventPublisher, KafkaSettings, PublishError
from mesh.host import GrpcService, Resource, ServiceHost, ServiceSpec
from mesh.pg_pool import keep_session
from mesh.tokens import token_auth
from services.alert.backoff import Backoff
from services.alert.camera_consumer import consume_camera_events
from services.alert.change_bus import ChangeBus
from services.alert.config import AlertSettings
from services.alert.delivery import MAX_IN_FLIGHT, DeliveryWorker
from services.alert.escalator import Escalator
from services.alert.flusher import GroupFlusher
from services.alert.group_store import GroupStore
from services.alert.http_post import http_poster
from services.alert.notifier import Notifier
from services.alert.routing import RoutingConfigError
from services.alert.routing_source import RoutingSource
from services.alert.senders import Senders
from services.alert.server import AlertServicer, Clock, utc_now
from services.alert.store import AlertStore, DeliveryStore, StatisticsStore
from services.alert.suppression import SuppressionChecker
from services.alert.wakeup import Wakeup

log = logging.getLogger(__name__)

CONNECT_RETRY_S = 1.0


def build(
    settings: AlertSettings | None = None, *, clock: Clock = utc_now, kafka: KafkaSettings | None = None
) -> ServiceSpec:
    """The alert service as the host runs it."""
    settings = settings or AlertSettings()
    servicer = AlertServicer(clock, RoutingSource(settings.routing_config_path))
    due_groups, due_deliveries, recheck = Wakeup(), Wakeup(), Wakeup()
    servicer.suppression_may_have_ended = recheck.ring
    authenticator, auth_resources = token_auth(settings)  # every RPC but health/reflection needs a token

    @asynccontextmanager
    async def database(host: ServiceHost) -> AsyncIterator[asyncpg.Pool]:
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=10, reset=keep_session)
        try:
            servicer.draining = host.draining
            servicer.store = AlertStore(pool)
            servicer.deliveries = DeliveryStore(pool)
            servicer.statistics = StatisticsStore(pool)
            servicer.groups = GroupStore(pool)
            servicer.notifier = Notifier(
                servicer.store,
                servicer.deliveries,
                servicer.groups,
                servicer.routing,
                wake_groups=due_groups.ring,
                wake_deliveries=due_deliveries.ring,
            )
            yield pool
        finally:
            servicer.store = servicer.deliveries = servicer.notifier = servicer.statistics = None
            servicer.groups = None
            await pool.close()

    @asynccontextmanager
    async def routing(host: ServiceHost) -> AsyncIterator[RoutingSource]:
        # A bad file at start is logged and kept in last_reload_error; the service runs without routes
        # rather than not at all, and the watcher applies the file once it is fixed.
        source = servicer.routing
        if source.path is not None:
            with contextlib.suppress(RoutingConfigError):
                source.reload(clock())
        watcher = asyncio.create_task(source.watch(settings.routing_reload_interval_s, clock))
        try:
            yield source
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    @asynccontextmanager
    async def delivery(host: ServiceHost) -> AsyncIterator[DeliveryWorker]:
        assert servicer.deliveries is not None  # the database resource started first
        publisher = EventPublisher(settings.kafka_bootstrap_servers, kafka or KafkaSettings())
        backoff = Backoff(
            base_s=settings.delivery_backoff_base_s,
            max_s=settings.delivery_backoff_max_s,
            max_attempts=settings.delivery_max_attempts,
        )
        # as many connections as sends in flight: a burst must not time out waiting for the pool
        async with http_poster(MAX_IN_FLIGHT) as http:
            worker = DeliveryWorker(
                servicer.deliveries,
                servicer.routing,
                Senders(http, publisher, settings.console_url),
                backoff,
                clock,
            )
            # The broker may come up after us: connect in the background; until then a Kafka receiver's
            # attempts fail as UNREACHABLE and are retried with backoff like any other receiver.
            assert servicer.store is not None
            assert servicer.groups is not None
            assert servicer.notifier is not None
            escalator = Escalator(
                servicer.store, servicer.deliveries, servicer.routing, clock, servicer.escalated
            )
            flusher = GroupFlusher(servicer.groups, clock, due_deliveries.ring, worker)
            checker = SuppressionChecker(servicer.notifier, clock, servicer.suppression_changed)
            tasks = [
                asyncio.create_task(_connect(publisher)),
                asyncio.create_task(worker.run(settings.delivery_poll_interval_s, due_deliveries)),
                asyncio.create_task(flusher.run(settings.delivery_poll_interval_s, due_groups)),
                asyncio.create_task(escalator.run(settings.escalation_poll_interval_s)),
                asyncio.create_task(checker.run(settings.suppression_recheck_interval_s, recheck)),
            ]
            if settings.share_changes_via_redis:
                bus = ChangeBus(settings.redis_url, servicer.changes)
                servicer.share_change = bus.share
                tasks.append(asyncio.create_task(bus.run()))
            if settings.consume_camera_events:
                consumer = consume_camera_events(
                    settings.kafka_bootstrap_servers, servicer.apply_raise, clock
                )
                tasks.append(asyncio.create_task(consumer))
            servicer.notifier.sink = worker  # notifications due at once go straight to the worker
            try:
                yield worker
            finally:
                servicer.notifier.sink = None
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                servicer.share_change = lambda change: None
                await publisher.stop()

    resources: tuple[Resource, ...] = (*auth_resources, database, routing, delivery)
    return ServiceSpec(
        name="alert",
        settings=settings,
        grpc_services=[GrpcService.from_generated(alert_pb2, alert_pb2_grpc, "AlertService", servicer)],
        authenticator=authenticator,
        resources=resources,
    )


async def _connect(publisher: EventPublisher) -> None:
    """Start the publisher, retrying until the broker answers."""
    while True:
        try:
            await publisher.start()
            return
        except PublishError as exc:
            log.warning("Kafka not reachable yet; retrying", extra={"error": str(exc)})
            await asyncio.sleep(CONNECT_RETRY_S)
