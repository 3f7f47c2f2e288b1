"""Two streaming instances on the same Redis, PostgreSQL and Kafka: status, streams and claims are shared."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import field_mask_pb2
from redis.asyncio import Redis

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import CAMERA_EVENTS_TOPIC
from services.streaming.ingest import IngestLimits
from services.streaming.live_status import LiveStatusStore
from services.streaming.quality import QualityThresholds
from tests.integration.private_valkey import PrivateValkey
from tests.integration.streaming_host import Camera, camera, frame, real_jpeg, records, streaming_host, stub

pytestmark = pytest.mark.integration

ONLINE = streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE
OFFLINE = streaming_pb2.CAMERA_CONNECTION_STATE_OFFLINE
NEVER = streaming_pb2.CAMERA_CONNECTION_STATE_NEVER_CONNECTED
LIMITS = IngestLimits(
    window_frames=32,
    config_check_s=1.0,
    quality_sample_every_frames=1,
    quality_min_sample_interval_s=0.0,
    quality_thresholds=QualityThresholds(degrade_after_samples=2, restore_after_samples=2),
)


@pytest.fixture(scope="module")
async def hosts(infra):
    async with streaming_host(infra, LIMITS) as first, streaming_host(infra, LIMITS) as second:
        yield first, second


async def _register(client, **overrides) -> str:
    new = camera(**overrides)
    await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
    return new.camera_id


async def _eventually(read, check, timeout: float = 10.0):
    """``read()`` again until ``check(value)`` holds (statuses are renewed once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"never reached; last value: {value}"
        await asyncio.sleep(0.2)


async def test_a_camera_streaming_to_one_instance_is_online_on_the_other(hosts):
    a, b = hosts
    async with stub(a) as on_a, stub(b) as on_b:
        camera_id = await _register(on_a)
        cam = Camera(on_b, camera_id, client_version="cam/2.0")
        opened = await cam.start()
        assert (
            opened.instance_id
            != (await on_a.GetIngestStatus(streaming_pb2.GetIngestStatusRequest())).instance_id
        )
        await cam.send(*(frame(s, jpeg=real_jpeg(s)) for s in range(1, 6)))
        await cam.read_until(5)

        def get():
            return on_a.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))

        status = await _eventually(get, lambda s: s.frames_accepted == 5)
        assert status.state == ONLINE
        assert (status.stream_id, status.instance_id) == (opened.stream_id, opened.instance_id)
        assert status.acked_through_sequence == 5
        assert status.HasField("connect_time")
        assert status.HasField("last_frame_time")
        assert status.last_quality.sampled
        assert status.last_quality.brightness_mean > 50
        assert list(status.active_issues) == []
        assert 0 < status.ack_latency_p50_ms <= status.ack_latency_p99_ms

        listed = await on_a.ListStreams(streaming_pb2.ListStreamsRequest())
        mine = [s for s in listed.streams if s.stream_id == opened.stream_id]
        assert len(mine) == 1
        assert (mine[0].source_id, mine[0].instance_id, mine[0].client_version) == (
            camera_id,
            opened.instance_id,
            "cam/2.0",
        )
        assert listed.instance_id != opened.instance_id  # A answered, about B's stream

        statuses = await on_a.ListCameraStatuses(streaming_pb2.ListCameraStatusesRequest(state=ONLINE))
        assert camera_id in [s.camera_id for s in statuses.statuses]
        assert statuses.online_count >= 1

        await cam.close()
        status = await _eventually(get, lambda s: s.state == OFFLINE, timeout=5)
        assert (status.stream_id, status.instance_id, status.acked_through_sequence) == ("", "", 5)
        assert status.last_quality.sampled  # the last measurement stays with the offline camera
        listed = await on_a.ListStreams(streaming_pb2.ListStreamsRequest())
        assert opened.stream_id not in [s.stream_id for s in listed.streams]


async def test_a_degraded_camera_shows_its_active_issues_on_every_instance(hosts):
    a, b = hosts
    async with stub(a) as on_a, stub(b) as on_b:
        camera_id = await _register(on_a)
        cam = Camera(on_b, camera_id)
        await cam.start()
        dark = [frame(s, jpeg=real_jpeg(s, brightness=0.15)) for s in range(1, 5)]
        await cam.send(*dark)
        await cam.read_until(4)
        status = await _eventually(
            lambda: on_a.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id)),
            lambda s: len(s.active_issues) > 0,
        )
        assert list(status.active_issues) == [common_pb2.QUALITY_ISSUE_TOO_DARK]
        assert status.last_quality.brightness_mean < 40
        await cam.close()


