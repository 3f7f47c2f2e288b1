"""Mesh client versus a raw grpc.aio channel to the same servers, in the same run (issue: mesh library).

Figures: unary and bidi throughput at concurrency 100, added latency at a fixed 500 rps, attempts per
request during a total outage, calls a failing endpoint receives before it leaves rotation, and how fast
a discovery change reaches a watcher.

Throughput and latency are measured against an echo server in a process of its own (with every server
interceptor), as a mesh peer runs; the CPU time each side spends per call is reported beside the rates, so
the mesh's cost to the caller shows even when the server is what bounds the rate. One more race puts the
server in this process, where one event loop pays for both ends of every call: the worst case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
from opentelemetry.trace import TracerProvider

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.client import Attempt, ClientConfig, MeshClient, ServicePolicy
from mesh.endpoints import Instance
from mesh.host import settle_heap
from mesh.interceptors import TracingSettings, client_interceptors, configure_tracing, server_interceptors
from mesh.registry import Registration, Watcher, open_redis
from tests.integration.mesh_instance import EchoStreaming
from tests.perf.results import BenchResult

CONCURRENCY = 100
INSTANCE_SCRIPT = Path(__file__).resolve().parents[1] / "integration" / "mesh_instance.py"
Call = Callable[[], Awaitable[object]]


async def _serve(
    servicer: EchoStreaming, tracer_provider: TracerProvider | None = None
) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=server_interceptors("bench", tracer_provider=tracer_provider))
    streaming_pb2_grpc.add_StreamingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _closed_loop(call: Call, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    """Calls per second with `concurrency` callers back to back, and every call's latency (s)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def _open_loop(call: Call, rps: float, seconds: float) -> list[float]:
    """Latencies of calls started at a fixed rate, whatever the previous ones are doing."""
    latencies: list[float] = []

    async def one() -> None:
        began = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - began)

    tasks = []
    started = time.perf_counter()
    for i in range(int(rps * seconds)):
        delay = started + i / rps - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else float("nan")


async def _bidi_rate(stub: streaming_pb2_grpc.StreamingServiceStub, seconds: float, streams: int) -> float:
    """Frames acknowledged per second over `streams` concurrent ping-pong streams."""
    stop_at = time.perf_counter() + seconds
    counts = [0] * streams

    async def one(index: int) -> None:
        call = stub.StreamFrames()
        await call.write(
            streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id=f"c{index}"))
        )
        await call.read()
        sequence = 0
        while time.perf_counter() < stop_at:
            sequence += 1
            await call.write(streaming_pb2.StreamFramesRequest(frame=streaming_pb2.Frame(sequence=sequence)))
            await call.read()
            counts[index] += 1
        await call.done_writing()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


class _EchoProcess:
    """An echo server with every server interceptor, in a process of its own, as a mesh peer would be.

    With the server in the benchmark's own process one event loop pays for both ends of every call, which
    is not how a mesh runs; the figures below put it on its own core and read its CPU time from /proc.
    """

    def __init__(self, proc: asyncio.subprocess.Process, address: str) -> None:
        self.proc = proc
        self.address = address

    @classmethod
    async def start(cls, *, record_spans: bool = False) -> _EchoProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.perf.bench_mesh",
            "--serve",
            *(["--record-spans"] if record_spans else []),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if not line.startswith(b"127.0.0.1:"):
            proc.kill()
            raise RuntimeError(f"the echo server did not start: {line!r}")
        return cls(proc, line.decode().strip())

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> None:
        self.proc.kill()
        await self.proc.wait()


