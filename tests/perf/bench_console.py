"""Live-status fan-out: publish → arrival at each of 200 clients, console versus a bare Starlette broadcast.

The installed uvicorn has no WebSocket library, so both sides push over Server-Sent Events on loopback
(the console's ``/api/status/stream``, which shares the broadcaster and bounded queues with ``/ws/status``).
Clients are raw asyncio sockets in the same process; each message carries its publish time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from infrastructure.embedded import InfraUrls
from mesh.http import HttpServer
from services.console.app import create_app
from services.console.broadcast import Broadcaster
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


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
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
    for result in asyncio.run(run(quick, InfraUrls("", "", "", ()))):
        print(result, f"ratio={result.ratio:.2f}")
