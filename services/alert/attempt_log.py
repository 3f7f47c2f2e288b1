"""Records delivery attempts in batches: attempts that finish while a write is under way go together in
the next one, so a burst of sends costs a few statements instead of one each. ``record`` returns only once
its attempt is stored (the sender keeps its lease until then)."""

from __future__ import annotations

import asyncio
import logging

from services.alert.store import Attempt, DeliveryStore

log = logging.getLogger(__name__)

MAX_BATCH = 256


class AttemptLog:
    """One writer task at a time drains the queue; ``drain`` waits for what was handed in so far."""

    def __init__(self, store: DeliveryStore) -> None:
        self._store = store
        self._queue: list[tuple[Attempt, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, attempt: Attempt) -> None:
        """Store ``attempt``; raises what storing it raised. A cancelled caller's attempt is still stored."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((attempt, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await future

    async def drain(self) -> None:
        """Wait until every attempt handed in so far is written (or failed)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        batch: list[tuple[Attempt, asyncio.Future[None]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._write_batch(batch)
        except asyncio.CancelledError:  # stopping: nobody waits forever for a write that will not come
            for _, future in (*batch, *self._queue):
                future.cancel()
            self._queue = []
            raise

    async def _write_batch(self, batch: list[tuple[Attempt, asyncio.Future[None]]]) -> None:
        try:
            await self._store.record_attempts([attempt for attempt, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # one bad attempt (e.g. recorded by another instance already) must not lose the others
            log.warning("batched attempt write failed; writing one by one", extra={"error": str(exc)})
            for attempt, future in batch:
                try:
                    await self._store.record_attempts([attempt])
                except Exception as one:
                    _settle(future, one)
                else:
                    _settle(future, None)
            return
        for _, future in batch:
            _settle(future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled; the attempt was written all the same
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
