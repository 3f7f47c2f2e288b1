"""The console's checks of PostgreSQL, Redis, Kafka and every registered instance (the I/O half).

Each checker keeps its connection between ticks and reconnects after a failure; every check is bounded by
the aggregator's timeout, so a dead component costs one timeout and never stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from google.protobuf import descriptor_pool
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from mesh.client import read_breakers
from mesh.endpoints import Instance
from mesh.probe import probe_grpc
from mesh.registry import list_instances, list_services, open_redis
from services.console.status import (
    ComponentStatus,
    by_latency,
    down,
    histogram_quantile,
    instance_status,
    is_server_error,
    rate,
)

log = logging.getLogger(__name__)

P99_WINDOW_S: Final = 10.0
"""Span of the latency percentile shown per instance."""


class PostgresCheck:
    """Latency, connections, database size and whether the timescaledb extension is installed."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None

    async def __call__(self) -> ComponentStatus:
        started = time.perf_counter()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self._url, timeout=2.0)
            conn = self._conn
            await conn.fetchval("SELECT 1")
            latency = (time.perf_counter() - started) * 1000
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM pg_stat_activity) AS connections,"
                " current_setting('max_connections')::int AS max_connections,"
                " pg_database_size(current_database()) AS size_bytes,"
                " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb') AS timescaledb,"
                " current_setting('server_version') AS version"
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await self.close()
            return down("postgresql", "postgresql", f"{type(exc).__name__}: {exc}")
        assert row is not None
        details = {
            "connections": row["connections"],
            "max_connections": row["max_connections"],
            "database_size_bytes": row["size_bytes"],
            "timescaledb": row["timescaledb"] is not None,
            "timescaledb_version": row["timescaledb"],
            "server_version": row["version"],
        }
        return ComponentStatus("postgresql", "postgresql", by_latency(latency), latency, details)

    async def close(self) -> None:
        """Drop the connection (the next check reconnects)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


class RedisCheck:
    """Latency, memory, keys and keyspace hit rate from INFO."""

    def __init__(self, client: Redis) -> None:
        self._redis = client

    async def __call__(self) -> ComponentStatus:
        started = time.perf_counter()
        try:
            await self._redis.ping()
            latency = (time.perf_counter() - started) * 1000
            info: dict[str, Any] = await self._redis.info()
            keys = await self._redis.dbsize()
        except (OSError, TimeoutError, ConnectionError) as exc:
            return down("redis", "redis", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # redis.exceptions.RedisError and friends
            return down("redis", "redis", f"{type(exc).__name__}: {exc}")
        hits = float(info.get("keyspace_hits", 0))
        misses = float(info.get("keyspace_misses", 0))
        details = {
            "used_memory_bytes": info.get("used_memory"),
            "maxmemory_bytes": info.get("maxmemory"),
            "keys": keys,
            "connected_clients": info.get("connected_clients"),
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "server_version": info.get("redis_version") or info.get("valkey_version"),
            "uptime_s": info.get("uptime_in_seconds"),
        }
        return ComponentStatus("redis", "redis", by_latency(latency), latency, details)


class KafkaCheck:
    """Brokers, topics, partitions and committed-offset lag per consumer group and topic.

    Lag needs the consumer-group APIs and end offsets; a broker that lacks one still shows as up with
    the details it gave and the failure named in ``details``.
    """

    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap = bootstrap_servers
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admin_start: asyncio.Future[None] | None = None
        self._consumer_start: asyncio.Future[None] | None = None

    async def __call__(self) -> ComponentStatus:
        started = time.perf_counter()
        try:
            admin = await self._started_admin()
            cluster = await admin.describe_cluster()
            latency = (time.perf_counter() - started) * 1000
            topics = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
            described = await admin.describe_topics(topics) if topics else []
        except Exception as exc:  # aiokafka raises KafkaError, OSError and assertion errors alike
            await self.close()
            return down("kafka", "kafka", f"{type(exc).__name__}: {exc}")
        partitions = {d["topic"]: len(d.get("partitions", [])) for d in described if not d.get("error_code")}
        details: dict[str, Any] = {
            "brokers": len(cluster.get("brokers", [])),
            "topics": len(topics),
            "partitions": sum(partitions.values()),
        }
        try:
            every = [TopicPartition(topic, i) for topic, count in partitions.items() for i in range(count)]
            details["consumer_lag"] = await self._lag(admin, every)
        except Exception as exc:  # degrade gracefully: lag is a detail, not the broker's health
            details["consumer_lag"] = None
            details["consumer_lag_error"] = f"{type(exc).__name__}: {exc}"[:200]
        return ComponentStatus("kafka", "kafka", by_latency(latency), latency, details)

    async def _started_admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, request_timeout_ms=2000)
            self._admin_start = asyncio.ensure_future(self._admin.start())
        assert self._admin_start is not None
        # Shielded: connecting may take longer than one check, and a tick's timeout must not undo it.
        await asyncio.shield(self._admin_start)
        return self._admin

    async def _lag(
        self, admin: AIOKafkaAdminClient, partitions: list[TopicPartition]
    ) -> dict[str, dict[str, int]]:
        """group → topic → messages not yet committed."""
        groups = [str(g[0]) for g in await admin.list_consumer_groups()]
        committed: dict[str, dict[TopicPartition, int]] = {}
        if not partitions:
            return {group: {} for group in groups}
        for group in groups:
            # Partitions named explicitly: the embedded broker (Tansu) answers the "all partitions" form of
            # OffsetFetch in a shape aiokafka 0.14 cannot decode, and drops the connection.
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        wanted = {tp for offsets in committed.values() for tp in offsets}
        if not wanted:
            return {group: {} for group in groups}
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, request_timeout_ms=2000)
            self._consumer_start = asyncio.ensure_future(self._consumer.start())
        assert self._consumer_start is not None
        # Shielded: connecting may take longer than one check, and a tick's timeout must not undo it.
        await asyncio.shield(self._consumer_start)
        ends = await self._consumer.end_offsets(list(wanted))
        lag: dict[str, dict[str, int]] = {}
        for group, offsets in committed.items():
            per_topic: dict[str, int] = {}
            for tp, offset in offsets.items():
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, ends.get(tp, offset) - offset)
            lag[group] = per_topic
        return lag

    async def close(self) -> None:
        """Drop the clients (the next check reconnects)."""
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        for start in (self._admin_start, self._consumer_start):
            if start is not None and not start.done():
                start.cancel()
                await asyncio.gather(start, return_exceptions=True)
        self._admin_start = self._consumer_start = None
        for client in (consumer, admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close() if isinstance(client, AIOKafkaAdminClient) else await client.stop()


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """What an instance's Prometheus endpoint says at one moment."""

    at: float
    requests: float
    errors: float
    in_flight: float | None
    cpu_seconds: float | None
    memory_bytes: float | None
    latency_buckets: dict[float, float] = field(default_factory=dict)
    """Cumulative count per ``le`` bound of unary RPC latencies (seconds), every method together."""


