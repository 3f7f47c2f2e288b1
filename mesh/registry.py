"""Service registry in Redis: instances register with a lease, watchers keep the last known endpoints.

Key layout (``{ns}`` is the namespace, ``itsmesh:registry`` unless a test isolates itself with another):

===================================  ======  ===================================================
key                                  type    contents
===================================  ======  ===================================================
``{ns}:instance:{service}:{id}``     string  the instance record as JSON (``Instance`` fields plus
                                             ``lease_s``), with a TTL of ``lease_s`` (default 10 s)
                                             that the owner's heartbeat renews every ``lease_s / 3``
``{ns}:service:{service}``           set     ids of the service's instances (an index; entries whose
                                             record expired are removed by watchers' re-lists)
``{ns}:services``                    set     names of services that have (or recently had) instances
``{ns}:epoch``                       string  random token; a new value means the dataset was lost
                                             (Redis restarted empty or was flushed)
``{ns}:events``                      pubsub  ``{"op": "up" | "down" | "update", "service": ...,
                                             "instance_id": ...}`` on every register, deregister and
                                             record change
===================================  ======  ===================================================

``Registration`` owns one instance's record: it registers, renews the lease, registers again when the
record vanished (Redis restarted or flushed), keeps retrying with backoff while Redis is down (logging
once per outage, never raising into the service) and deregisters first on a graceful stop.

``Watcher`` keeps the last known endpoints of some or all services in an ``EndpointTable``: announcements
update it at once, a periodic re-list repairs missed messages and drops instances whose lease lapsed
(kill -9). Redis being unreachable never empties it (static stability); after a reconnect or a dataset
reset, re-lists add but do not remove for ``resync_grace_s`` while live instances re-register.

``list_services`` and ``list_instances`` are one-shot reads for the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from mesh.endpoints import (
    EndpointsChange,
    EndpointTable,
    Health,
    Instance,
    Sighting,
    decode_record,
    encode_record,
    renewed_at,
)
from mesh.redis_connect import connect_redis
from mesh.retry import RetryPolicy
from mesh.tasks import stop_task

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE: Final = "itsmesh:registry"
"""Prefix of every registry key and of the events channel."""
DEFAULT_TTL_S: Final = 10.0
"""Lease of an instance record: how long a killed instance stays listed at most."""
DEFAULT_RELIST_INTERVAL_S: Final = 2.0
"""How often a watcher re-reads the registry to repair missed announcements and expired leases."""
DEFAULT_OP_TIMEOUT_S: Final = 2.0
"""Longest a single registry round trip may take before it counts as a failure."""

Op = Literal["up", "down", "update"]
ChangeCallback = Callable[[EndpointsChange], None]
Clock = Callable[[], float]

# What an unreachable, restarting or misbehaving Redis raises; everything else is a bug and propagates.
_REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)

# Removes an index entry only if its record is really gone, so a re-registration racing with the
# re-list cannot lose its fresh entry; drops the service name once its index is empty.
_DROP_IF_EXPIRED: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return 1
"""

_DEREGISTER: Final = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class RegistryUnavailableError(ConnectionError):
    """A one-shot registry read could not reach Redis; worth retrying later."""

    retriable: Final = True


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    """Names of the registry's keys and channel under one namespace (see the module docstring)."""

    namespace: str = DEFAULT_NAMESPACE

    def instance(self, service: str, instance_id: str) -> str:
        """Key of one instance record."""
        return f"{self.namespace}:instance:{service}:{instance_id}"

    def service(self, service: str) -> str:
        """Key of the set of a service's instance ids."""
        return f"{self.namespace}:service:{service}"

    @property
    def services(self) -> str:
        """Key of the set of service names."""
        return f"{self.namespace}:services"

    @property
    def events(self) -> str:
        """Pub/sub channel of up/down/update announcements."""
        return f"{self.namespace}:events"

    @property
    def epoch(self) -> str:
        """Key whose value changes when the registry's dataset is lost."""
        return f"{self.namespace}:epoch"


def open_redis(url: str) -> Redis:
    """A client tuned for discovery: short timeouts and one quick retry, so outages are noticed fast."""
    return connect_redis(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=DEFAULT_OP_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), retries=1),
    )


