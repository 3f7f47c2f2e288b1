"""The feed of alert changes behind WatchAlerts: publishers never wait for watchers.

Each watcher has a bounded queue; a watcher that falls that far behind is dropped (its stream ends with
RESOURCE_EXHAUSTED and it re-subscribes with a snapshot) instead of slowing RaiseAlert down. Changes
reach the feed from this instance and, through ``change_bus``, from the others; the same change may so
arrive twice, and changes of one alert made on two instances may cross. Every alert row's update_time
strictly increases with each change (a trigger), so a watcher passes on a change only if it is newer
than the last it passed on for that alert: no duplicates, and per-alert order.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from itsmesh.v1 import alert_pb2

QUEUE_SIZE = 4000
REMEMBERED_ALERTS = 100_000


def revision(alert: alert_pb2.Alert) -> tuple[int, int]:
    """The alert's position in its own change order."""
    return alert.update_time.seconds, alert.update_time.nanos


@dataclass(eq=False)
class Subscription:
    """One watcher's queue; ``overflowed`` is set when it was dropped for falling behind."""

    queue: asyncio.Queue[alert_pb2.WatchAlertsResponse] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE)
    )
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)
    _seen: OrderedDict[str, tuple[int, int]] = field(default_factory=OrderedDict)

    def fresh(self, alert: alert_pb2.Alert) -> bool:
        """Whether ``alert`` is newer than anything this watcher was sent about it (and remember it)."""
        current = revision(alert)
        last = self._seen.get(alert.alert_id)
        if last is not None and current <= last:
            return False
        self._seen[alert.alert_id] = current
        self._seen.move_to_end(alert.alert_id)
        if len(self._seen) > REMEMBERED_ALERTS:
            self._seen.popitem(last=False)
        return True


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
