"""Live metric windows for StreamLiveMetrics: every instance LISTENs for the windows any instance commits
(the writer NOTIFYs their keys inside its transaction, so only committed windows are announced) and fans
them out to its own subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Final

import asyncpg

from services.analytics.model import MetricWindow
from services.analytics.queries import windows_by_keys
from services.analytics.writer import LIVE_CHANNEL

log = logging.getLogger(__name__)

QUEUE_SIZE: Final = 256
RETRY_S: Final = 1.0


class LiveMetrics:
    """Each subscriber gets its own bounded queue; a subscriber too slow to keep up loses the oldest updates
    rather than holding up the pipeline."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Sequence[MetricWindow]]] = set()

    def publish(self, windows: Sequence[MetricWindow]) -> None:
        """Hand ``windows`` (just committed) to every subscriber."""
        if not windows:
            return
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(windows)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Sequence[MetricWindow]]]:
        """A queue of window batches, removed when the block ends."""
        queue: asyncio.Queue[Sequence[MetricWindow]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        """Open subscriptions."""
        return len(self._queues)


async def follow_windows(database_url: str, pool: asyncpg.Pool, live: LiveMetrics) -> None:
    """Publish announced windows to ``live`` until cancelled; reconnects when the database goes away.

    Windows are read only while someone subscribes; announcements meanwhile are dropped.
    """
    announced: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)

    def heard(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        if live.subscribers and not announced.full():
            announced.put_nowait(payload)

    while True:
        connection: Any = None
        try:
            connection = await asyncpg.connect(database_url)
            await connection.add_listener(LIVE_CHANNEL, heard)
            while not connection.is_closed():
                try:
                    payload = await asyncio.wait_for(announced.get(), timeout=1.0)
                except TimeoutError:
                    continue
                live.publish(await windows_by_keys(pool, json.loads(payload)))
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("live window feed lost the database; reconnecting", extra={"error": str(exc)})
        finally:
            if connection is not None:
                await connection.close()
        await asyncio.sleep(RETRY_S)
