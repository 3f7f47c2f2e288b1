"""Relays the registry's outbox to Kafka: config-changed events leave after their transaction commits.

The registry writes each CameraConfigChanged event into ``streaming.outbox`` in the transaction of the
camera change, then waits (at most ``publish_wait_s``) for the relay to publish it, so normally the event is
in Kafka when the RPC returns, ahead of the camera's later events. The relay publishes the unpublished rows
in order (acks=all), then marks them. While Kafka is down the change still succeeds, the rows wait and the
relay retries, so an outage delays events and loses none; a crash between publishing and marking publishes
a row again with the same event id, which consumers drop (they are idempotent on ``event-id``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from itsmesh.v1 import events_pb2
from mesh.events import EventPublisher, PublishError
from mesh.pg_pool import DATABASE_DOWN
from services.streaming.store import Outbox, OutboxRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How the relay polls, batches and retries."""

    poll_s: float = 1.0
    """Rows written by other instances (or left by a failed attempt) are found at least this often."""
    batch_rows: int = 100
    publish_timeout_s: float = 10.0
    """A batch Kafka has not acknowledged within this time is offered again later."""
    retry_s: float = 1.0
    keep_published_s: float = 24 * 3600.0
    """Published rows are deleted after this long (kept meanwhile for inspection)."""
    prune_every_s: float = 600.0
    publish_wait_s: float = 2.0
    """How long a registry change waits for its event to reach Kafka before returning without it."""


class OutboxRelay:
    """Publishes outbox rows; ``run()`` is owned by the service, ``nudge()`` is called after a change."""

    def __init__(
        self, outbox: Outbox, publisher: EventPublisher, settings: RelaySettings | None = None
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self.settings = settings or RelaySettings()
        self._wake = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def nudge(self) -> None:
        """A row was committed: relay it now rather than at the next poll."""
        self._wake.set()

    async def published(self, row_id: int) -> bool:
        """Relay the committed row ``row_id`` now; True once this relay published it, False after
        ``publish_wait_s`` (Kafka down or slow, or another instance relaying it: it goes out later)."""
        waiter = self._waiters.setdefault(row_id, asyncio.get_running_loop().create_future())
        self.nudge()
        try:
            async with asyncio.timeout(self.settings.publish_wait_s):
                await asyncio.shield(waiter)
            return True
        except TimeoutError:
            log.info("config event committed; Kafka has not taken it yet", extra={"outbox_id": row_id})
            return False
        finally:
            self._waiters.pop(row_id, None)

    async def run(self) -> None:
        """Relay until cancelled."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        failing = False
        while True:
            self._wake.clear()
            try:
                published = await self.relay_once()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + settings.prune_every_s
                    await self._outbox.prune(settings.keep_published_s)
            except (PublishError, TimeoutError, asyncpg.PostgresError, *DATABASE_DOWN) as exc:
                if not failing:  # once per outage
                    log.warning("outbox not relayed; retrying", extra={"error": str(exc)})
                failing = True
                await asyncio.sleep(settings.retry_s)
                continue
            if failing:
                log.info("outbox relay resumed")
                failing = False
            if published == settings.batch_rows:
                continue  # more may be waiting
            try:
                async with asyncio.timeout(settings.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def relay_once(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        relayed = await self._outbox.relay(self.settings.batch_rows, self._publish)
        for row_id in relayed:  # marked published (committed): tell the changes waiting for them
            waiter = self._waiters.get(row_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return len(relayed)

    async def _publish(self, rows: list[OutboxRow]) -> None:
        async with asyncio.timeout(self.settings.publish_timeout_s):
            acks = [
                await self._publisher.publish(
                    row.event.topic,
                    row.event.key,
                    events_pb2.CameraEvent.FromString(row.event.payload),
                    row.event.event_id,
                )
                for row in rows
            ]
            for ack in acks:
                await ack
