"""The edge client against real auth, streaming, Redis and the broker: a device whose streams are cut or
whose server restarts mid-stream loses nothing and stores nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections import Counter

import grpc
import pytest

from itsmesh.v1 import events_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.edge import DeviceCredentials, EdgeSession, Frame, Outcome, Reading, Settled
from mesh.events import CAMERA_DETECTIONS_TOPIC, TELEMETRY_READINGS_TOPIC
from services.auth.authority import SYSTEM
from tests.integration.auth_stack import bearer, running_stack, user_token
from tests.integration.streaming_host import JPEG, camera, records, settle, telemetry_host

pytestmark = pytest.mark.integration


class Proxy:
    """A TCP relay in front of a server whose connections can be cut at once (a network failure)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    def cut(self) -> None:
        """Abort every relayed connection."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra, with_services=False) as running:
        yield running


async def _credentials(stack, kind: str, prefix: str) -> DeviceCredentials:
    device_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    _, issued = await stack.authority.register_device(
        SYSTEM, device_id=device_id, kind=kind, name=device_id, labels={}
    )
    return DeviceCredentials(device_id, issued.api_key, issued.hmac_key_id, issued.hmac_secret)


async def _send_readings(telemetry, count: int, pause_every: int = 10) -> list[int]:
    sequences = []
    for i in range(count):
        reading = Reading(latitude_deg=52.5 + i * 1e-4, longitude_deg=13.4, speed_kmh=50.0, heading_deg=45.0)
        sequences.append(await telemetry.send(reading))
        if i % pause_every == 0:
            await asyncio.sleep(0.01)  # a device produces over time, so failures land mid-stream
    return sequences


def _exactly_once(found, decode, key_of) -> Counter[str]:
    return Counter(key_of(decode(r.value)) for r in found)


async def test_readings_survive_cut_connections_without_loss_or_duplicates(infra, stack, kafka_bootstrap):
    credentials = await _credentials(stack, "telemetry_unit", "gps")
    results: list[Settled] = []
    async with telemetry_host(infra, stack) as host:
        proxy = Proxy(host.grpc_port)
        await proxy.start()
        try:
            async with EdgeSession(
                credentials, auth_url=stack.auth_http, address=f"127.0.0.1:{proxy.port}"
            ) as session:
                telemetry = session.telemetry(on_result=results.append)
                sender = asyncio.create_task(_send_readings(telemetry, 400))
                for _ in range(4):
                    await asyncio.sleep(0.3)
                    proxy.cut()
                sequences = await sender
                assert await session.flush(timeout_s=30), telemetry.last_error
                counters = session.counters
        finally:
            await proxy.close()
    assert counters.reconnects >= 1
    assert counters.rejected == 0
    assert counters.buffered == 0
    assert counters.acked + counters.duplicate == 400
    assert sorted(r.sequence for r in results) == sorted(sequences)
    assert {r.outcome for r in results} <= {Outcome.ACCEPTED, Outcome.DUPLICATE}
    found = await records(
        kafka_bootstrap, TELEMETRY_READINGS_TOPIC, credentials.device_id, lambda f: len(f) >= 400
    )
    await settle()
    found = await records(
        kafka_bootstrap, TELEMETRY_READINGS_TOPIC, credentials.device_id, lambda f: False, timeout=3
    )
    per_key = _exactly_once(found, events_pb2.TelemetryReading.FromString, lambda r: r.idempotency_key)
    assert len(per_key) == 400, "every reading is in Kafka"
    assert set(per_key.values()) == {1}, "and none twice"


async def test_readings_and_frames_survive_a_server_restart(infra, stack, kafka_bootstrap):
    gps = await _credentials(stack, "telemetry_unit", "gps")
    cam = await _credentials(stack, "camera", "cam")
    admin = await user_token(stack, "admin")
    port = _free_port()
    async with telemetry_host(infra, stack, grpc_port=port) as host:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
            await streaming_pb2_grpc.StreamingServiceStub(channel).RegisterCamera(
                streaming_pb2.RegisterCameraRequest(camera=camera(cam.device_id)), metadata=bearer(admin)
            )
        async with (
            EdgeSession(gps, auth_url=stack.auth_http, address=f"127.0.0.1:{port}") as gps_session,
            EdgeSession(cam, auth_url=stack.auth_http, address=f"127.0.0.1:{port}") as cam_session,
        ):
            telemetry = gps_session.telemetry()
            frames = cam_session.camera()
            readings = asyncio.create_task(_send_readings(telemetry, 200))
            for _ in range(60):
                await frames.send(Frame(jpeg=JPEG))
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)
            await host.stop()  # drains: the clients are told to reconnect
            restarted = telemetry_host(infra, stack, grpc_port=port)
            await restarted.__aenter__()
            try:
                for _ in range(60):
                    await frames.send(Frame(jpeg=JPEG))
                await readings
                assert await gps_session.flush(timeout_s=30), telemetry.last_error
                assert await cam_session.flush(timeout_s=30), frames.last_error
            finally:
                await restarted.__aexit__(None, None, None)
            gps_counters, cam_counters = gps_session.counters, cam_session.counters
    assert gps_counters.acked + gps_counters.duplicate == 200
    assert gps_counters.rejected == 0
    assert cam_counters.acked + cam_counters.duplicate == 120
    assert cam_counters.rejected == 0
    assert gps_counters.reconnects >= 1
    assert cam_counters.reconnects >= 1
    await records(kafka_bootstrap, TELEMETRY_READINGS_TOPIC, gps.device_id, lambda f: len(f) >= 200)
    await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, cam.device_id, lambda f: len(f) >= 120)
    await settle()
    found = await records(
        kafka_bootstrap, TELEMETRY_READINGS_TOPIC, gps.device_id, lambda f: False, timeout=3
    )
    per_key = _exactly_once(found, events_pb2.TelemetryReading.FromString, lambda r: r.idempotency_key)
    assert len(per_key) == 200
    assert set(per_key.values()) == {1}
    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, cam.device_id, lambda f: False, timeout=3)
    per_frame = _exactly_once(found, events_pb2.CameraDetectionEvent.FromString, lambda e: str(e.sequence))
    assert len(per_frame) == 120
    assert set(per_frame.values()) == {1}


async def test_a_device_with_bad_credentials_keeps_its_readings_buffered(infra, stack):
    credentials = await _credentials(stack, "telemetry_unit", "gps")
    wrong = DeviceCredentials(credentials.device_id, "imk_not-the-key", credentials.hmac_key_id, b"x" * 32)
    async with (
        telemetry_host(infra, stack) as host,
        EdgeSession(wrong, auth_url=stack.auth_http, address=f"127.0.0.1:{host.grpc_port}") as session,
    ):
        telemetry = session.telemetry()
        await telemetry.send(Reading(latitude_deg=1.0, longitude_deg=2.0))
        assert not await session.flush(timeout_s=1.0)
        assert session.counters.buffered == 1
        assert session.counters.acked == 0
        assert "UNAUTHENTICATED" in telemetry.last_error or "refused" in telemetry.last_error


async def test_a_reading_signed_with_the_wrong_secret_is_settled_as_rejected(infra, stack):
    credentials = await _credentials(stack, "telemetry_unit", "gps")
    forged = DeviceCredentials(credentials.device_id, credentials.api_key, credentials.hmac_key_id, b"y" * 32)
    results: list[Settled] = []
    async with (
        telemetry_host(infra, stack) as host,
        EdgeSession(forged, auth_url=stack.auth_http, address=f"127.0.0.1:{host.grpc_port}") as session,
    ):
        telemetry = session.telemetry(on_result=results.append)
        await telemetry.send(Reading(latitude_deg=1.0, longitude_deg=2.0))
        assert await session.flush(timeout_s=10)
    assert [(r.outcome, r.reason, r.field) for r in results] == [
        (Outcome.REJECTED, "TELEMETRY_REJECT_REASON_BAD_SIGNATURE", "signature")
    ]
