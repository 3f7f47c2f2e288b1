"""The in-process feed of alert changes behind WatchAlerts: publishers never wait for watchers.

Each watcher has a bounded queue; a watcher that falls that far behind is dropped (its stream ends with
RESOURCE_EXHAUSTED and it re-subscribes with a snapshot) instead of slowing RaiseAlert down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from itsmesh.v1 import alert_pb2

QUEUE_SIZE = 1000


@dataclass(eq=False)
class Subscription:
    """One watcher's queue; ``overflowed`` is set when it was dropped for falling behind."""

    queue: asyncio.Queue[alert_pb2.WatchAlertsResponse] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE)
    )
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)


class ChangeFeed:
    """Fans each change out to every current subscriber."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, change: alert_pb2.WatchAlertsResponse) -> None:
        """Queue ``change`` for every watcher (never blocks)."""
        for subscription in list(self._subscribers):
            try:
                subscription.queue.put_nowait(change)
            except asyncio.QueueFull:
                subscription.overflowed.set()
                self._subscribers.discard(subscription)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """A subscription for the duration of the ``with`` block."""
        subscription = Subscription()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)