@dataclass
class _Rounds:
    """One contender's per-round figures: rate, CPU per call on each side, every latency."""

    rates: list[float] = field(default_factory=list)
    client_cpu_us: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def _alternate(
    contenders: dict[str, Call], rounds: int, seconds: float, server: _EchoProcess | None
) -> dict[str, _Rounds]:
    """Closed-loop rounds at CONCURRENCY, each round starting with a different contender, so the machine's
    noise hits all alike; CPU per call of this process (every thread) and of the server process."""
    figures = {name: _Rounds() for name in contenders}
    names = list(contenders)
    for k in range(rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            client_cpu = time.process_time()
            server_cpu = server.cpu_s() if server is not None else 0.0
            rps, latencies = await _closed_loop(contenders[name], seconds, CONCURRENCY)
            calls = len(latencies)
            figure = figures[name]
            figure.rates.append(rps)
            figure.client_cpu_us.append((time.process_time() - client_cpu) / calls * 1e6)
            if server is not None:
                figure.server_cpu_us.append((server.cpu_s() - server_cpu) / calls * 1e6)
            figure.latencies.extend(latencies)
    return figures


def _median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def _throughput(quick: bool) -> list[BenchResult]:
    """Mesh vs raw against one echo server in its own process: rates, CPU per call, latency, bidi."""
    seconds, rounds = (0.5, 6) if quick else (1.0, 12)
    server = await _EchoProcess.start()
    request = streaming_pb2.GetCameraRequest(camera_id="cam-1")
    results: list[BenchResult] = []
    try:
        async with (
            grpc.aio.insecure_channel(server.address) as raw_channel,
            MeshClient.static(
                {"streaming": [server.address]}, interceptors=client_interceptors("streaming")
            ) as mesh,
            MeshClient.static({"streaming": [server.address]}, telemetry=False) as bare_mesh,
        ):
            raw = streaming_pb2_grpc.StreamingServiceStub(raw_channel)
            meshed = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            bare = bare_mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            for stub in (raw, meshed, bare):
                await stub.GetCamera(request)
            settle_heap()  # as ServiceHost.run does once a service process (a mesh client's home) is up
            figures = await _alternate(
                {
                    "raw": lambda: raw.GetCamera(request),
                    "mesh": lambda: meshed.GetCamera(request),
                    "bare": lambda: bare.GetCamera(request),
                },
                rounds,
                seconds,
                server,
            )
            raw_f, mesh_f, bare_f = figures["raw"], figures["mesh"], figures["bare"]
            raw_rps = _median_of(raw_f.rates)
            results += [
                BenchResult(
                    "mesh_unary_rps_c100", _median_of(mesh_f.rates), "req/s", raw_rps, "raw grpc.aio", "≥ 0.9"
                ),
                BenchResult(
                    "mesh_unary_rps_c100_without_client_interceptors",
                    _median_of(bare_f.rates),
                    "req/s",
                    raw_rps,
                    "raw grpc.aio",
                    "info: cost of tracing + metrics",
                ),
                # What the mesh costs the caller, whichever side bounds the rate: CPU time of the client
                # process (all its threads) per call.
                BenchResult(
                    "mesh_unary_client_cpu_us_per_call",
                    _median_of(mesh_f.client_cpu_us),
                    "µs",
                    _median_of(raw_f.client_cpu_us),
                    "raw grpc.aio",
                    "info: the mesh's cost to the calling process",
                ),
                BenchResult(
                    "mesh_unary_client_cpu_us_per_call_without_client_interceptors",
                    _median_of(bare_f.client_cpu_us),
                    "µs",
                    _median_of(raw_f.client_cpu_us),
                    "raw grpc.aio",
                    "info",
                ),
                BenchResult(
                    "mesh_unary_server_cpu_us_per_call",
                    _median_of(mesh_f.server_cpu_us),
                    "µs",
                    _median_of(raw_f.server_cpu_us),
                    "raw grpc.aio",
                    "info: the server's side of the same calls",
                ),
                BenchResult(
                    "mesh_unary_p99_ms_c100",
                    _pct(mesh_f.latencies, 99),
                    "ms",
                    _pct(raw_f.latencies, 99),
                    "raw grpc.aio",
                    "info",
                ),
            ]
            # A p99 over one short window is at the mercy of a single scheduler hiccup on a shared machine:
            # alternate several windows and report the median of each side's per-window percentiles.
            raw_p: list[tuple[float, float]] = []
            mesh_p: list[tuple[float, float]] = []
            for _ in range(3 if quick else 5):
                raw_open = await _open_loop(lambda: raw.GetCamera(request), 500, seconds)
                raw_p.append((_pct(raw_open, 50), _pct(raw_open, 99)))
                mesh_open = await _open_loop(lambda: meshed.GetCamera(request), 500, seconds)
                mesh_p.append((_pct(mesh_open, 50), _pct(mesh_open, 99)))
            for index, (label, target) in enumerate((("p50", "+≤ 0.2 ms"), ("p99", "+≤ 1 ms"))):
                mesh_value = statistics.median(p[index] for p in mesh_p)
                raw_value = statistics.median(p[index] for p in raw_p)
                results.append(
                    BenchResult(
                        f"mesh_{label}_ms_at_500rps", mesh_value, "ms", raw_value, "raw grpc.aio", target
                    )
                )
            raw_bidi_rounds, mesh_bidi_rounds = [], []
            for _ in range(rounds):  # alternated too
                raw_bidi_rounds.append(await _bidi_rate(raw, seconds, streams=20))
                mesh_bidi_rounds.append(await _bidi_rate(meshed, seconds, streams=20))
            results.append(
                BenchResult(
                    "mesh_bidi_msgs_per_s",
                    statistics.median(mesh_bidi_rounds),
                    "msg/s",
                    statistics.median(raw_bidi_rounds),
                    "raw grpc.aio",
                    "≥ 0.9",
                )
            )
    finally:
        await server.stop()
    return results


async def _race_raw_and_mesh(
    address: str,
    quick: bool,
    server: _EchoProcess | None,
    tracer_provider: TracerProvider | None = None,
) -> dict[str, _Rounds]:
    """Alternating unary rounds of a raw channel and a mesh client (tracing and metrics on) to `address`."""
    seconds, rounds = (0.5, 4) if quick else (1.0, 8)
    request = streaming_pb2.GetCameraRequest(camera_id="cam-1")
    async with (
        grpc.aio.insecure_channel(address) as raw_channel,
        MeshClient.static(
            {"streaming": [address]},
            interceptors=client_interceptors("streaming", tracer_provider=tracer_provider),
        ) as mesh,
    ):
        raw = streaming_pb2_grpc.StreamingServiceStub(raw_channel)
        meshed = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
        await raw.GetCamera(request)
        await meshed.GetCamera(request)
        settle_heap()
        return await _alternate(
            {"raw": lambda: raw.GetCamera(request), "mesh": lambda: meshed.GetCamera(request)},
            rounds,
            seconds,
            server,
        )


async def _one_loop(quick: bool) -> list[BenchResult]:
    """The same unary race with the server in this process: one event loop pays for both ends of every
    call, so the mesh's client-side cost shows in full (a worst case, not how a mesh runs)."""
    server, address = await _serve(EchoStreaming("a"))
    try:
        figures = await _race_raw_and_mesh(address, quick, None)
    finally:
        await server.stop(None)
    return [
        BenchResult(
            "mesh_unary_rps_c100_client_and_server_on_one_loop",
            _median_of(figures["mesh"].rates),
            "req/s",
            _median_of(figures["raw"].rates),
            "raw grpc.aio",
            "info: worst case, the loop pays both ends",
        )
    ]


async def _recording_spans(quick: bool) -> list[BenchResult]:
    """Unary throughput when both sides record real spans, as a ``ServiceHost`` process does.

    The figures above use OpenTelemetry's default provider (no SDK installed: spans are not recorded,
    traceparent is sent only when a sampled trace is already current). Here server and client record
    every span through an SDK provider with no exporter, so the figure is the cost of recording alone.
    """
    provider = configure_tracing(
        "bench", "bench-1", settings=TracingSettings(otlp_endpoint=None), set_global=False
    )
    server = await _EchoProcess.start(record_spans=True)
    try:
        figures = await _race_raw_and_mesh(server.address, quick, server, provider)
    finally:
        await server.stop()
    return [
        BenchResult(
            "mesh_unary_rps_c100_recording_spans",
            _median_of(figures["mesh"].rates),
            "req/s",
            _median_of(figures["raw"].rates),
            "raw grpc.aio, server recording spans too",
            "info: cost of recorded client spans",
        ),
        BenchResult(
            "mesh_unary_client_cpu_us_per_call_recording_spans",
            _median_of(figures["mesh"].client_cpu_us),
            "µs",
            _median_of(figures["raw"].client_cpu_us),
            "raw grpc.aio, server recording spans too",
            "info",
        ),
    ]


async def _outage(quick: bool) -> list[BenchResult]:
    """Every instance answering UNAVAILABLE: the retry budget keeps attempts per request near 1."""
    servicers = [EchoStreaming(f"f{i}") for i in range(2)]
    servers = [await _serve(servicer) for servicer in servicers]
    for servicer in servicers:
        servicer.failing = True
    attempts: list[Attempt] = []
    requests = 300 if quick else 1000
    try:
        addresses = [address for _, address in servers]
        async with MeshClient.static({"streaming": addresses}, on_attempt=attempts.append) as mesh:
            stub = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            for _ in range(requests):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="x"), timeout=1.0)
    finally:
        for server, _ in servers:
            await server.stop(None)
    return [
        BenchResult("outage_attempts_per_request", len(attempts) / requests, "x", 1.0, "one attempt", "≤ 1.2")
    ]


