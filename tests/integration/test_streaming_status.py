"""Status RPCs against a real streaming host while a real camera streams frames."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from itsmesh.v1 import streaming_pb2
from services.streaming.ingest import IngestLimits
from tests.integration.streaming_host import Camera, camera, frame, streaming_host, stub

pytestmark = pytest.mark.integration

ONLINE = streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE
OFFLINE = streaming_pb2.CAMERA_CONNECTION_STATE_OFFLINE
NEVER = streaming_pb2.CAMERA_CONNECTION_STATE_NEVER_CONNECTED


@pytest.fixture(scope="module")
async def host(infra):
    async with streaming_host(infra, IngestLimits(window_frames=16)) as running:
        yield running


async def _register(client, **overrides) -> str:
    new = camera(**overrides)
    await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
    return new.camera_id


async def test_a_streaming_camera_is_online_with_its_progress_and_offline_after(host):
    async with stub(host) as client:
        camera_id = await _register(client)
        before = await client.GetIngestStatus(streaming_pb2.GetIngestStatusRequest())
        status = await client.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))
        assert status.state == NEVER
        cam = Camera(client, camera_id, client_version="cam/1.0")
        opened = await cam.start()
        await cam.send(*(frame(s) for s in range(1, 6)), frame(6, jpeg=b"not a jpeg"))
        await cam.read_until(6)
        await cam.send(frame(3), frame(7))  # 3 is already acknowledged: a duplicate
        await cam.read_until(7)
        await asyncio.sleep(0.2)

        status = await client.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))
        assert status.state == ONLINE
        assert (status.stream_id, status.instance_id) == (opened.stream_id, opened.instance_id)
        assert status.acked_through_sequence == 7
        assert (status.frames_accepted, status.frames_rejected, status.frames_duplicate) == (6, 1, 1)
        assert status.frames_per_second > 0
        assert status.HasField("connect_time")
        assert status.HasField("last_frame_time")

        listed = await client.ListStreams(streaming_pb2.ListStreamsRequest())
        assert listed.instance_id == opened.instance_id
        mine = [s for s in listed.streams if s.stream_id == opened.stream_id]
        assert len(mine) == 1
        info = mine[0]
        assert (info.kind, info.source_id, info.client_version) == (
            streaming_pb2.STREAM_KIND_FRAMES,
            camera_id,
            "cam/1.0",
        )
        assert (info.items_received, info.items_accepted, info.items_rejected, info.items_duplicate) == (
            8,
            6,
            1,
            1,
        )
        assert info.acked_through_sequence == 7
        assert info.credit_available > 0

        during = await client.GetIngestStatus(streaming_pb2.GetIngestStatusRequest())
        assert during.instance_id == opened.instance_id
        assert during.frame_streams >= 1
        assert during.frames_accepted_total - before.frames_accepted_total >= 6
        assert during.frames_rejected_total - before.frames_rejected_total >= 1
        assert during.frames_duplicate_total - before.frames_duplicate_total >= 1
        assert during.kafka_healthy
        assert during.redis_healthy
        assert not during.backpressure

        await cam.close()
        await asyncio.sleep(0.2)
        status = await client.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))
        assert status.state == OFFLINE
        assert (status.stream_id, status.instance_id) == ("", "")
        assert status.acked_through_sequence == 7
        listed = await client.ListStreams(streaming_pb2.ListStreamsRequest())
        assert opened.stream_id not in [s.stream_id for s in listed.streams]


async def test_unknown_camera_is_not_found(host):
    async with stub(host) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id="cam-nobody"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_paging_input_names_the_field(host):
    async with stub(host) as client:
        for call, request, field in (
            (client.ListCameraStatuses, streaming_pb2.ListCameraStatusesRequest(page_size=-1), "page_size"),
            (
                client.ListCameraStatuses,
                streaming_pb2.ListCameraStatusesRequest(page_token="x!"),
                "page_token",
            ),
            (client.ListStreams, streaming_pb2.ListStreamsRequest(page_size=1001), "page_size"),
            (client.ListStreams, streaming_pb2.ListStreamsRequest(page_token="nonsense"), "page_token"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in caught.value.details()


async def test_camera_statuses_page_through_every_camera(host):
    async with stub(host) as client:
        group = camera().camera_id
        ids = sorted([await _register(client, labels={"group": group}) for _ in range(5)])
        cam = Camera(client, ids[1])
        await cam.start()
        await cam.send(frame(1))
        await cam.read_until(1)

        seen: list[streaming_pb2.CameraStatus] = []
        token = ""
        pages = 0
        while True:
            page = await client.ListCameraStatuses(
                streaming_pb2.ListCameraStatusesRequest(
                    page_size=2, page_token=token, labels={"group": group}
                )
            )
            pages += 1
            seen.extend(page.statuses)
            assert page.online_count >= 1
            assert page.registered_count >= 5
            token = page.next_page_token
            if not token:
                break
        assert pages == 3
        assert [s.camera_id for s in seen] == ids
        assert [s.state for s in seen] == [NEVER, ONLINE, NEVER, NEVER, NEVER]

        online = await client.ListCameraStatuses(
            streaming_pb2.ListCameraStatusesRequest(labels={"group": group}, state=ONLINE)
        )
        assert [s.camera_id for s in online.statuses] == [ids[1]]

        listed = await client.ListStreams(streaming_pb2.ListStreamsRequest(page_size=1))
        assert len(listed.streams) == 1
        telemetry = await client.ListStreams(
            streaming_pb2.ListStreamsRequest(kind=streaming_pb2.STREAM_KIND_TELEMETRY)
        )
        assert list(telemetry.streams) == []
        await cam.close()
