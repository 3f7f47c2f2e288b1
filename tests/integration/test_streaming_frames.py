"""StreamFrames against the real broker and PostgreSQL: acks only after Kafka, resume, rejects, credit."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC, CAMERA_DLQ_TOPIC, CAMERA_EVENTS_TOPIC
from mesh.status import details_from_trailers, status_details
from services.streaming.ingest import IngestLimits
from tests.integration.streaming_host import (
    JPEG,
    Camera,
    camera,
    frame,
    now_stamp,
    real_jpeg,
    records,
    settle,
    streaming_host,
    stub,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def host(infra):
    async with streaming_host(infra, IngestLimits(window_frames=16, max_batch_frames=8)) as running:
        yield running


async def _register(client, **overrides) -> str:
    new = camera(**overrides)
    await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
    return new.camera_id


def _sequences(found) -> list[int]:
    return [events_pb2.CameraDetectionEvent.FromString(r.value).sequence for r in found]


async def test_every_acked_frame_is_in_kafka_exactly_once(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        opened = await cam.start()
        assert (opened.acked_through_sequence, opened.initial_credit) == (0, 16)
        assert (opened.expected_resolution.width_px, opened.expected_resolution.height_px) == (640, 360)
        detection = common_pb2.Detection(
            object_class=common_pb2.OBJECT_CLASS_CAR,
            confidence=0.9,
            box=common_pb2.BoundingBox(left_px=10, top_px=20, width_px=50, height_px=30),
        )
        sent = 0
        while sent < 40:
            n = min(cam.credit, 40 - sent)
            await cam.send(
                *(frame(sent + i + 1, detections=[detection], has_edge_detections=True) for i in range(n))
            )
            sent += n
            await cam.read_until(sent)
        await cam.close()
    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: len(f) >= 40)
    await settle()
    assert sorted(_sequences(found)) == list(range(1, 41))
    first = events_pb2.CameraDetectionEvent.FromString(found[0].value)
    assert first.detection_source == common_pb2.DETECTION_SOURCE_EDGE
    assert list(first.detections) == [detection]
    assert (first.frame_size.width_px, first.frame_size.height_px, first.jpeg_size_bytes) == (
        640,
        360,
        len(JPEG),
    )
    assert dict(found[0].headers)["event-id"] == first.event_id.encode()


async def test_resent_frames_after_reconnect_are_acked_as_duplicates_not_republished(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(*(frame(s) for s in range(1, 6)))
        await cam.read_until(5)
        cam.call.cancel()  # the camera drops without closing
        await asyncio.sleep(0.3)
        again = Camera(client, camera_id, resume_from_sequence=3, take_over=True)
        opened = await again.start()
        assert opened.acked_through_sequence == 5
        await again.send(*(frame(s) for s in range(3, 9)), batch=True)
        await again.read_until(8)
        await again.close()
    assert sorted(again.duplicates()) == [3, 4, 5]
    await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: len(f) >= 8)
    await settle()
    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: False, timeout=2)
    assert sorted(_sequences(found)) == list(range(1, 9))  # each frame exactly once


async def test_invalid_frames_are_rejected_with_reasons_and_copied_to_the_dlq(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(
            frame(1),
            frame(2, jpeg=b"not a jpeg at all"),
            frame(3, jpeg=JPEG[:-2]),
            frame(4, jpeg=real_jpeg(0, 1920, 1080)),
            streaming_pb2.Frame(sequence=5, jpeg=JPEG),
            streaming_pb2.Frame(sequence=6, jpeg=JPEG, capture_time=now_stamp(60)),
            frame(7, jpeg=b""),
            frame(8),
        )
        await cam.read_until(8)
        await cam.close()
    reasons = cam.rejections()
    assert reasons == {
        2: common_pb2.FRAME_REJECT_REASON_NOT_JPEG,
        3: common_pb2.FRAME_REJECT_REASON_MALFORMED_JPEG,
        4: common_pb2.FRAME_REJECT_REASON_DIMENSIONS_MISMATCH,
        5: common_pb2.FRAME_REJECT_REASON_MISSING_CAPTURE_TIME,
        6: common_pb2.FRAME_REJECT_REASON_CAPTURE_TIME_IN_FUTURE,
        7: common_pb2.FRAME_REJECT_REASON_EMPTY_PAYLOAD,
    }
    letters = await records(kafka_bootstrap, CAMERA_DLQ_TOPIC, camera_id, lambda f: len(f) >= 6)
    by_sequence = {d.sequence: d for d in (events_pb2.DeadLetter.FromString(r.value) for r in letters)}
    assert {s: d.frame_reject_reason for s, d in by_sequence.items()} == reasons
    assert streaming_pb2.Frame.FromString(by_sequence[2].payload).jpeg == b"not a jpeg at all"
    assert by_sequence[4].reason_detail == "1920x1080, expected 640x360"
    accepted = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: len(f) >= 2)
    assert sorted(_sequences(accepted)) == [1, 8]


async def test_size_age_order_and_detection_rejections_reach_the_dlq(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        outside = common_pb2.Detection(
            object_class=common_pb2.OBJECT_CLASS_VEHICLE,
            confidence=0.9,
            box=common_pb2.BoundingBox(left_px=600, top_px=10, width_px=100, height_px=40),
        )
        await cam.send(
            frame(1),
            frame(2, jpeg=JPEG + bytes(3 * 1024 * 1024)),  # over the 2 MiB frame limit, under gRPC's 4 MiB
            streaming_pb2.Frame(sequence=3, jpeg=JPEG, capture_time=now_stamp(-2 * 24 * 3600)),
            streaming_pb2.Frame(sequence=4, jpeg=JPEG, capture_time=now_stamp(-60)),  # before frame 1
            frame(5, detections=[outside], has_edge_detections=True),
        )
        # 6 after 7 in one message: 7 cannot be settled in between, so 6 is out of order, not a duplicate.
        await cam.send(frame(7), frame(6), batch=True)
        await cam.read_until(7)
        await cam.close()
    reasons = cam.rejections()
    assert reasons == {
        2: common_pb2.FRAME_REJECT_REASON_TOO_LARGE,
        3: common_pb2.FRAME_REJECT_REASON_CAPTURE_TIME_TOO_OLD,
        4: common_pb2.FRAME_REJECT_REASON_CAPTURE_TIME_OUT_OF_ORDER,
        5: common_pb2.FRAME_REJECT_REASON_INVALID_DETECTION,
        6: common_pb2.FRAME_REJECT_REASON_SEQUENCE_OUT_OF_ORDER,
    }
    letters = await records(kafka_bootstrap, CAMERA_DLQ_TOPIC, camera_id, lambda f: len(f) >= 5)
    by_sequence = {d.sequence: d for d in (events_pb2.DeadLetter.FromString(r.value) for r in letters)}
    assert {s: d.frame_reject_reason for s, d in by_sequence.items()} == reasons
    assert by_sequence[2].payload_truncated  # the DLQ keeps a bounded prefix of an oversized frame
    accepted = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: len(f) >= 2)
    assert sorted(_sequences(accepted)) == [1, 7]


async def test_a_skipped_frame_sent_after_its_successor_was_acked_is_out_of_order_not_a_duplicate(
    host, kafka_bootstrap
):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(frame(1), frame(3))
        await cam.read_until(3)  # acked through 3, though 2 never arrived
        await cam.send(frame(2), frame(4))
        await cam.read_until(4)
        await cam.close()
    assert cam.rejections() == {2: common_pb2.FRAME_REJECT_REASON_SEQUENCE_OUT_OF_ORDER}
    assert cam.duplicates() == []  # never acknowledged as delivered
    letters = await records(kafka_bootstrap, CAMERA_DLQ_TOPIC, camera_id, lambda f: len(f) >= 1)
    assert [events_pb2.DeadLetter.FromString(r.value).sequence for r in letters] == [2]
    accepted = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: len(f) >= 3)
    assert sorted(_sequences(accepted)) == [1, 3, 4]


async def test_frames_beyond_credit_end_the_stream_with_resource_exhausted(infra):
    # A window of 4 and one batch of 5 right after open: no credit can have come back in between.
    async with (
        streaming_host(infra, IngestLimits(window_frames=4, max_batch_frames=8)) as own,
        stub(own) as client,
    ):
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        opened = await cam.start()
        assert opened.initial_credit == 4
        await cam.send(*(frame(s) for s in range(1, 6)), batch=True)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await cam.read_until(10_000)
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_credit_is_granted_back_as_frames_settle_and_never_exceeds_the_window(host):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        opened = await cam.start()
        sent = 0
        for _ in range(5):
            n = cam.credit
            assert 0 < n <= opened.initial_credit
            await cam.send(*(frame(sent + i + 1) for i in range(n)))
            sent += n
            await cam.read_until(sent)
            assert cam.credit <= opened.initial_credit
        await cam.close()
    assert sent > opened.initial_credit  # more than the first grant went through: credit came back


async def test_a_misbehaving_stream_does_not_disturb_another_camera(host):
    async with stub(host) as client:
        good_id, bad_id = await _register(client), await _register(client)
        good = Camera(client, good_id)
        await good.start()
        bad = Camera(client, bad_id)
        await bad.start()
        await good.send(*(frame(s) for s in range(1, 6)))
        await bad.send(*(frame(s) for s in range(1, 10)), batch=True)  # more than max_batch_frames
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await bad.read_until(10_000)
        await good.read_until(5)
        await good.send(*(frame(s) for s in range(6, 11)))
        await good.read_until(10)
        await good.close()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert good.rejections() == {}


async def test_malformed_and_oversized_messages_end_only_their_own_stream(host):
    async with stub(host) as client:
        good_id, bad_id = await _register(client), await _register(client)
        good = Camera(client, good_id)
        await good.start()
        await good.send(*(frame(s) for s in range(1, 4)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.grpc_port}") as channel:
            call = channel.stream_stream("/itsmesh.v1.StreamingService/StreamFrames")()
            opening = streaming_pb2.OpenFrameStream(camera_id=bad_id)
            await call.write(streaming_pb2.StreamFramesRequest(open=opening).SerializeToString())
            assert await call.read() is not grpc.aio.EOF  # opened
            await call.write(b"\xff\xff\xff\xff not protobuf")
            code, trailers = await call.code(), await call.trailing_metadata()
            details = details_from_trailers(code, await call.details() or "", trailers)
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT
            assert [name for name, _ in details.field_violations] == ["message"]
        oversized = Camera(client, bad_id, take_over=True)
        await oversized.start()
        await oversized.send(frame(1, jpeg=b"\xff\xd8" + bytes(5 * 1024 * 1024)))  # past gRPC's 4 MiB
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await oversized.read_until(1)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await good.read_until(3)
        await good.send(*(frame(s) for s in range(4, 7)))
        await good.read_until(6)
        await good.close()
    assert good.rejections() == {}


async def test_a_second_stream_for_a_live_camera_is_already_exists_and_unknown_camera_not_found(host):
    async with stub(host) as client:
        camera_id = await _register(client)
        first = Camera(client, camera_id)
        await first.start()
        second = Camera(client, camera_id)
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await second.start()
        unknown = Camera(client, "no-such-camera")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await unknown.start()
        await first.close()
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_online_and_offline_events_are_published(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(frame(1))
        await cam.read_until(1)
        await cam.close()

    def kinds(found):
        return [events_pb2.CameraEvent.FromString(r.value).WhichOneof("kind") for r in found]

    found = await records(kafka_bootstrap, CAMERA_EVENTS_TOPIC, camera_id, lambda f: "offline" in kinds(f))
    assert kinds(found) == ["config_changed", "online", "offline"]
    offline = events_pb2.CameraEvent.FromString(found[-1].value).offline
    assert offline.acked_through_sequence == 1
    assert offline.reason == events_pb2.CAMERA_OFFLINE_REASON_STREAM_CLOSED


async def test_draining_host_flushes_acks_then_ends_the_stream(infra, kafka_bootstrap):
    async with streaming_host(infra) as own, stub(own) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(*(frame(s) for s in range(1, 4)))
        await cam.read_until(3)
        stopping = asyncio.create_task(own.stop())
        messages = await cam.rest()
        await stopping
    assert "draining" in [m.WhichOneof("message") for m in messages]
    assert await cam.call.code() == grpc.StatusCode.OK
    found = await records(
        kafka_bootstrap,
        CAMERA_EVENTS_TOPIC,
        camera_id,
        lambda f: any(events_pb2.CameraEvent.FromString(r.value).HasField("offline") for r in f),
    )
    offline = events_pb2.CameraEvent.FromString(found[-1].value).offline
    assert offline.reason == events_pb2.CAMERA_OFFLINE_REASON_SERVER_SHUTDOWN


async def test_a_stream_must_start_with_open_naming_the_field(host):
    async with stub(host) as client:
        call = client.StreamFrames()
        await call.write(streaming_pb2.StreamFramesRequest(frame=frame(1)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details.field_violations] == ["open"]


async def test_deleting_a_camera_ends_its_live_stream(host):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(frame(1))
        await cam.read_until(1)
        await client.DeleteCamera(streaming_pb2.DeleteCameraRequest(camera_id=camera_id))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await cam.read_until(10_000)
    assert ended.value.code() == grpc.StatusCode.NOT_FOUND


async def test_take_over_ends_the_old_stream_with_aborted_after_settling_its_frames(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        old = Camera(client, camera_id)
        await old.start()
        await old.send(*(frame(s) for s in range(1, 5)))
        await old.read_until(4)
        new = Camera(client, camera_id, take_over=True)
        opened = await new.start()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await old.read_until(10_000)
        await new.send(*(frame(s) for s in range(1, 7)))
        await new.read_until(6)
        await new.close()
    assert ended.value.code() == grpc.StatusCode.ABORTED
    assert opened.acked_through_sequence == 4
    assert sorted(new.duplicates()) == [1, 2, 3, 4]
    await settle()
    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: False, timeout=2)
    assert sorted(_sequences(found)) == [1, 2, 3, 4, 5, 6]
    # The camera never went offline: the old stream ends without an offline event, only the new one says so.
    events = [
        events_pb2.CameraEvent.FromString(r.value)
        for r in await records(kafka_bootstrap, CAMERA_EVENTS_TOPIC, camera_id, lambda f: False, timeout=2)
    ]
    offline = [e.offline for e in events if e.WhichOneof("kind") == "offline"]
    assert [o.stream_id for o in offline] == [opened.stream_id]


async def test_the_latest_acked_frame_is_kept_as_a_thumbnail(host):
    async with stub(host) as client:
        camera_id = await _register(client)
        with pytest.raises(grpc.aio.AioRpcError) as none_yet:
            await client.GetLatestFrame(streaming_pb2.GetLatestFrameRequest(camera_id=camera_id))
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(frame(1), frame(2))
        await cam.read_until(2)
        await cam.close()
        latest = await client.GetLatestFrame(streaming_pb2.GetLatestFrameRequest(camera_id=camera_id))
    assert none_yet.value.code() == grpc.StatusCode.NOT_FOUND
    assert latest.sequence == 1  # at most one frame per second is kept
    assert latest.jpeg == JPEG
    assert (latest.frame_size.width_px, latest.frame_size.height_px) == (640, 360)


async def test_frames_published_together_keep_their_order_and_headers_around_a_reject(host, kafka_bootstrap):
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(*(frame(s) for s in range(1, 4)), frame(4, jpeg=b"not a jpeg"), frame(5), batch=True)
        await cam.send(*(frame(s) for s in range(6, 15)))  # written back to back: queued on the stream
        await cam.read_until(14)
        await cam.close()
    assert cam.rejections() == {4: common_pb2.FRAME_REJECT_REASON_NOT_JPEG}
    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: len(f) >= 13)
    assert _sequences(found) == [s for s in range(1, 15) if s != 4]  # Kafka order, not sorted
    for record in found:
        event = events_pb2.CameraDetectionEvent.FromString(record.value)
        headers = dict(record.headers)
        assert headers["event-id"] == event.event_id.encode()
        assert headers["schema"] == b"itsmesh.v1.CameraDetectionEvent"
        assert headers["content-type"] == b"application/x-protobuf"
        assert headers["produced-at"]  # traceparent too when tracing is on: test_event_publisher_batch
    letters = await records(kafka_bootstrap, CAMERA_DLQ_TOPIC, camera_id, lambda f: len(f) >= 1)
    assert [events_pb2.DeadLetter.FromString(r.value).sequence for r in letters] == [4]


async def test_a_record_kafka_refuses_fails_its_own_frame_not_the_ones_before(host, kafka_bootstrap):
    # ~1.1 MB of edge detections: the frame passes its checks, its event exceeds the producer's 1 MB
    # request limit, so Kafka's client refuses that one record of the batch.
    box = common_pb2.BoundingBox(left_px=1, top_px=1, width_px=5, height_px=5)
    heavy = [common_pb2.Detection(object_class=common_pb2.OBJECT_CLASS_CAR, confidence=0.5, box=box)] * 60_000
    async with stub(host) as client:
        camera_id = await _register(client)
        cam = Camera(client, camera_id)
        await cam.start()
        await cam.send(frame(1), frame(2, detections=heavy, has_edge_detections=True), frame(3), batch=True)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await cam.read_until(3)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cam.acked_through <= 1  # frame 2 (and 3 behind it) never acknowledged
    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, camera_id, lambda f: False, timeout=2)
    assert _sequences(found) == [1]  # the frame before was published; the one after was held back
