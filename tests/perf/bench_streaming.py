"""Frames per second acknowledged through StreamFrames versus a raw aiokafka producer of the same frames.

Both sides send the same ~30 KB JPEG frames (640x360 header, filler scan) and count a frame only when
Kafka acknowledged it with acks=all: StreamFrames counts acked_through on the gRPC stream (check, event
publish, Kafka ack, high-water mark in PostgreSQL, ack to the camera); the baseline sends the serialized
frames straight to a topic with aiokafka and awaits every record's acknowledgement.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from aiokafka import AIOKafkaProducer
from google.protobuf import timestamp_pb2

from infrastructure.embedded import InfraUrls
from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.events import ensure_topics
from mesh.host import ServiceHost
from services.streaming.config import StreamingSettings
from services.streaming.service import build
from tests.integration.mesh_instance import EchoStreaming
from tests.integration.streaming_host import structural_jpeg
from tests.perf.results import BenchResult

FRAME_BYTES = 30_000


def _frames(count: int, first: int) -> list[streaming_pb2.Frame]:
    jpeg = structural_jpeg(640, 360, FRAME_BYTES)
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


async def _stream(address: str, camera_id: str, frames: list[streaming_pb2.Frame], batch: int) -> float:
    """Acked frames per second for one camera sending `frames` within credit, `batch` frames per message."""
    last = frames[-1].sequence
    async with grpc.aio.insecure_channel(address) as channel:
        call = streaming_pb2_grpc.StreamingServiceStub(channel).StreamFrames()
        await call.write(
            streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id=camera_id))
        )
        opened = await call.read()
        assert opened is not grpc.aio.EOF
        credit = opened.opened.initial_credit
        granted = asyncio.Event()
        acked_through = 0

        async def read_acks() -> None:
            nonlocal credit, acked_through
            while acked_through < last:
                response = await call.read()
                assert response is not grpc.aio.EOF, "stream ended early"
                if response.WhichOneof("message") == "ack":
                    credit += response.ack.credit_grant
                    acked_through = response.ack.acked_through_sequence
                    granted.set()

        started = time.perf_counter()
        reader = asyncio.create_task(read_acks())
        position = 0
        while position < len(frames):
            while credit < min(batch, len(frames) - position):
                granted.clear()
                await granted.wait()
            chunk = frames[position : position + batch]
            credit -= len(chunk)
            position += len(chunk)
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
    return len(frames) / elapsed


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


async def run(quick: bool, urls: InfraUrls) -> list[BenchResult]:
    """Alternate raw and StreamFrames rounds so machine noise hits both alike."""
    count = 300 if quick else 1500
    rounds = 2 if quick else 3
    settings = StreamingSettings(
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        kafka_bootstrap_servers=urls.kafka_bootstrap_servers,
        bind_host="127.0.0.1",
        grpc_port=0,
        register_in_discovery=False,
        metrics_port=None,
        require_auth=False,
    )
    host = ServiceHost(build(settings))
    await host.start()
    servicer = host.spec.grpc_services[0].servicer
    address = f"127.0.0.1:{host.grpc_port}"
    results: dict[str, list[float]] = {"raw": [], "raw_events": [], "echo": [], "single": [], "batch10": []}
    # The baseline: a bare grpc.aio server that acks every frame at once (no checks, no Kafka).
    echo_server = grpc.aio.server()
    streaming_pb2_grpc.add_StreamingServiceServicer_to_server(EchoStreaming("echo"), echo_server)
    echo_address = f"127.0.0.1:{echo_server.add_insecure_port('127.0.0.1:0')}"
    await echo_server.start()
    try:
        while not servicer.ingest._publisher.started:  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = streaming_pb2_grpc.StreamingServiceStub(channel)
            camera_ids = []
            for _ in range(2 * rounds):
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
        for r in range(rounds):
            frames = _frames(count, 1)
            results["raw"].append(
                await _raw(urls.kafka_bootstrap_servers, [f.SerializeToString() for f in frames])
            )
            results["raw_events"].append(await _raw(urls.kafka_bootstrap_servers, _events(frames)))
            results["echo"].append(await _stream(echo_address, "echo-camera", frames, 1))
            results["single"].append(await _stream(address, camera_ids[2 * r], frames, 1))
            results["batch10"].append(await _stream(address, camera_ids[2 * r + 1], frames, 10))
    finally:
        await host.stop()
        await echo_server.stop(None)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    baselines = {
        "echo": "raw grpc.aio echo of the same frames, acked at once",
        "raw": "raw aiokafka produce of the frames, acks=all",
        "raw_events": "raw aiokafka produce of the detection events, acks=all",
    }
    return [
        BenchResult(
            name=f"streaming_frames_{kind}_fps"
            + {"echo": "", "raw": "_vs_raw_kafka", "raw_events": "_vs_events"}[baseline],
            value=median(results[kind]),
            unit="frames/s",
            baseline=median(results[baseline]),
            baseline_name=name,
            target="ratio ≥ 0.7",
        )
        for baseline, name in baselines.items()
        for kind in ("single", "batch10")
    ]


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    from infrastructure.embedded import EmbeddedInfra, free_ports

    async def _main() -> None:
        with tempfile.TemporaryDirectory(prefix="itsmesh-bench-") as data_dir:
            async with EmbeddedInfra(Path(data_dir), ports=free_ports()) as urls:
                for result in await run("--quick" in sys.argv, urls):
                    print(
                        f"{result.name}: {result.value:,.0f} {result.unit} vs {result.baseline:,.0f} "
                        f"({result.baseline_name}) ratio {result.ratio:.2f}"
                    )

    asyncio.run(_main())
