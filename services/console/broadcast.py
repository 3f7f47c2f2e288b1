"""Fan-out of status messages to live clients, each with a bounded queue; a laggard is dropped.

``publish`` never awaits a client: it puts the message in every queue and drops (closes) any client whose
queue is full, so one slow reader cannot delay the others or grow memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

DEFAULT_QUEUE_SIZE: Final = 4
"""Messages a client may have unsent before it counts as too slow (4 s at one message per second)."""


class Subscription:
    """One client's queue; ``get()`` returns None once the client was dropped or the broadcaster closed."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self.dropped = False

    def offer(self, message: str) -> bool:
        """Queue ``message``; False (and the subscription ends) when the client is too far behind."""
        if self.dropped:
            return False
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.end()
            return False
        return True

    def end(self) -> None:
        """Stop the subscription: the reader gets None next, whatever was queued is discarded."""
        self.dropped = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> str | None:
        """The next message, or None when the subscription ended."""
        return await self._queue.get()


class Broadcaster:
    """The set of live subscriptions and the latest message (sent first to a new client)."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._size = queue_size
        self._subscriptions: set[Subscription] = set()
        self.latest: str | None = None
        self.dropped_total = 0

    @property
    def clients(self) -> int:
        """Clients subscribed now."""
        return len(self._subscriptions)

    def publish(self, message: str) -> None:
        """Offer ``message`` to every client; slow ones are dropped."""
        self.latest = message
        for subscription in list(self._subscriptions):
            if not subscription.offer(message):
                self._subscriptions.discard(subscription)
                self.dropped_total += 1

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """A subscription for the lifetime of the block, primed with the latest message."""
        subscription = Subscription(self._size)
        if self.latest is not None:
            subscription.offer(self.latest)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for subscription in list(self._subscriptions):
            subscription.end()
        self._subscriptions.clear()