async def list_services(client: Redis, *, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Names of the registered services, sorted; raises RegistryUnavailableError if Redis is down."""
    keys = RegistryKeys(namespace)
    try:
        async with asyncio.timeout(DEFAULT_OP_TIMEOUT_S):
            names = await client.smembers(keys.services)
    except _REDIS_ERRORS as exc:
        raise RegistryUnavailableError(f"cannot list services: {exc!r}") from exc
    return sorted(_text(name) for name in names)


async def list_instances(
    client: Redis, service: str, *, namespace: str = DEFAULT_NAMESPACE
) -> list[Instance]:
    """The instances of ``service`` whose lease is live, by id; raises RegistryUnavailableError."""
    keys = RegistryKeys(namespace)
    try:
        async with asyncio.timeout(DEFAULT_OP_TIMEOUT_S):
            ids = sorted(_text(member) for member in await client.smembers(keys.service(service)))
            values = await client.mget([keys.instance(service, i) for i in ids]) if ids else []
    except _REDIS_ERRORS as exc:
        raise RegistryUnavailableError(f"cannot list instances of {service}: {exc!r}") from exc
    instances = []
    for instance_id, value in zip(ids, values, strict=True):
        if value is None:
            continue
        try:
            instances.append(decode_record(value)[0])
        except ValueError:
            log.warning("skipping a malformed registry record", extra={"service": service, "id": instance_id})
    return instances


class _Outage:
    """Tracks consecutive failures of one loop and logs an outage once, and its end once."""

    def __init__(self, what: str, clock: Clock) -> None:
        self._what = what
        self._clock = clock
        self.failures = 0
        self._since = 0.0

    def failed(self, exc: BaseException) -> None:
        if self.failures == 0:
            self._since = self._clock()
            log.warning(
                "registry unreachable; %s keeps going and retries with backoff",
                self._what,
                extra={"error": repr(exc)},
            )
        else:
            log.debug("registry still unreachable", extra={"what": self._what, "error": repr(exc)})
        self.failures += 1

    def recovered(self) -> None:
        if self.failures:
            log.info(
                "registry reachable again",
                extra={"what": self._what, "down_s": round(self._clock() - self._since, 3)},
            )
        self.failures = 0


def _backoff_policy(cap_s: float) -> RetryPolicy:
    return RetryPolicy(initial_backoff_seconds=0.1, backoff_multiplier=2.0, max_backoff_seconds=cap_s)


class Registration:
    """Keeps one instance registered while the service runs; ``async with`` or ``start()``/``stop()``.

    ``redis`` is a client (left open on stop) or a URL (the registration opens and closes its own).
    Nothing here raises because Redis is down: failures are logged once per outage and retried.
    """

    def __init__(
        self,
        redis: Redis | str,
        instance: Instance,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        namespace: str = DEFAULT_NAMESPACE,
        op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        if not ttl_s >= 0.01:
            raise ValueError("ttl_s must be at least 0.01 s")
        self._owns_client = isinstance(redis, str)
        self._redis = open_redis(redis) if isinstance(redis, str) else redis
        self._instance = instance
        self._ttl_ms = max(int(ttl_s * 1000), 10)
        self._ttl_s = ttl_s
        self._interval = ttl_s / 3
        self._keys = RegistryKeys(namespace)
        self._op_timeout = op_timeout_s
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not security
        self._backoff = _backoff_policy(min(self._interval, 2.0))
        self._deregister = self._redis.register_script(_DEREGISTER)
        self._lock = asyncio.Lock()
        self._pending: Op | None = "up"  # announcement owed with the next full write; None: record current
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._outage = _Outage(f"registration of {instance.service}/{instance.instance_id}", time.monotonic)

    @property
    def instance(self) -> Instance:
        """The record as this process last set it (what Redis holds once a write succeeds)."""
        return self._instance

    @property
    def ttl_s(self) -> float:
        """The lease length."""
        return self._ttl_s

    @property
    def registered(self) -> bool:
        """Whether the last write reached Redis and nothing is waiting to be written."""
        return self._pending is None and self._outage.failures == 0 and not self._stopped

    async def start(self) -> None:
        """Register now if Redis answers (otherwise in the background) and start the heartbeat."""
        if self._task is not None or self._stopped:
            raise RuntimeError("a registration starts once; make a new one to register again")
        await self._beat_logged()
        self._task = asyncio.create_task(self._run(), name=f"registry-heartbeat-{self._instance.instance_id}")

    async def stop(self) -> None:
        """Graceful stop: end the heartbeat, then deregister (delete record and index entry, announce down).

        If Redis is unreachable the record is left to lapse with its lease; this never raises for that.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            await stop_task(self._task)
        async with self._lock:
            instance = self._instance
            try:
                async with asyncio.timeout(self._op_timeout):
                    await self._deregister(
                        keys=[
                            self._keys.instance(instance.service, instance.instance_id),
                            self._keys.service(instance.service),
                            self._keys.services,
                        ],
                        args=[
                            instance.instance_id,
                            instance.service,
                            self._keys.events,
                            _event("down", instance),
                        ],
                    )
            except _REDIS_ERRORS as exc:
                log.warning(
                    "could not deregister; the record lapses with its lease",
                    extra={"instance": instance.instance_id, "lease_s": self._ttl_s, "error": repr(exc)},
                )
            else:
                log.info(
                    "deregistered", extra={"service": instance.service, "instance": instance.instance_id}
                )
        if self._owns_client:
            await self._redis.aclose()

    async def set_health(self, health: Health) -> bool:
        """Change the registered health; True if Redis has it now, False if it will be written later."""
        return await self.update(dataclasses.replace(self._instance, health=health))

    async def update(self, instance: Instance) -> bool:
        """Replace the record (same service and id) and announce it; False if Redis has it only later."""
        if (instance.service, instance.instance_id) != (self._instance.service, self._instance.instance_id):
            raise ValueError("update cannot change the service or instance id")
        async with self._lock:
            if instance != self._instance:
                self._instance = instance
                if self._pending is None:
                    self._pending = "update"
            if self._stopped:
                return False
            try:
                await self._beat_locked()
            except _REDIS_ERRORS as exc:
                self._outage.failed(exc)
                return False
            self._outage.recovered()
            return True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            failures = self._outage.failures
            delay = self._backoff.backoff(failures, self._rng) if failures else self._interval
            await asyncio.sleep(delay)
            try:
                await self._beat_logged()
            except Exception as exc:
                # A bug must not end the heartbeat: the lease would lapse under a healthy instance.
                log.exception("registry heartbeat failed unexpectedly")
                self._outage.failed(exc)

    async def _beat_logged(self) -> None:
        async with self._lock:
            if self._stopped:
                return
            try:
                await self._beat_locked()
            except _REDIS_ERRORS as exc:
                self._outage.failed(exc)
            else:
                self._outage.recovered()

    async def _beat_locked(self) -> None:
        instance, keys = self._instance, self._keys
        key = keys.instance(instance.service, instance.instance_id)
        async with asyncio.timeout(self._op_timeout):
            if self._pending is None:
                pipe = self._redis.pipeline(transaction=True)
                pipe.pexpire(key, self._ttl_ms)
                pipe.sadd(keys.service(instance.service), instance.instance_id)
                pipe.sadd(keys.services, instance.service)
                renewed, _, _ = await pipe.execute()
                if renewed:
                    return
                log.warning(
                    "registry record vanished (Redis restarted or flushed); registering again",
                    extra={"service": instance.service, "instance": instance.instance_id},
                )
                self._pending = "up"
            op = self._pending
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(key, encode_record(instance, self._ttl_s), px=self._ttl_ms)
            pipe.sadd(keys.service(instance.service), instance.instance_id)
            pipe.sadd(keys.services, instance.service)
            pipe.publish(keys.events, _event(op, instance))
            await pipe.execute()
        self._pending = None
        if op == "up":
            log.info(
                "registered",
                extra={"service": instance.service, "instance": instance.instance_id, "lease_s": self._ttl_s},
            )


class Watcher:
    """The last known endpoints of some services (``services``) or of all (``None``), kept in sync.

    ``endpoints(service)`` answers from memory and never waits for Redis. ``redis`` is a client (left
    open on stop) or a URL (the watcher opens and closes its own). ``on_change`` is called with every
    change of a service's routable endpoints; more callbacks can be added with ``add_listener``.
    """

    def __init__(
        self,
        redis: Redis | str,
        services: Iterable[str] | None = None,
        *,
        relist_interval_s: float = DEFAULT_RELIST_INTERVAL_S,
        resync_grace_s: float = DEFAULT_TTL_S,
        namespace: str = DEFAULT_NAMESPACE,
        on_change: ChangeCallback | None = None,
        op_timeout_s: float = DEFAULT_OP_TIMEOUT_S,
        sync_timeout_s: float = 2.0,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not relist_interval_s > 0.0:
            raise ValueError("relist_interval_s must be positive")
        if isinstance(services, str):
            raise TypeError("services is a collection of names; wrap a single name in a list")
        self._owns_client = isinstance(redis, str)
        self._redis = open_redis(redis) if isinstance(redis, str) else redis
        self._services = frozenset(services) if services is not None else None
        self._interval = relist_interval_s
        self._grace = resync_grace_s
        self._keys = RegistryKeys(namespace)
        self._op_timeout = op_timeout_s
        self._sync_timeout = sync_timeout_s
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not security
        self._backoff = _backoff_policy(min(relist_interval_s, 2.0))
        self._drop_if_expired = self._redis.register_script(_DROP_IF_EXPIRED)
        self._table = EndpointTable()
        self._listeners: list[ChangeCallback] = [on_change] if on_change is not None else []
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._connected = False
        self._epoch: str | None = None
        self._epoch_token = uuid.uuid4().hex
        self._bad_records: set[str] = set()
        self._outage = _Outage("watcher", clock)
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether the last exchange with Redis succeeded (False: serving the last known endpoints)."""
        return self._connected

    @property
    def synced(self) -> bool:
        """Whether at least one full listing has been applied."""
        return self._synced.is_set()

    def endpoints(self, service: str) -> list[Instance]:
        """The routable instances of ``service`` (SERVING, not marked failed), by instance id."""
        return self._table.endpoints(service)

    def instances(self, service: str) -> list[Instance]:
        """Every last known instance of ``service``, routable or not, by instance id."""
        return self._table.instances(service)

    def services(self) -> list[str]:
        """Services with at least one last known instance, sorted."""
        return self._table.services()

    def mark_failed(self, service: str, instance_id: str) -> None:
        """Take an instance out of rotation after a connection failure, until its lease is renewed again."""
        self._emit(self._table.mark_failed(service, instance_id, self._clock()))

    def add_listener(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` on every change of routable endpoints; returns a function that removes it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def wait_for(
        self,
        service: str,
        predicate: Callable[[Sequence[Instance]], bool],
        timeout: float,  # noqa: ASYNC109 - a bounded wait is what this helper is for
    ) -> list[Instance]:
        """Wait until ``predicate(endpoints(service))`` holds and return that list; TimeoutError if not."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                current = self.endpoints(service)
                if predicate(current):
                    return current
                await changed.wait()

    async def wait_synced(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded wait is the point
        """Wait up to ``timeout`` seconds for the first full listing; whether it happened."""
        try:
            async with asyncio.timeout(timeout):
                await self._synced.wait()
        except TimeoutError:
            return False
        return True

    async def refresh(self) -> None:
        """Re-list now instead of at the next interval; raises the Redis error if the listing fails."""
        await self._relist()

    async def start(self) -> None:
        """Start watching; wait up to ``sync_timeout_s`` for a first listing (Redis down is no error)."""
        if self._task is not None:
            raise RuntimeError("watcher already started")
        self._task = asyncio.create_task(self._run(), name="registry-watcher")
        await self.wait_synced(self._sync_timeout)

    async def stop(self) -> None:
        """Stop watching; the last known endpoints stay readable."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)
        self._connected = False
        if self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except _REDIS_ERRORS as exc:
                self._connected = False
                self._outage.failed(exc)
            except Exception as exc:
                # A bug must not end the watch: callers would be stuck with a list that never changes.
                log.exception("registry watcher failed unexpectedly")
                self._connected = False
                self._outage.failed(exc)
            await asyncio.sleep(self._backoff.backoff(max(self._outage.failures, 1), self._rng))

    async def _session(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe before listing, so nothing announced after the listing's snapshot is missed.
            await self._timed(pubsub.subscribe(self._keys.events))
            if self._outage.failures:
                # Instances may have lost their records while Redis was away; let them re-register.
                self._table.start_grace(self._clock(), self._grace)
            await self._relist()
            self._outage.recovered()
            self._connected = True
            self._synced.set()
            next_relist = self._clock() + self._interval
            while True:
                remaining = next_relist - self._clock()
                if remaining <= 0.0:
                    await self._relist()
                    next_relist = self._clock() + self._interval
                    continue
                async with asyncio.timeout(remaining + self._op_timeout):
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
                if message is not None and message.get("type") == "message":
                    await self._on_event(message["data"])
        finally:
            with contextlib.suppress(*_REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def _on_event(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
            op, service, instance_id = event["op"], str(event["service"]), str(event["instance_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed registry event", extra={"data": repr(data)[:200]})
            return
        if self._services is not None and service not in self._services:
            return
        if op == "down":
            self._emit(self._table.remove(service, instance_id))
            return
        key = self._keys.instance(service, instance_id)
        read_at = self._clock()
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(key)
        pipe.pttl(key)
        value, pttl = await self._timed(pipe.execute())
        sighting = self._sighting(key, value, pttl, read_at) if value is not None else None
        if sighting is None or sighting.instance.service != service:
            self._emit(self._table.remove(service, instance_id))
        else:
            self._emit(self._table.upsert(sighting, self._clock()))

    async def _relist(self) -> None:
        keys = self._keys
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.epoch, self._epoch_token, nx=True)
        pipe.get(keys.epoch)
        if self._services is None:
            pipe.smembers(keys.services)
        head = await self._timed(pipe.execute())
        epoch = _text(head[1]) if head[1] is not None else None
        if self._epoch is not None and epoch != self._epoch:
            log.warning(
                "registry dataset was reset; keeping the last known endpoints while instances re-register",
                extra={"grace_s": self._grace},
            )
            self._table.start_grace(self._clock(), self._grace)
        self._epoch = epoch
        if self._services is None:
            services = sorted({_text(name) for name in head[2]} | set(self._table.services()))
        else:
            services = sorted(self._services)

        pipe = self._redis.pipeline(transaction=False)
        for service in services:
            pipe.smembers(keys.service(service))
        members = await self._timed(pipe.execute()) if services else []
        ids = {
            service: sorted(_text(m) for m in found) for service, found in zip(services, members, strict=True)
        }

        read_at = self._clock()
        pipe = self._redis.pipeline(transaction=True)
        for service, instance_ids in ids.items():
            for instance_id in instance_ids:
                pipe.get(keys.instance(service, instance_id))
                pipe.pttl(keys.instance(service, instance_id))
        replies = iter(await self._timed(pipe.execute()) if any(ids.values()) else [])

        sightings: dict[str, list[Sighting]] = {service: [] for service in services}
        expired: list[tuple[str, str]] = []
        for service, instance_ids in ids.items():
            for instance_id in instance_ids:
                key = keys.instance(service, instance_id)
                value, pttl = next(replies), next(replies)
                if value is None:
                    expired.append((service, instance_id))
                    continue
                sighting = self._sighting(key, value, pttl, read_at)
                if sighting is not None and sighting.instance.service == service:
                    sightings[service].append(sighting)
        for service, instance_id in expired:
            await self._timed(
                self._drop_if_expired(
                    keys=[keys.instance(service, instance_id), keys.service(service), keys.services],
                    args=[instance_id, service],
                )
            )
        now = self._clock()
        for service in services:
            self._emit(self._table.replace(service, sightings[service], now))

    def _sighting(self, key: str, value: bytes | str, pttl: int, read_at: float) -> Sighting | None:
        try:
            instance, lease_s = decode_record(value)
        except ValueError as exc:
            if key not in self._bad_records:
                self._bad_records.add(key)
                log.warning("ignoring a malformed registry record", extra={"key": key, "error": str(exc)})
            return None
        self._bad_records.discard(key)
        remaining_s = pttl / 1000 if pttl >= 0 else None
        return Sighting(instance, renewed_at(read_at, remaining_s, lease_s))

    def _emit(self, change: EndpointsChange | None) -> None:
        if change is None:
            return
        log.debug(
            "endpoints changed",
            extra={
                "service": change.service,
                "added": [i.instance_id for i in change.added],
                "removed": [i.instance_id for i in change.removed],
            },
        )
        for callback in list(self._listeners):
            try:
                callback(change)
            except Exception:
                log.exception("endpoint change callback failed", extra={"service": change.service})
        self._changed.set()
        self._changed = asyncio.Event()

    async def _timed(self, awaitable: Awaitable[Any]) -> Any:
        async with asyncio.timeout(self._op_timeout):
            return await awaitable


def _event(op: Op, instance: Instance) -> str:
    return json.dumps({"op": op, "service": instance.service, "instance_id": instance.instance_id})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
