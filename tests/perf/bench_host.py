"""Unary RPC throughput through the service host versus a bare grpc.aio server with the same servicer."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from infrastructure.embedded import InfraUrls
from mesh.host import ServiceHost
from services.streaming.config import StreamingSettings
from services.streaming.service import build
from tests.perf.results import BenchResult

CONCURRENCY = 16


async def _rps(address: str, seconds: float) -> float:
    """Health Check calls per second from CONCURRENCY concurrent callers over one channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        await stub.Check(request)
        stop_at = time.perf_counter() + seconds
        counts = [0] * CONCURRENCY

        async def caller(i: int) -> None:
            while time.perf_counter() < stop_at:
                await stub.Check(request)
                counts[i] += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(CONCURRENCY)))
        return sum(counts) / (time.perf_counter() - started)


async def _raw_server() -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Alternate raw and host rounds so machine noise hits both alike."""
    seconds = 1.0 if quick else 3.0
    rounds = 2 if quick else 4
    raw_server, raw_port = await _raw_server()
    settings = StreamingSettings(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        bind_host="127.0.0.1",
        grpc_port=0,
        migrate_on_start=False,
    )
    host = ServiceHost(build(settings))
    await host.start()
    raw, hosted = [], []
    try:
        for _ in range(rounds):
            raw.append(await _rps(f"127.0.0.1:{raw_port}", seconds))
            hosted.append(await _rps(f"127.0.0.1:{host.grpc_port}", seconds))
    finally:
        await host.stop()
        await raw_server.stop(None)
    return [
        BenchResult(
            name="host_unary_rps",
            value=sorted(hosted)[len(hosted) // 2],
            unit="req/s",
            baseline=sorted(raw)[len(raw) // 2],
            baseline_name="raw grpc.aio",
            target="ratio ≥ 0.9",
        )
    ]
