"""Shares alert changes between alert instances over Redis pub/sub, so WatchAlerts on any instance sees
changes made through every other one.

Each instance publishes its changes (``{namespace}:alert:changes``, payload = 16-byte instance id +
serialized WatchAlertsResponse) from one task, in the order they happened, and feeds what the others
publish into its own ``ChangeFeed``; watchers drop what they already have (``changes``). If Redis is
unreachable, watchers still see this instance's changes and publishing resumes when it is back (pub/sub
keeps no history: a watcher that must not miss anything re-watches with a snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from itsmesh.v1 import alert_pb2
from services.alert.changes import ChangeFeed
from services.alert.wakeup import stop_if_cancelled

log = logging.getLogger(__name__)

OUTBOX_SIZE = 10_000
RECONNECT_MAX_S = 5.0
_ERRORS = (RedisError, OSError, TimeoutError)


class ChangeBus:
    """Publishes this instance's changes and feeds the others' into ``feed``; ``run`` until cancelled."""

    def __init__(self, redis_url: str, feed: ChangeFeed, namespace: str = "itsmesh") -> None:
        self._redis_url = redis_url
        self._feed = feed
        self.channel = f"{namespace}:alert:changes"
        self.instance_id = uuid.uuid4().bytes
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(OUTBOX_SIZE)
        self.subscribed = asyncio.Event()

    def share(self, change: alert_pb2.WatchAlertsResponse) -> None:
        """Queue a change of this instance for the others (never blocks; drops when Redis is far behind)."""
        try:
            self._outbox.put_nowait(self.instance_id + change.SerializeToString())
        except asyncio.QueueFull:
            log.warning("alert change outbox full; a change is not shared with other instances")

    async def run(self) -> None:
        """Publish and subscribe until cancelled, reconnecting with backoff."""
        redis = Redis.from_url(self._redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._publish(redis))
                tasks.create_task(self._subscribe(redis))
        finally:
            await redis.aclose()

    async def _publish(self, redis: Redis) -> None:
        failures = 0
        while True:
            payload = await self._outbox.get()
            batch = [payload]
            while not self._outbox.empty() and len(batch) < 256:
                batch.append(self._outbox.get_nowait())
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    for item in batch:
                        pipe.publish(self.channel, item)
                    await pipe.execute()
                failures = 0
                # redis-py can swallow a cancel that races its own timeout (Python 3.11): a stop asked
                # for during the write must still end this loop, not leave it waiting on the outbox
                stop_if_cancelled()
            except _ERRORS as exc:
                stop_if_cancelled()
                failures += 1
                if failures == 1:
                    log.warning("cannot share alert changes over Redis", extra={"error": str(exc)})
                await asyncio.sleep(min(0.1 * 2**failures, RECONNECT_MAX_S))

    async def _subscribe(self, redis: Redis) -> None:
        failures = 0
        while True:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                failures = 0
                while True:
                    try:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    except asyncio.CancelledError:
                        # redis-py's read timeout (asyncio.timeout) can, on Python 3.11, leave a stray
                        # cancel behind; only a cancel someone asked for ends the subscription
                        if _asked_to_stop():
                            raise
                        continue
                    stop_if_cancelled()
                    if message is not None and message.get("type") == "message":
                        self._received(message["data"])
            except _ERRORS as exc:
                stop_if_cancelled()
                self.subscribed.clear()
                failures += 1
                if failures == 1:
                    log.warning("cannot receive alert changes over Redis", extra={"error": str(exc)})
                await asyncio.sleep(min(0.1 * 2**failures, RECONNECT_MAX_S))
            finally:
                with contextlib.suppress(*_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    def _received(self, data: bytes) -> None:
        if data[:16] == self.instance_id:
            return  # ours: local watchers had it already
        change = alert_pb2.WatchAlertsResponse()
        try:
            change.ParseFromString(data[16:])
        except DecodeError:  # a malformed message must not end the subscription
            log.warning("ignoring a malformed alert change from Redis")
            return
        self._feed.publish(change)


def _asked_to_stop() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
