"""Console benchmarks, each against a raw baseline in the same run.

- Live-status fan-out: publish → arrival at each of 200 clients, console versus a bare Starlette
  broadcast. Both sides push over Server-Sent Events on loopback (the console's ``/api/status/stream``
  shares the broadcaster and bounded queues with ``/ws/status``); clients are raw asyncio sockets in the
  same process; each message carries its publish time.
- REST façade: ``GET /api/cameras/{id}/thumbnail`` through the console and the mesh to a real streaming
  host, versus the same GetLatestFrame called directly over gRPC. Both hosts run in this process, with the
  console's status loop ticking, as in production.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.host import ServiceHost
from mesh.http import HttpServer
from mesh.migrations import apply_migrations
from mesh.registry import open_redis
from services.console.app import create_app
from services.console.broadcast import Broadcaster
from services.console.config import ConsoleSettings
from services.console.service import build as build_console
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming
from services.streaming.thumbnails import ThumbnailStore
from tests.perf.results import BenchResult

CLIENTS = 200
PADDING = "x" * 4000  # about the size of a status vector with a dozen components


def _bare_app() -> tuple[Starlette, Callable[[str], None], Callable[[], int]]:
    """A bare Starlette SSE broadcast: one unbounded queue per client, no auth, no drop policy."""
    queues: set[asyncio.Queue[str]] = set()

    async def stream(request: Request) -> StreamingResponse:
        queue: asyncio.Queue[str] = asyncio.Queue()
        queues.add(queue)

        async def events() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield f"event: status\ndata: {await queue.get()}\n\n".encode()
            finally:
                queues.discard(queue)

        return StreamingResponse(events(), media_type="text/event-stream")

    def publish(message: str) -> None:
        for queue in queues:
            queue.put_nowait(message)

    return Starlette(routes=[Route("/stream", stream)]), publish, lambda: len(queues)


async def _fan_out_p99_ms(
    port: int, path: str, publish: Callable[[str], None], clients: Callable[[], int], messages: int
) -> float:
    latencies: list[float] = []
    received = [0] * messages

    async def client() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
        return reader, writer

    async def read(reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"data: "):
                body = json.loads(line[6:])
                latencies.append((time.perf_counter() - body["sent"]) * 1000)
                received[body["seq"]] += 1

    connections = [await client() for _ in range(CLIENTS)]
    readers = [asyncio.create_task(read(r)) for r, _ in connections]
    try:
        async with asyncio.timeout(10):
            while clients() < CLIENTS:
                await asyncio.sleep(0.01)
        for seq in range(messages):
            publish(json.dumps({"seq": seq, "sent": time.perf_counter(), "pad": PADDING}))
            async with asyncio.timeout(5):
                while received[seq] < CLIENTS:
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for _, writer in connections:
            writer.close()
    latencies.sort()
    return latencies[int(len(latencies) * 0.99) - 1]


async def _facade_latencies_ms(urls: InfraUrls, calls: int) -> tuple[list[float], list[float]]:
    """Per-call latency of the thumbnail through the console, and of GetLatestFrame called directly."""
    common = {
        "database_url": urls.database_url,
        "redis_url": urls.redis_url,
        "kafka_bootstrap_servers": urls.kafka_bootstrap_servers,
        "bind_host": "127.0.0.1",
        "metrics_port": None,
        "require_auth": False,
        "migrate_on_start": False,
    }
    await apply_migrations(urls.database_url)  # streaming's tables, when no earlier benchmark applied them
    streaming = ServiceHost(
        build_streaming(StreamingSettings(**common, grpc_port=0, register_in_discovery=True))
    )
    await streaming.start()
    # An empty data dir: no service credentials, so calls without a caller's token carry none (no auth here).
    empty = Path(tempfile.mkdtemp(prefix="itsmesh-bench-console-"))
    settings = ConsoleSettings(**common, http_port=0, register_in_discovery=False, data_dir=empty)
    console = ServiceHost(build_console(settings))
    await console.start()
    camera_id = f"bench-{uuid.uuid4().hex[:8]}"
    redis = open_redis(urls.redis_url)
    via_console: list[float] = []
    direct: list[float] = []
    try:
        frame = streaming_pb2.LatestFrame(camera_id=camera_id, sequence=1, jpeg=b"\xff\xd8" + b"x" * 20_000)
        await ThumbnailStore(redis).put(frame)
        request = streaming_pb2.GetLatestFrameRequest(camera_id=camera_id)
        path = f"/api/cameras/{camera_id}/thumbnail"
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{console.http_port}", timeout=10) as http,
            grpc.aio.insecure_channel(f"127.0.0.1:{streaming.grpc_port}") as channel,
        ):
            stub = streaming_pb2_grpc.StreamingServiceStub(channel)
            async with asyncio.timeout(20):  # until discovery lists streaming for the console
                while (await http.get(path)).status_code != 200:
                    await asyncio.sleep(0.1)
            for _ in range(calls):  # interleaved, so machine noise hits both alike
                started = time.perf_counter()
                response = await http.get(path)
                via_console.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
                started = time.perf_counter()
                await stub.GetLatestFrame(request, timeout=10)
                direct.append((time.perf_counter() - started) * 1000)
    finally:
        await redis.aclose()
        await console.stop()
        await streaming.stop()
        shutil.rmtree(empty, ignore_errors=True)
    return via_console, direct


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Fan-out p99 to 200 clients, then the thumbnail route's p50/p99 against direct gRPC."""
    results = await _fan_out(quick)
    via_console, direct = await _facade_latencies_ms(urls, 200 if quick else 1000)
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        results.append(
            BenchResult(
                name=f"console_thumbnail_rest_{name}",
                value=_percentile(via_console, q),
                unit="ms",
                baseline=_percentile(direct, q),
                baseline_name="GetLatestFrame over gRPC directly",
                target="informational (HTTP route + mesh hop, auth off, both hosts in one process)",
            )
        )
    return results


async def _fan_out(quick: bool) -> list[BenchResult]:
    """Alternate bare and console rounds so machine noise hits both alike; median p99 of each."""
    messages = 10 if quick else 30
    rounds = 2 if quick else 4
    broadcaster = Broadcaster()
    console = HttpServer(create_app(broadcaster=broadcaster), "127.0.0.1", 0)
    bare_app, bare_publish, bare_clients = _bare_app()
    bare = HttpServer(bare_app, "127.0.0.1", 0)
    await console.start()
    await bare.start()
    bare_p99, console_p99 = [], []
    try:
        for _ in range(rounds):
            bare_p99.append(await _fan_out_p99_ms(bare.port, "/stream", bare_publish, bare_clients, messages))
            broadcaster.latest = None  # a new client is primed with the latest vector: not part of fan-out
            console_p99.append(
                await _fan_out_p99_ms(
                    console.port,
                    "/api/status/stream",
                    broadcaster.publish,
                    lambda: broadcaster.clients,
                    messages,
                )
            )
            await asyncio.sleep(0.2)  # let the previous round's connections close
    finally:
        await console.stop()
        await bare.stop()
    return [
        BenchResult(
            name="console_fanout_p99_200_clients",
            value=sorted(console_p99)[len(console_p99) // 2],
            unit="ms",
            baseline=sorted(bare_p99)[len(bare_p99) // 2],
            baseline_name="bare Starlette SSE broadcast",
            target="≤ 20 ms",
        )
    ]


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    for result in asyncio.run(_fan_out(quick)):
        print(result, f"ratio={result.ratio:.2f}")
