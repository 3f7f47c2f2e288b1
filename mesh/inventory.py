"""What is running right now: every registered instance with its health, breaker states and error rate.

Read by `itsmesh status` and the console. Every check runs concurrently with a timeout, so one dead
instance shows as DOWN instead of stalling the others.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from mesh.client import BreakerRecord, read_breakers
from mesh.endpoints import Instance
from mesh.probe import ProbeResult, probe_grpc
from mesh.registry import list_instances, list_services
from mesh.tls import TlsSettings

_REQUESTS = "itsmesh_grpc_server_requests"


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """Server-side RPCs an instance has answered since it started, and how many did not end OK."""

    total: float = 0.0
    errors: float = 0.0

    def since(self, earlier: RequestCounts) -> RequestCounts:
        """The calls between `earlier` and this sample."""
        return RequestCounts(self.total - earlier.total, self.errors - earlier.errors)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.total if self.total else None


@dataclass(frozen=True, slots=True)
class InstanceReport:
    """One instance as `itsmesh status` shows it."""

    instance: Instance
    health: ProbeResult
    breakers: list[BreakerRecord] = field(default_factory=list)
    lifetime: RequestCounts | None = None
    recent: RequestCounts | None = None
    recent_window_s: float = 0.0


async def scrape_request_counts(host: str, metrics_port: int, timeout_s: float = 1.0) -> RequestCounts | None:
    """Sum the instance's server request counters (errors = code other than OK); None if unreachable."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(f"http://{host}:{metrics_port}/metrics")
            response.raise_for_status()
    except httpx.HTTPError:
        return None
    total = errors = 0.0
    for family in text_string_to_metric_families(response.text):
        if family.name != _REQUESTS:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                total += sample.value
                if sample.labels.get("code") != "OK":
                    errors += sample.value
    return RequestCounts(total, errors)


async def collect_inventory(
    redis: Redis, *, window_s: float = 1.0, timeout_s: float = 1.0
) -> list[InstanceReport]:
    """Every registered instance of every service, probed concurrently; raises if Redis is unreachable."""
    services = await list_services(redis)
    per_service = await asyncio.gather(*(list_instances(redis, s) for s in services))
    breakers = await asyncio.gather(*(read_breakers(redis, s) for s in services))
    instances = [i for group in per_service for i in group]
    breaker_by_address = {addr: rec for group in breakers for addr, rec in group.items()}

    def metrics_target(instance: Instance) -> tuple[str, int] | None:
        port = instance.metadata.get("metrics_port")
        return (instance.address.rsplit(":", 1)[0], int(port)) if port else None

    async def counts(instance: Instance) -> RequestCounts | None:
        target = metrics_target(instance)
        return await scrape_request_counts(*target, timeout_s=timeout_s) if target else None

    first = await asyncio.gather(*(counts(i) for i in instances))
    started = time.monotonic()
    tls = TlsSettings()  # ITSMESH_TLS_*: probe mTLS meshes with this process's certificate
    health = await asyncio.gather(*(probe_grpc(i.address, timeout_s=timeout_s, tls=tls) for i in instances))
    await asyncio.sleep(max(0.0, window_s - (time.monotonic() - started)))
    second = await asyncio.gather(*(counts(i) for i in instances))
    elapsed = time.monotonic() - started
    return [
        InstanceReport(
            instance=instance,
            health=probe,
            breakers=[breaker_by_address[instance.address]] if instance.address in breaker_by_address else [],
            lifetime=after,
            recent=after.since(before) if after and before else None,
            recent_window_s=elapsed,
        )
        for instance, probe, before, after in zip(instances, health, first, second, strict=True)
    ]
