"""A real streaming service on loopback for the streaming tests, and helpers to read its Kafka topics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import cv2
import grpc
import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from google.protobuf import timestamp_pb2

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.host import ServiceHost
from mesh.interceptors import BearerTokenInterceptor
from mesh.tokens import ServiceTokenSource
from services.auth.authority import SYSTEM
from services.streaming.config import StreamingSettings
from services.streaming.ingest import IngestLimits
from services.streaming.outbox import RelaySettings
from services.streaming.service import build
from services.streaming.telemetry_config import TelemetrySettings


@asynccontextmanager
async def streaming_host(
    infra: Any,
    limits: IngestLimits | None = None,
    *,
    relay: RelaySettings | None = None,
    kafka_bootstrap_servers: str | None = None,
    wait_for_kafka: bool = True,
) -> AsyncIterator[ServiceHost]:
    """A streaming host without auth, on a free port; waits until its Kafka producer connected, unless told
    not to (a broker that is down, or an address where none listens)."""
    settings = StreamingSettings(
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        kafka_bootstrap_servers=kafka_bootstrap_servers or infra.kafka_bootstrap_servers,
        bind_host="127.0.0.1",
        grpc_port=0,
        register_in_discovery=False,
        metrics_port=None,
        drain_grace_s=2.0,
        require_auth=False,
    )
    host = ServiceHost(build(settings, limits=limits, relay_settings=relay))
    await host.start()
    try:
        servicer: Any = host.spec.grpc_services[0].servicer
        deadline = time.monotonic() + 20
        while wait_for_kafka and not servicer.ingest._publisher.started:
            assert time.monotonic() < deadline, "the Kafka producer did not connect"
            await asyncio.sleep(0.05)
        yield host
    finally:
        await host.stop()


@asynccontextmanager
async def stub(host: ServiceHost) -> AsyncIterator[streaming_pb2_grpc.StreamingServiceStub]:
    """A client of ``host``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield streaming_pb2_grpc.StreamingServiceStub(channel)


def camera(camera_id: str | None = None, **overrides: Any) -> common_pb2.Camera:
    """A valid 640x360 camera."""
    values: dict[str, Any] = {
        "camera_id": camera_id or f"cam-{uuid.uuid4().hex[:10]}",
        "name": "A4 km 12.3 northbound",
        "resolution": common_pb2.ImageSize(width_px=640, height_px=360),
        "fps": 10.0,
        "speed_limit_kmh": 80.0,
        "time_zone": "Europe/Berlin",
        **overrides,
    }
    return common_pb2.Camera(**values)