async def scrape_metrics(
    client: httpx.AsyncClient, host: str, port: int, now: float, service: str | None = None
) -> MetricsSample | None:
    """One scrape of an instance's /metrics; None when it does not answer.

    With ``service``, only the RPC series labelled with that service count: hosts sharing a process (as in
    tests) share one registry, and each must show its own traffic.
    """
    try:
        response = await client.get(f"http://{host}:{port}/metrics")
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    requests = errors = 0.0
    in_flight = cpu = memory = None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if service is not None and sample.labels.get("service", service) != service:
                continue
            if sample.name == "itsmesh_grpc_server_latency_seconds_bucket":
                # A stream's "latency" is how long it stayed open: it would swamp the unary percentiles.
                if not is_stream_method("", sample.labels.get("method", "")):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "itsmesh_grpc_server_requests_total":
                requests += sample.value
                if is_server_error(sample.labels.get("code", "")):
                    errors += sample.value
            elif sample.name == "itsmesh_grpc_server_in_flight":
                in_flight = (in_flight or 0.0) + sample.value
            elif sample.name == "process_cpu_seconds_total":
                cpu = sample.value
            elif sample.name == "process_resident_memory_bytes":
                memory = sample.value
    return MetricsSample(now, requests, errors, in_flight, cpu, memory, buckets)


@lru_cache(maxsize=1024)
def is_stream_method(service: str, method: str) -> bool:
    """Whether the proto declares ``service``/``method`` streaming (``method`` may be ``service/method``)."""
    if "/" in method:
        service, _, method = method.rpartition("/")
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service)
    except KeyError:
        return False
    found = descriptor.methods_by_name.get(method)
    return found is not None and (found.client_streaming or found.server_streaming)


