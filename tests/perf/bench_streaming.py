"""StreamFrames frames/s and ack latency versus a raw grpc.aio echo and raw Kafka producers; 2 vs 1 instances.

Every side sends the same ~30 KB 640x360 JPEG frames (really encoded by OpenCV) and counts a frame only when
it is acknowledged: StreamFrames acks after the frame's event is in Kafka with acks=all (checks, event
publish, Kafka ack, high-water mark in PostgreSQL, ack to the camera; the sampled quality decode runs on every
10th frame but at most every 0.2 s per stream, so at these rates only a few frames are decoded); the echo
baseline is a bare grpc.aio server acking every frame at once; the Kafka baselines produce the frames (or
their detection events) straight to a topic with aiokafka and await every acknowledgement. Ack latency is what
the camera sees: from writing a frame to reading the first ack that covers it, measured at a steady
LATENCY_FPS (at full speed it would only measure the queue of a full credit window).

2 vs 1 instance: four cameras stream at once (batches of 10) to one instance, then two to each of two;
both instances run as their own processes against the same PostgreSQL, Redis and Kafka.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import cv2
import grpc
import numpy as np
from aiokafka import AIOKafkaProducer
from google.protobuf import timestamp_pb2

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.events import ensure_topics
from mesh.host import ServiceHost
from services.streaming.config import StreamingSettings
from services.streaming.service import build
from tests.integration.mesh_instance import EchoStreaming
from tests.perf.results import BenchResult

SCALE_CAMERAS = 4
LATENCY_FPS = 100.0


def _jpeg() -> bytes:
    """A 640x360 JPEG of smooth noise, about 30 KB at quality 70 (a busy road scene compresses alike)."""
    rng = np.random.default_rng(7)
    image = cv2.resize(
        rng.integers(0, 255, (23, 40, 3), dtype=np.uint8).astype(np.float32),
        (640, 360),
        interpolation=cv2.INTER_CUBIC,
    )
    ok, data = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 70])
    assert ok
    return bytes(data.tobytes())


def _frames(count: int, first: int, jpeg: bytes) -> list[streaming_pb2.Frame]:
    frames = []
    for i in range(count):
        stamp = timestamp_pb2.Timestamp()
        stamp.FromNanoseconds(time.time_ns() - 60_000_000_000 + i * 1000)
        frames.append(streaming_pb2.Frame(sequence=first + i, capture_time=stamp, jpeg=jpeg))
    return frames


def _events(frames: list[streaming_pb2.Frame]) -> list[bytes]:
    """The CameraDetectionEvents the service writes for `frames` (what actually goes to Kafka)."""
    return [
        events_pb2.CameraDetectionEvent(
            event_id=str(uuid.uuid4()),
            camera_id="bench-camera",
            sequence=f.sequence,
            capture_time=f.capture_time,
            receive_time=f.capture_time,
            frame_size=common_pb2.ImageSize(width_px=640, height_px=360),
            jpeg_size_bytes=len(f.jpeg),
            detection_source=common_pb2.DETECTION_SOURCE_NONE,
            quality=common_pb2.FrameQuality(),
            camera_config_version=1,
            stream_id=str(uuid.uuid4()),
            instance_id="bench-instance",
        ).SerializeToString()
        for f in frames
    ]


@dataclass(slots=True)
class _Run:
    """Frames per second of one stream and the ack latency (s) of each of its frames."""

    fps: float
    latencies: list[float] = field(default_factory=list)


async def _stream(
    address: str, camera_id: str, frames: list[streaming_pb2.Frame], batch: int, fps: float | None = None
) -> _Run:
    """One camera sending `frames` within credit, `batch` frames per message (at `fps`, or as fast as
    credit allows), until all are acked."""
    last = frames[-1].sequence
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = streaming_pb2_grpc.StreamingServiceStub(channel).StreamFrames()
        await call.write(
            streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id=camera_id))
        )
        opened = await call.read()
        assert opened is not grpc.aio.EOF
        credit = cast(streaming_pb2.StreamFramesResponse, opened).opened.initial_credit
        granted = asyncio.Event()
        acked_through = frames[0].sequence - 1

        async def read_acks() -> None:
            nonlocal credit, acked_through
            while acked_through < last:
                read = await call.read()
                assert read is not grpc.aio.EOF, "stream ended early"
                response = cast(streaming_pb2.StreamFramesResponse, read)
                if response.WhichOneof("message") == "ack":
                    now = time.perf_counter()
                    through = response.ack.acked_through_sequence
                    for sequence in range(acked_through + 1, through + 1):
                        latencies.append(now - sent_at.pop(sequence))
                    credit += response.ack.credit_grant
                    acked_through = max(acked_through, through)
                    granted.set()

        started = time.perf_counter()
        reader = asyncio.create_task(read_acks())
        position = 0
        while position < len(frames):
            while credit < min(batch, len(frames) - position):
                granted.clear()
                await granted.wait()
            if fps is not None:
                await asyncio.sleep(max(0.0, started + position / fps - time.perf_counter()))
            chunk = frames[position : position + batch]
            credit -= len(chunk)
            position += len(chunk)
            now = time.perf_counter()
            for f in chunk:
                sent_at[f.sequence] = now
            if batch == 1:
                await call.write(streaming_pb2.StreamFramesRequest(frame=chunk[0]))
            else:
                await call.write(
                    streaming_pb2.StreamFramesRequest(batch=streaming_pb2.FrameBatch(frames=chunk))
                )
        await reader
        elapsed = time.perf_counter() - started
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    return _Run(len(frames) / elapsed, latencies)


async def _raw(bootstrap: str, payloads: list[bytes]) -> float:
    """Records per second a bare aiokafka producer (acks=all, gzip) gets acknowledged."""
    topic = f"bench.{uuid.uuid4().hex}"
    await ensure_topics(bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip", linger_ms=2)
    await producer.start()
    try:
        started = time.perf_counter()
        pending = [await producer.send(topic, value=p, key=b"bench-camera") for p in payloads]
        await asyncio.gather(*pending)
        return len(payloads) / (time.perf_counter() - started)
    finally:
        await producer.stop()


def _settings(urls: InfraUrls) -> StreamingSettings:
    return StreamingSettings(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        kafka_bootstrap_servers=urls.kafka_bootstrap_servers,
        bind_host="127.0.0.1",
        grpc_port=0,
        register_in_discovery=False,
        metrics_port=None,
        require_auth=False,
    )


async def _register(address: str, count: int) -> list[str]:
    camera_ids = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = streaming_pb2_grpc.StreamingServiceStub(channel)
        for _ in range(count):
            camera_id = f"bench-{uuid.uuid4().hex[:10]}"
            await stub.RegisterCamera(
                streaming_pb2.RegisterCameraRequest(
                    camera=common_pb2.Camera(
                        camera_id=camera_id,
                        name="bench",
                        resolution=common_pb2.ImageSize(width_px=640, height_px=360),
                        fps=25.0,
                        speed_limit_kmh=80.0,
                    )
                )
            )
            camera_ids.append(camera_id)
    return camera_ids


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[round(pct / 100 * (len(ordered) - 1))]


async def _single_instance(quick: bool, urls: InfraUrls, jpeg: bytes) -> list[BenchResult]:
    """Alternate raw and StreamFrames rounds so machine noise hits both alike."""
    count = 300 if quick else 1500
    rounds = 2 if quick else 3
    host = ServiceHost(build(_settings(urls)))
    await host.start()
    servicer = host.spec.grpc_services[0].servicer
    address = f"127.0.0.1:{host.grpc_port}"
    fps: dict[str, list[float]] = {"raw": [], "raw_events": [], "echo": [], "single": [], "batch10": []}
    latencies: dict[str, list[float]] = {"echo": [], "single": []}
    echo_server = grpc.aio.server()
    streaming_pb2_grpc.add_StreamingServiceServicer_to_server(EchoStreaming("echo"), echo_server)
    echo_address = f"127.0.0.1:{echo_server.add_insecure_port('127.0.0.1:0')}"
    await echo_server.start()
    try:
        while not servicer.ingest._publisher.started:  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        camera_ids = await _register(address, 3 * rounds)
        for r in range(rounds):
            frames = _frames(count, 1, jpeg)
            fps["raw"].append(
                await _raw(urls.kafka_bootstrap_servers, [f.SerializeToString() for f in frames])
            )
            fps["raw_events"].append(await _raw(urls.kafka_bootstrap_servers, _events(frames)))
            for kind, target, camera_id, batch in (
                ("echo", echo_address, "echo-camera", 1),
                ("single", address, camera_ids[3 * r], 1),
                ("batch10", address, camera_ids[3 * r + 1], 10),
            ):
                fps[kind].append((await _stream(target, camera_id, frames, batch)).fps)
            paced = frames[: count // 3]
            latencies["echo"] += (await _stream(echo_address, "echo-camera", paced, 1, LATENCY_FPS)).latencies
            latencies["single"] += (
                await _stream(address, camera_ids[3 * r + 2], paced, 1, LATENCY_FPS)
            ).latencies
    finally:
        await host.stop()
        await echo_server.stop(None)

    baselines = {
        "echo": "raw grpc.aio echo of the same frames, acked at once",
        "raw": "raw aiokafka produce of the frames, acks=all",
        "raw_events": "raw aiokafka produce of the detection events, acks=all",
    }
    results = [
        BenchResult(
            name=f"streaming_frames_{kind}_fps"
            + {"echo": "", "raw": "_vs_raw_kafka", "raw_events": "_vs_events"}[baseline],
            value=_median(fps[kind]),
            unit="frames/s",
            baseline=_median(fps[baseline]),
            baseline_name=name,
            target="ratio ≥ 0.7" if baseline == "echo" else "reference",
        )
        for baseline, name in baselines.items()
        for kind in ("single", "batch10")
    ]
    results += [
        BenchResult(
            name=f"streaming_ack_latency_{label}_ms_at_{LATENCY_FPS:.0f}_fps",
            value=_percentile(latencies["single"], pct) * 1000,
            unit="ms",
            baseline=_percentile(latencies["echo"], pct) * 1000,
            baseline_name=f"raw grpc.aio echo at the same {LATENCY_FPS:.0f} frames/s",
            target="reference (lower is better)",
        )
        for label, pct in (("p50", 50), ("p99", 99))
    ]
    return results


async def _spawn_instance(urls: InfraUrls, port_file: Path) -> tuple[asyncio.subprocess.Process, str]:
    """A streaming instance in its own process (its own core); returns it and its address."""
    env = {
        **os.environ,
        "DATABASE_URL": urls.database_url,
        "REDIS_URL": urls.redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": urls.kafka_bootstrap_servers,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.perf.bench_streaming",
        "--instance",
        str(port_file),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        while not port_file.exists() or not port_file.read_text().endswith("\n"):
            assert process.returncode is None, "the instance exited"
            await asyncio.sleep(0.1)
    return process, f"127.0.0.1:{port_file.read_text().strip()}"


async def _scale(quick: bool, urls: InfraUrls, jpeg: bytes) -> list[BenchResult]:
    """Aggregate acked frames/s of SCALE_CAMERAS cameras on one instance, then spread over two."""
    count = 300 if quick else 1000
    rounds = 2 if quick else 3
    with tempfile.TemporaryDirectory(prefix="itsmesh-bench-ports-") as ports:
        instances = [await _spawn_instance(urls, Path(ports) / f"{i}.port") for i in range(2)]
    addresses = [address for _, address in instances]
    results: dict[int, list[float]] = {1: [], 2: []}
    try:
        for _ in range(rounds):
            for spread in (1, 2):
                cameras = await _register(addresses[0], SCALE_CAMERAS)
                frames = _frames(count, 1, jpeg)
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        _stream(addresses[i % spread], camera_id, frames, 10)
                        for i, camera_id in enumerate(cameras)
                    )
                )
                results[spread].append(SCALE_CAMERAS * count / (time.perf_counter() - started))
    finally:
        for process, _ in instances:
            assert process.stdin is not None
            process.stdin.close()
        for process, _ in instances:
            await process.wait()
    return [
        BenchResult(
            name=f"streaming_frames_{SCALE_CAMERAS}_cameras_2_instances_fps",
            value=_median(results[2]),
            unit="frames/s",
            baseline=_median(results[1]),
            baseline_name=f"the same {SCALE_CAMERAS} cameras on 1 instance",
            target="info: 2 cores hold the cameras, both instances, the broker and PostgreSQL",
        )
    ]


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Single-instance figures against their raw baselines, then 2 instances vs 1."""
    jpeg = _jpeg()
    return [*await _single_instance(quick, urls, jpeg), *await _scale(quick, urls, jpeg)]


async def _serve_instance() -> None:
    """The --instance mode: serve until stdin closes (infra URLs from the environment)."""
    settings = StreamingSettings(
        bind_host="127.0.0.1", grpc_port=0, register_in_discovery=False, metrics_port=None, require_auth=False
    )
    host = ServiceHost(build(settings))
    await host.start()
    try:
        servicer = host.spec.grpc_services[0].servicer
        while not servicer.ingest._publisher.started:  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        Path(sys.argv[-1]).write_text(f"{host.grpc_port}\n")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await host.stop()


if __name__ == "__main__":
    from infrastructure.embedded import EmbeddedInfra, free_ports

    async def _main() -> None:
        with tempfile.TemporaryDirectory(prefix="itsmesh-bench-") as data_dir:
            async with EmbeddedInfra(Path(data_dir), ports=free_ports()) as urls:
                for result in await run("--quick" in sys.argv, urls):
                    print(
                        f"{result.name}: {result.value:,.1f} {result.unit} vs {result.baseline:,.1f} "
                        f"({result.baseline_name}) ratio {result.ratio:.2f}"
                    )

    asyncio.run(_serve_instance() if "--instance" in sys.argv else _main())