async def _ejection() -> list[BenchResult]:
    """One of two instances starts failing: how many calls reach it before its breaker takes it out."""
    healthy, broken = EchoStreaming("ok"), EchoStreaming("broken")
    servers = [await _serve(healthy), await _serve(broken)]
    broken_address = servers[1][1]
    try:
        # Round-robin: with two endpoints P2C compares both on every call and may never send the broken
        # one anything, which would say nothing about how fast a failing endpoint leaves rotation.
        config = ClientConfig(default_policy=ServicePolicy(balancer="round_robin"))
        async with MeshClient.static({"streaming": [a for _, a in servers]}, config=config) as mesh:
            stub = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            for _ in range(50):  # warm both endpoints
                await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="w"))
            broken.failing = True
            before = broken.calls["GetCamera"]
            failed_at = time.perf_counter()
            last_hit = failed_at
            for _ in range(400):
                seen = broken.calls["GetCamera"]
                await stub.GetCamera(streaming_pb2.GetCameraRequest(camera_id="x"), timeout=1.0)
                if broken.calls["GetCamera"] > seen:
                    last_hit = time.perf_counter()
            hits = broken.calls["GetCamera"] - before
    finally:
        for server, _ in servers:
            await server.stop(None)
    del broken_address
    return [
        BenchResult("failing_endpoint_calls_before_ejection", hits, "calls", 5, "target", "≤ 5 or ≤ 1 s"),
        BenchResult(
            "failing_endpoint_ejected_after_ms", (last_hit - failed_at) * 1000, "ms", 1000, "target", "≤ 1000"
        ),
    ]