class InstanceChecks:
    """Every registered instance: grpc.health status and latency, version, uptime, rates and breakers."""

    def __init__(self, redis: Redis, *, timeout_s: float, namespace: str | None = None) -> None:
        self._redis = redis
        self._timeout = timeout_s
        self._namespace = namespace
        self._previous: dict[str, MetricsSample] = {}
        # Older samples per instance: the p99 spans P99_WINDOW_S, since one second holds too few calls.
        self._history: dict[str, deque[MetricsSample]] = {}
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def __call__(self, now: float, wall: float) -> list[ComponentStatus]:
        """Raises when the registry cannot be read (the caller shows discovery as unknown)."""
        ns = {} if self._namespace is None else {"namespace": self._namespace}
        services = await list_services(self._redis, **ns)
        listed = await asyncio.gather(*(list_instances(self._redis, s, **ns) for s in services))
        breakers = await asyncio.gather(*(read_breakers(self._redis, s) for s in services))
        breaker_by_address = {addr: rec for group in breakers for addr, rec in group.items()}
        instances = [i for group in listed for i in group]
        results = await asyncio.gather(*(self._one(i, breaker_by_address, now, wall) for i in instances))
        alive = {i.instance_id for i in instances}
        self._previous = {k: v for k, v in self._previous.items() if k in alive}
        self._history = {k: v for k, v in self._history.items() if k in alive}
        return list(results)

    async def _one(
        self, instance: Instance, breakers: dict[str, Any], now: float, wall: float
    ) -> ComponentStatus:
        name = f"{instance.service}/{instance.instance_id}"
        host = instance.address.rsplit(":", 1)[0]
        port = instance.metadata.get("metrics_port")
        probe_task = probe_grpc(instance.address, timeout_s=self._timeout)
        if port:
            scrape = scrape_metrics(self._http, host, int(port), now, instance.service)
            probe, sample = await asyncio.gather(probe_task, scrape)
        else:
            probe, sample = await probe_task, None
        record = breakers.get(instance.address)
        breaker_state = record.state if record is not None else "closed"
        details: dict[str, Any] = {
            "service": instance.service,
            "instance_id": instance.instance_id,
            "address": instance.address,
            "zone": instance.zone,
            "version": instance.version,
            "health": probe.status,
            "uptime_s": round(wall - instance.started_at, 1) if instance.started_at else None,
            "breaker": breaker_state,
            "rps": None,
            "error_rate": None,
            "in_flight": None,
            "cpu_percent": None,
            "memory_bytes": None,
            "latency_p99_ms": None,
        }
        previous = self._previous.get(instance.instance_id)
        if sample is not None:
            self._previous[instance.instance_id] = sample
            oldest = self._window_start(instance.instance_id, sample)
            p99 = histogram_quantile(0.99, sample.latency_buckets, oldest.latency_buckets)
            details["latency_p99_ms"] = None if p99 is None else round(p99 * 1000, 3)
            details["in_flight"] = sample.in_flight
            details["memory_bytes"] = sample.memory_bytes
            if previous is not None:
                seconds = sample.at - previous.at
                rps = rate(sample.requests, previous.requests, seconds)
                err = rate(sample.errors, previous.errors, seconds)
                details["rps"] = None if rps is None else round(rps, 3)
                details["error_rate"] = round(err / rps, 4) if rps and err is not None else None
                if sample.cpu_seconds is not None and previous.cpu_seconds is not None:
                    cpu = rate(sample.cpu_seconds, previous.cpu_seconds, seconds)
                    details["cpu_percent"] = None if cpu is None else round(cpu * 100, 1)
        status = instance_status(probe.status, instance.health, int(breaker_state == "open"))
        return ComponentStatus(name, instance.service, status, probe.latency_ms, details, probe.error)

    def _window_start(self, instance_id: str, sample: MetricsSample) -> MetricsSample:
        """The oldest kept sample within P99_WINDOW_S of ``sample`` (which is then kept too)."""
        history = self._history.setdefault(instance_id, deque())
        while history and sample.at - history[0].at > P99_WINDOW_S:
            history.popleft()
        oldest = history[0] if history else sample
        history.append(sample)
        return oldest

    async def close(self) -> None:
        """Close the scrape client."""
        await self._http.aclose()


def default_redis(url: str) -> Redis:
    """The client the console reads discovery and Redis health with."""
    return open_redis(url)
