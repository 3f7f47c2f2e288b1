"""Mesh client versus a raw grpc.aio channel to the same servers, in the same run (issue: mesh library).

Figures: unary and bidi throughput at concurrency 100, added latency at a fixed 500 rps, attempts per
request during a total outage, calls a failing endpoint receives before it leaves rotation, and how fast
a discovery change reaches a watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
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


async def _throughput(quick: bool) -> list[BenchResult]:
    seconds, rounds = (0.5, 6) if quick else (1.0, 12)
    server, address = await _serve(EchoStreaming("a"))
    request = streaming_pb2.GetCameraRequest(camera_id="cam-1")
    results: list[BenchResult] = []
    try:
        async with (
            grpc.aio.insecure_channel(address) as raw_channel,
            MeshClient.static(
                {"streaming": [address]}, interceptors=client_interceptors("streaming")
            ) as mesh,
            MeshClient.static({"streaming": [address]}, telemetry=False) as bare_mesh,
        ):
            raw = streaming_pb2_grpc.StreamingServiceStub(raw_channel)
            meshed = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            bare = bare_mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            await raw.GetCamera(request)
            await meshed.GetCamera(request)
            await bare.GetCamera(request)
            settle_heap()  # as ServiceHost.run does once a service process (a mesh client's home) is up
            # Alternate raw and mesh rounds so the machine's noise hits both alike; report medians. Many
            # short rounds pair up better than a few long ones when the load of the machine keeps moving,
            # and each round starts with a different contender, so none always runs first or last.
            raw_rounds, mesh_rounds, bare_rounds, raw_lat, mesh_lat = [], [], [], [], []
            raw_cpu, mesh_cpu, bare_cpu = [], [], []
            contenders = [
                (lambda: bare.GetCamera(request), bare_rounds, bare_cpu, None),
                (lambda: raw.GetCamera(request), raw_rounds, raw_cpu, raw_lat),
                (lambda: meshed.GetCamera(request), mesh_rounds, mesh_cpu, mesh_lat),
            ]
            for k in range(rounds):
                for call, rates, cpus, latencies in contenders[k % 3 :] + contenders[: k % 3]:
                    cpu = time.thread_time()
                    rps, lat = await _closed_loop(call, seconds, CONCURRENCY)
                    cpus.append((time.thread_time() - cpu) / len(lat) * 1e6)
                    rates.append(rps)
                    if latencies is not None:
                        latencies.extend(lat)
            raw_rps, mesh_rps = statistics.median(raw_rounds), statistics.median(mesh_rounds)
            # The event loop's CPU time per call (client and server share this loop): what the mesh costs,
            # and less at the mercy of other processes than a rate is.
            results.append(
                BenchResult(
                    "mesh_unary_loop_cpu_us_per_call",
                    statistics.median(mesh_cpu),
                    "µs",
                    statistics.median(raw_cpu),
                    "raw grpc.aio",
                    "info: a ratio ≤ 1.11 means ≥ 0.9 x the raw rate when the loop is saturated",
                )
            )
            results.append(
                BenchResult(
                    "mesh_unary_loop_cpu_us_per_call_without_client_interceptors",
                    statistics.median(bare_cpu),
                    "µs",
                    statistics.median(raw_cpu),
                    "raw grpc.aio",
                    "info",
                )
            )
            results.append(
                BenchResult("mesh_unary_rps_c100", mesh_rps, "req/s", raw_rps, "raw grpc.aio", "≥ 0.9")
            )
            results.append(
                BenchResult(
                    "mesh_unary_rps_c100_without_client_interceptors",
                    statistics.median(bare_rounds),
                    "req/s",
                    raw_rps,
                    "raw grpc.aio",
                    "info: cost of tracing + metrics",
                )
            )
            results.append(
                BenchResult(
                    "mesh_unary_p99_ms_c100",
                    _pct(mesh_lat, 99),
                    "ms",
                    _pct(raw_lat, 99),
                    "raw grpc.aio",
                    "info",
                )
            )
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
            raw_bidi, mesh_bidi = statistics.median(raw_bidi_rounds), statistics.median(mesh_bidi_rounds)
            results.append(
                BenchResult("mesh_bidi_msgs_per_s", mesh_bidi, "msg/s", raw_bidi, "raw grpc.aio", "≥ 0.9")
            )
    finally:
        await server.stop(None)
    return results


async def _recording_spans(quick: bool) -> list[BenchResult]:
    """Unary throughput when both sides record real spans, as a ``ServiceHost`` process does.

    The figures above use OpenTelemetry's default provider (no SDK installed: spans are not recorded,
    traceparent is sent only when a sampled trace is already current). Here server and client record
    every span through an SDK provider with no exporter, so the figure is the cost of recording alone.
    """
    seconds, rounds = (0.5, 6) if quick else (1.0, 12)
    provider = configure_tracing(
        "bench", "bench-1", settings=TracingSettings(otlp_endpoint=None), set_global=False
    )
    server, address = await _serve(EchoStreaming("a"), provider)
    request = streaming_pb2.GetCameraRequest(camera_id="cam-1")
    try:
        async with (
            grpc.aio.insecure_channel(address) as raw_channel,
            MeshClient.static(
                {"streaming": [address]},
                interceptors=client_interceptors("streaming", tracer_provider=provider),
            ) as mesh,
        ):
            raw = streaming_pb2_grpc.StreamingServiceStub(raw_channel)
            meshed = mesh.stub("streaming", streaming_pb2_grpc.StreamingServiceStub)
            await raw.GetCamera(request)
            await meshed.GetCamera(request)
            raw_rounds, mesh_rounds = [], []
            for _ in range(rounds):
                rps, _ = await _closed_loop(lambda: raw.GetCamera(request), seconds, CONCURRENCY)
                raw_rounds.append(rps)
                rps, _ = await _closed_loop(lambda: meshed.GetCamera(request), seconds, CONCURRENCY)
                mesh_rounds.append(rps)
    finally:
        await server.stop(None)
    return [
        BenchResult(
            "mesh_unary_rps_c100_recording_spans",
            statistics.median(mesh_rounds),
            "req/s",
            statistics.median(raw_rounds),
            "raw grpc.aio, server recording spans too",
            "info: cost of recorded client spans",
        )
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
        *await _recording_spans(quick),
        *await _outage(quick),
        *await _ejection(),
        *await _discovery(urls, quick),
        *await _scale_out(urls, quick),
    ]