async def _discovery(urls: InfraUrls, quick: bool) -> list[BenchResult]:
    """Time from a registration (or deregistration) to a watcher seeing it, p99 over many changes."""
    namespace = f"bench:{uuid.uuid4().hex[:8]}"
    redis = open_redis(urls.redis_url)
    watcher = Watcher(redis, ["bench"], namespace=namespace, relist_interval_s=30.0)
    await watcher.start()
    delays: list[float] = []
    try:
        for i in range(20 if quick else 60):
            instance = Instance(service="bench", instance_id=f"i{i}", address=f"127.0.0.1:{20000 + i}")
            registration = Registration(redis, instance, ttl_s=10.0, namespace=namespace)
            began = time.perf_counter()
            await registration.start()
            await watcher.wait_for("bench", lambda eps, i=i: any(e.instance_id == f"i{i}" for e in eps), 5.0)
            delays.append(time.perf_counter() - began)
            began = time.perf_counter()
            await registration.stop()
            await watcher.wait_for("bench", lambda eps, i=i: all(e.instance_id != f"i{i}" for e in eps), 5.0)
            delays.append(time.perf_counter() - began)
    finally:
        await watcher.stop()
        await redis.aclose()
    return [BenchResult("discovery_change_p99_ms", _pct(delays, 99), "ms", 1000, "target", "≤ 1000")]


async def _spawn_instance(urls: InfraUrls, namespace: str, instance_id: str) -> asyncio.subprocess.Process:
    """An instance in its own process (its own core), registered under `namespace`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(INSTANCE_SCRIPT),
        urls.redis_url,
        namespace,
        "streaming",
        instance_id,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    if not line.startswith(b"ready"):
        raise RuntimeError(f"instance {instance_id} did not start: {line!r}")
    return proc


async def _scale_out(urls: InfraUrls, quick: bool) -> list[BenchResult]:
    """Throughput through the mesh with 2 instances versus 1, each instance in its own process."""
    seconds = 1.5 if quick else 4.0
    request = streaming_pb2.GetCameraRequest(camera_id="cam-1")
    rates: dict[int, float] = {}
    for count in (1, 2):
        namespace = f"bench:{uuid.uuid4().hex[:8]}"
        procs = [await _spawn_instance(urls, namespace, f"s{i}") for i in range(count)]
        try:
            mesh = await MeshClient.from_registry(urls.redis_url, ["streaming"], namespace=namespace)
            async with mesh:
                stub = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
                await stub.GetCamera(request)
                call = partial(stub.GetCamera, request)
                rates[count], _ = await _closed_loop(call, seconds, CONCURRENCY)
        finally:
            for proc in procs:
                proc.kill()
                await proc.wait()
    return [BenchResult("scale_out_rps_2_vs_1_instances", rates[2], "req/s", rates[1], "1 instance", "info")]


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """All mesh figures; each compared with its baseline or target in the same run."""
    return [
        *await _throughput(quick),
        *await _one_loop(quick),
        *await _recording_spans(quick),
        *await _outage(quick),
        *await _ejection(),
        *await _discovery(urls, quick),
        *await _scale_out(urls, quick),
    ]


async def _serve_forever(record_spans: bool) -> None:
    """--serve: an echo server with every server interceptor; prints its address, serves until killed."""
    provider = (
        configure_tracing("bench", "bench-1", settings=TracingSettings(otlp_endpoint=None), set_global=False)
        if record_spans
        else None
    )
    server, address = await _serve(EchoStreaming("a"), provider)
    settle_heap()
    print(address, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    if "--serve" not in sys.argv:
        sys.exit("usage: python -m tests.perf.bench_mesh --serve [--record-spans] (make bench runs the rest)")
    asyncio.run(_serve_forever("--record-spans" in sys.argv))