async def records(
    bootstrap: str,
    topic: str,
    key: str,
    done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float = 20,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Records of ``topic`` with ``key``, from the start, once ``done(records)`` holds or time runs out."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        session_timeout_ms=1500,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(found):
            batches = await consumer.getmany(timeout_ms=300)
            found.extend(r for batch in batches.values() for r in batch if r.key == key.encode())
        return found
    finally:
        await consumer.stop()


async def settle(seconds: float = 1.0) -> None:
    """Give the broker a moment so that "nothing more arrived" assertions mean something."""
    await asyncio.sleep(seconds)


def structural_jpeg(width: int = 640, height: int = 360, size: int = 2000, seed: int = 0) -> bytes:
    """A JPEG with real markers (SOI, APP0, DQT, SOF0 with the size, DHT, SOS, EOI) and filler scan data.

    The scan is filler that the decoder fills in (it decodes to noise), not a real picture; the
    structural checks read only the markers and the frame header, which are genuine.
    """
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\xff\xdb\x00\x43\x00" + bytes(range(1, 65))
    sof0 = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    sof0 += b"\x03\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    dht = b"\xff\xc4\x00\x1f\x00" + bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]) + bytes(range(12))
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    head = b"\xff\xd8" + app0 + dqt + sof0 + dht + sos
    filler = max(0, size - len(head) - 2)
    scan = bytes((seed + i * 7) % 255 for i in range(filler))  # never 0xFF, so no stray markers
    return head + scan + b"\xff\xd9"


def scene(shift: int = 0, width: int = 640, height: int = 360) -> np.ndarray:
    """A sharp, mid-bright road-like picture (checkerboard with a lane stripe), shifted per frame."""
    ys, xs = np.indices((height, width))
    grey = np.where(((xs + shift) // 16 + ys // 16) % 2 == 1, 190, 60).astype(np.uint8)
    grey[height // 2 - 4 : height // 2 + 4, :] = 240
    return np.dstack([grey, grey // 2 + 40, grey])


def real_jpeg(
    shift: int = 0, width: int = 640, height: int = 360, quality: int = 85, brightness: float = 1.0
) -> bytes:
    """``scene(shift)`` really encoded by OpenCV: a sharp picture, well lit unless ``brightness`` < 1."""
    image = (scene(shift, width, height) * brightness).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(data.tobytes())


STRUCTURAL_JPEG = structural_jpeg()
"""Genuine markers around a filler scan, for tests that cut or edit the structure byte by byte."""
JPEG = real_jpeg()


def now_stamp(offset_s: float = 0.0) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int((time.time() + offset_s) * 1e9))
    return stamp


def frame(sequence: int, jpeg: bytes = JPEG, **extra) -> streaming_pb2.Frame:
    return streaming_pb2.Frame(
        sequence=sequence, capture_time=now_stamp(sequence * 1e-3 - 10), jpeg=jpeg, **extra
    )


class Camera:
    """A camera client over StreamFrames: sends when told, records every server message."""

    def __init__(self, client, camera_id: str, **open_fields) -> None:
        self.open = streaming_pb2.OpenFrameStream(camera_id=camera_id, **open_fields)
        self.call = client.StreamFrames()
        self.acks: list[streaming_pb2.FrameAck] = []
        self.credit = 0
        self.acked_through = 0
        self.opened: streaming_pb2.FrameStreamOpened | None = None
        self.draining = False

    async def start(self) -> streaming_pb2.FrameStreamOpened:
        await self.call.write(streaming_pb2.StreamFramesRequest(open=self.open))
        response = await self.call.read()
        assert response is not grpc.aio.EOF
        assert response.WhichOneof("message") == "opened"
        self.opened = response.opened
        self.credit = response.opened.initial_credit
        self.acked_through = response.opened.acked_through_sequence
        return response.opened

    async def send(self, *frames: streaming_pb2.Frame, batch: bool = False) -> None:
        self.credit -= len(frames)
        if batch:
            await self.call.write(
                streaming_pb2.StreamFramesRequest(batch=streaming_pb2.FrameBatch(frames=frames))
            )
        else:
            for f in frames:
                await self.call.write(streaming_pb2.StreamFramesRequest(frame=f))

    async def read_until(self, through: int, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while self.acked_through < through:
                response = await self.call.read()
                assert response is not grpc.aio.EOF, "stream ended early"
                if response.WhichOneof("message") == "ack":
                    self.acks.append(response.ack)
                    self.credit += response.ack.credit_grant
                    self.acked_through = response.ack.acked_through_sequence
                elif response.WhichOneof("message") == "draining":
                    self.draining = True

    async def close(self) -> list[streaming_pb2.StreamFramesResponse]:
        await self.call.done_writing()
        return await self.rest()

    async def rest(self) -> list[streaming_pb2.StreamFramesResponse]:
        out = []
        while (response := await self.call.read()) is not grpc.aio.EOF:
            out.append(response)
            if response.WhichOneof("message") == "ack":
                self.acks.append(response.ack)
        return out

    def rejections(self) -> dict[int, int]:
        return {r.sequence: r.reason for a in self.acks for r in a.rejections}

    def duplicates(self) -> list[int]:
        return [s for a in self.acks for s in a.duplicate_sequences]


@asynccontextmanager
async def telemetry_host(
    infra: Any,
    auth: Any,
    telemetry: TelemetrySettings | None = None,
    limits: IngestLimits | None = None,
    grpc_port: int = 0,
) -> AsyncIterator[ServiceHost]:
    """A streaming host verifying ``auth``'s tokens (a running auth stack), with telemetry ingest that
    reads device secrets from that auth over gRPC with a service token of a new service account."""
    account, secret = await auth.authority.create_service_account(
        SYSTEM,
        service_account_id=f"streaming-{uuid.uuid4().hex[:8]}",
        description="verifies telemetry signatures",
        roles=("service",),
    )
    source = ServiceTokenSource(auth.auth_http, account.service_account_id, secret)
    settings = StreamingSettings(
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
        bind_host="127.0.0.1",
        grpc_port=grpc_port,
        register_in_discovery=False,
        metrics_port=None,
        drain_grace_s=2.0,
        migrate_on_start=False,
        auth_url=auth.auth_http,
    )
    wanted = telemetry or TelemetrySettings()
    wanted = wanted.model_copy(update={"auth_grpc_address": auth.auth_grpc})
    host = ServiceHost(
        build(
            settings,
            limits=limits,
            telemetry=wanted,
            auth_interceptors=[BearerTokenInterceptor(source)],
        )
    )
    await host.start()
    try:
        servicer: Any = host.spec.grpc_services[0].servicer
        deadline = time.monotonic() + 20
        while not servicer.ingest._publisher.started:
            assert time.monotonic() < deadline, "the Kafka producer did not connect"
            await asyncio.sleep(0.05)
        yield host
    finally:
        await host.stop()