async def test_one_live_stream_per_camera_across_instances(hosts, kafka_bootstrap):
    a, b = hosts
    async with stub(a) as on_a, stub(b) as on_b:
        camera_id = await _register(on_a)
        first = Camera(on_b, camera_id)
        await first.start()
        await first.send(frame(1))
        await first.read_until(1)

        second = Camera(on_a, camera_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await second.start()
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

        taker = Camera(on_a, camera_id, take_over=True)
        opened = await taker.start()
        assert opened.acked_through_sequence == 1
        with pytest.raises(grpc.aio.AioRpcError) as ended:  # B learns it at its next renewal
            async with asyncio.timeout(10):
                await first.rest()
        assert ended.value.code() == grpc.StatusCode.ABORTED
        await taker.send(frame(2))
        await taker.read_until(2)
        status = await on_b.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))
        assert (status.state, status.stream_id) == (ONLINE, opened.stream_id)
        await taker.close()
    # B's stream ended because the camera moved, not because it went away: no offline event for it.
    found = await records(kafka_bootstrap, CAMERA_EVENTS_TOPIC, camera_id, lambda f: False, timeout=2)
    events = [events_pb2.CameraEvent.FromString(r.value) for r in found]
    assert [e.offline.stream_id for e in events if e.WhichOneof("kind") == "offline"] == [opened.stream_id]


async def test_deleting_a_camera_on_one_instance_ends_its_stream_on_the_other(hosts):
    a, b = hosts
    async with stub(a) as on_a, stub(b) as on_b:
        camera_id = await _register(on_a)
        cam = Camera(on_b, camera_id)
        await cam.start()
        await cam.send(frame(1))
        await cam.read_until(1)
        await on_a.DeleteCamera(streaming_pb2.DeleteCameraRequest(camera_id=camera_id))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(10):
                await cam.rest()
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_state_filtered_page_is_full(hosts):
    a, b = hosts
    async with stub(a) as on_a, stub(b) as on_b:
        group = camera().camera_id
        ids = sorted([await _register(on_a, labels={"group": group}) for _ in range(6)])
        cams = []
        for camera_id, client in ((ids[1], on_a), (ids[3], on_b), (ids[5], on_b)):
            cam = Camera(client, camera_id)
            await cam.start()
            await cam.send(frame(1))
            await cam.read_until(1)
            cams.append(cam)

        async def pages(state) -> list[list[str]]:
            found, token = [], ""
            while True:
                page = await on_a.ListCameraStatuses(
                    streaming_pb2.ListCameraStatusesRequest(
                        page_size=2, page_token=token, labels={"group": group}, state=state
                    )
                )
                found.append([s.camera_id for s in page.statuses])
                assert all(s.state == state for s in page.statuses)
                token = page.next_page_token
                if not token:
                    return found

        online = await pages(ONLINE)
        assert online[:2] == [[ids[1], ids[3]], [ids[5]]]  # full first page, though ids 0 and 2 precede
        assert online[2:] in ([], [[]])
        never = await pages(NEVER)
        assert [i for page in never for i in page] == [ids[0], ids[2], ids[4]]
        assert len(never[0]) == 2
        for cam in cams:
            await cam.close()


async def test_without_redis_status_comes_from_this_instance_and_the_stream_goes_on(infra, tmp_path):
    valkey = PrivateValkey(tmp_path)
    await valkey.start()
    own = SimpleNamespace(
        database_url=infra.database_url,
        redis_url=valkey.url,
        kafka_bootstrap_servers=infra.kafka_bootstrap_servers,
    )
    try:
        async with streaming_host(own, LIMITS) as host, stub(host) as client:
            camera_id = await _register(client)
            cam = Camera(client, camera_id)
            opened = await cam.start()
            await cam.send(frame(1))
            await cam.read_until(1)
            await valkey.kill()

            await cam.send(frame(2), frame(3))
            await cam.read_until(3)
            status = await client.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))
            assert (status.state, status.stream_id, status.acked_through_sequence) == (
                ONLINE,
                opened.stream_id,
                3,
            )
            listed = await client.ListStreams(streaming_pb2.ListStreamsRequest())
            assert opened.stream_id in [s.stream_id for s in listed.streams]
            await asyncio.sleep(2.5)  # renewals fail meanwhile; the stream is not ended for that
            await cam.send(frame(4))
            await cam.read_until(4)

            await valkey.start()  # back, but empty: the stream claims its camera again
            redis = Redis.from_url(valkey.url)
            try:
                view = LiveStatusStore(redis)

                async def shared() -> dict[str, streaming_pb2.CameraStatus]:
                    return await view.statuses([camera_id])

                found = await _eventually(shared, lambda found: camera_id in found)
                assert (found[camera_id].state, found[camera_id].stream_id) == (ONLINE, opened.stream_id)
            finally:
                await redis.aclose()
            await cam.send(frame(5))
            await cam.read_until(5)
            await cam.close()
    finally:
        await valkey.kill()


