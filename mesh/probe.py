"""Health probes: ask a gRPC server (grpc.health.v1) or an HTTP endpoint whether it is serving."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.tls import TlsSettings, open_channel


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of one probe: a grpc.health.v1 status name (or DOWN) and how long the answer took."""

    status: str
    latency_ms: float
    error: str = ""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"


async def probe_grpc(
    address: str, service: str = "", timeout_s: float = 1.0, tls: TlsSettings | None = None
) -> ProbeResult:
    """Check `service` at `address` (host:port); DOWN with the reason when it does not answer."""
    started = time.perf_counter()
    async with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            return ProbeResult("DOWN", elapsed, f"{exc.code().name}: {exc.details()}")
    elapsed = (time.perf_counter() - started) * 1000
    return ProbeResult(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), elapsed)


async def probe_http(url: str, timeout_s: float = 1.0) -> ProbeResult:
    """GET `url`; SERVING on a 2xx answer, DOWN otherwise."""
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        return ProbeResult("DOWN", (time.perf_counter() - started) * 1000, f"{type(exc).__name__}: {exc}")
    elapsed = (time.perf_counter() - started) * 1000
    if response.is_success:
        return ProbeResult("SERVING", elapsed)
    return ProbeResult("DOWN", elapsed, f"HTTP {response.status_code}")
