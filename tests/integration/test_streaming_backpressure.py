"""A frozen broker mid-stream (SIGSTOP on a private Tansu): no ack without Kafka, nothing lost after."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest

from infrastructure.embedded import EmbeddedInfra, free_ports
from itsmesh.v1 import events_pb2, streaming_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC
from services.streaming.ingest import IngestLimits
from tests.integration.streaming_host import Camera, camera, frame, records, streaming_host, stub

pytestmark = pytest.mark.integration


async def _pump(cam: Camera) -> None:
    """Read every server message in the background, as a real camera does."""
    while (response := await cam.call.read()) is not grpc.aio.EOF:
        if response.WhichOneof("message") == "ack":
            cam.acks.append(response.ack)
            cam.acked_through = response.ack.acked_through_sequence


async def _until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_frozen_broker_withholds_acks_and_credit_then_everything_lands_once(infra, tmp_path):
    shared = {"DATABASE_URL": infra.database_url, "REDIS_URL": infra.redis_url}
    launcher = EmbeddedInfra(tmp_path, ports=free_ports(), env=shared)
    async with launcher as private:
        limits = IngestLimits(window_frames=8, backpressure_after_s=0.2)
        async with streaming_host(private, limits) as host, stub(host) as client:
            new = camera()
            await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
            cam = Camera(client, new.camera_id)
            await cam.start()
            pump = asyncio.create_task(_pump(cam))
            await cam.send(*(frame(s) for s in (1, 2, 3)))
            await _until(lambda: cam.acked_through == 3, 15)
            pid = launcher.pids()["kafka"]
            os.kill(pid, signal.SIGSTOP)
            try:
                await cam.send(*(frame(s) for s in (4, 5, 6)))
                await _until(lambda: any(a.backpressure for a in cam.acks), 5)
                await asyncio.sleep(0.5)
                assert cam.acked_through == 3  # nothing is acknowledged while Kafka cannot confirm it
                assert all(a.credit_grant == 0 for a in cam.acks if a.backpressure)
            finally:
                os.kill(pid, signal.SIGCONT)
            await _until(lambda: cam.acked_through == 6, 20)
            await cam.call.done_writing()
            await pump
        assert not cam.acks[-1].backpressure
        found = await records(
            private.kafka_bootstrap_servers, CAMERA_DETECTIONS_TOPIC, new.camera_id, lambda f: len(f) >= 6
        )
    sequences = sorted(events_pb2.CameraDetectionEvent.FromString(r.value).sequence for r in found)
    assert sequences == [1, 2, 3, 4, 5, 6]