async def test_a_stream_whose_instance_died_goes_offline_when_its_lease_lapses(hosts, infra, kafka_bootstrap):
    a, _ = hosts
    async with stub(a) as client:
        camera_id = await _register(client)
        redis = Redis.from_url(infra.redis_url)
        try:
            # A stream claimed by an instance that then died: nobody renews its lease.
            dead = LiveStatusStore(redis)
            status = streaming_pb2.CameraStatus(
                camera_id=camera_id,
                state=ONLINE,
                stream_id="stream-of-a-dead-instance",
                instance_id="dead-instance",
                acked_through_sequence=41,
            )
            stream = streaming_pb2.StreamInfo(stream_id=status.stream_id, source_id=camera_id)
            assert await dead.claim("dead-instance", status, stream, take_over=False) is None
        finally:
            await redis.aclose()

        def get():
            return client.GetCameraStatus(streaming_pb2.GetCameraStatusRequest(camera_id=camera_id))

        assert (await get()).instance_id == "dead-instance"
        with pytest.raises(grpc.aio.AioRpcError) as held:
            await Camera(client, camera_id).start()
        assert held.value.code() == grpc.StatusCode.ALREADY_EXISTS

        status = await _eventually(get, lambda s: s.state == OFFLINE, timeout=15)
        assert status.acked_through_sequence == 41
        found = await records(
            kafka_bootstrap,
            CAMERA_EVENTS_TOPIC,
            camera_id,
            lambda f: any(events_pb2.CameraEvent.FromString(r.value).HasField("offline") for r in f),
        )
        offline = [events_pb2.CameraEvent.FromString(r.value).offline for r in found]
        offline = [o for o in offline if o.stream_id]
        assert [(o.stream_id, o.reason) for o in offline] == [
            ("stream-of-a-dead-instance", events_pb2.CAMERA_OFFLINE_REASON_LEASE_EXPIRED)
        ]
        cam = Camera(client, camera_id)  # the camera is free again, without take_over
        await cam.start()
        await cam.close()


async def test_a_camera_changed_on_one_instance_is_followed_by_its_stream_on_the_other(hosts):
    a, b = hosts
    async with stub(a) as on_a, stub(b) as on_b:
        camera_id = await _register(on_a)
        cam = Camera(on_b, camera_id)
        await cam.start()
        await cam.send(frame(1))
        await cam.read_until(1)
        current = await on_a.GetCamera(streaming_pb2.GetCameraRequest(camera_id=camera_id))
        await on_a.UpdateCamera(
            streaming_pb2.UpdateCameraRequest(
                camera=camera(
                    camera_id,
                    resolution=common_pb2.ImageSize(width_px=1280, height_px=720),
                    etag=current.etag,
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["resolution"]),
            )
        )
        sequence, deadline = 1, time.monotonic() + 15
        while True:  # within config_check_s the stream checks frames against the new resolution
            sequence += 1
            await cam.send(frame(sequence, jpeg=real_jpeg(sequence, 1280, 720)))
            await cam.read_until(sequence)
            if sequence not in cam.rejections():
                break
            assert cam.rejections()[sequence] == common_pb2.FRAME_REJECT_REASON_DIMENSIONS_MISMATCH
            assert time.monotonic() < deadline, "the stream never followed the new resolution"
            await asyncio.sleep(0.3)

        current = await on_a.GetCamera(streaming_pb2.GetCameraRequest(camera_id=camera_id))
        await on_a.UpdateCamera(
            streaming_pb2.UpdateCameraRequest(
                camera=camera(camera_id, disabled=True, etag=current.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(10):
                await cam.rest()
        assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
