"""Server-side detection through StreamFrames against the real broker: a rendered moving block is found."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC
from services.streaming.ingest import IngestLimits
from tests.integration.streaming_host import Camera, camera, frame, records, streaming_host, stub

pytestmark = pytest.mark.integration

BACKGROUND = cv2.GaussianBlur(
    np.random.default_rng(3).integers(60, 120, (360, 640)).astype(np.uint8), (0, 0), 2
)


@pytest.fixture(scope="module")
async def host(infra):
    async with streaming_host(
        infra,
        IngestLimits(
            window_frames=64,
            quality_sample_every_frames=2,
            quality_min_sample_interval_s=0.0,
        ),
    ) as running:
        yield running


def _rendered(block_left: int) -> bytes:
    image = BACKGROUND.copy()
    cv2.rectangle(image, (block_left, 150), (block_left + 60, 190), 230, -1)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


async def _stream(
    host, bootstrap: str, new: common_pb2.Camera, frames: list[streaming_pb2.Frame]
) -> dict[int, events_pb2.CameraDetectionEvent]:
    async with stub(host) as client:
        await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
        cam = Camera(client, new.camera_id)
        await cam.start()
        await cam.send(*frames)
        await cam.read_until(len(frames))
        await cam.close()
    assert cam.rejections() == {}
    found = await records(bootstrap, CAMERA_DETECTIONS_TOPIC, new.camera_id, lambda f: len(f) >= len(frames))
    events = (events_pb2.CameraDetectionEvent.FromString(r.value) for r in found)
    return {e.sequence: e for e in events}


async def test_a_moving_block_is_detected_server_side_on_sampled_frames(host, kafka_bootstrap):
    frames = [frame(s, jpeg=_rendered(10 + s * 12)) for s in range(1, 41)]
    by_sequence = await _stream(host, kafka_bootstrap, camera(edge_detection=False), frames)
    assert sorted(by_sequence) == list(range(1, 41))
    assert by_sequence[2].detection_source == common_pb2.DETECTION_SOURCE_NONE  # not sampled
    assert list(by_sequence[1].detections) == []  # the background model is still warming up
    late = [by_sequence[s] for s in range(21, 41, 2)]
    assert all(e.detection_source == common_pb2.DETECTION_SOURCE_SERVER for e in late)
    for event in late:
        left = 10 + event.sequence * 12
        assert len(event.detections) == 1
        detection = event.detections[0]
        assert detection.object_class == common_pb2.OBJECT_CLASS_VEHICLE
        assert 0.3 <= detection.confidence <= 0.95
        box = detection.box
        assert box.top_px <= 150
        assert box.top_px + box.height_px >= 190
        assert box.left_px < left + 60
        assert box.left_px + box.width_px > left


async def test_cameras_with_edge_detection_get_no_server_side_detections(host, kafka_bootstrap):
    frames = [frame(s, jpeg=_rendered(10 + s * 12)) for s in range(1, 21)]
    by_sequence = await _stream(host, kafka_bootstrap, camera(edge_detection=True), frames)
    assert sorted(by_sequence) == list(range(1, 21))
    assert all(e.detection_source == common_pb2.DETECTION_SOURCE_NONE for e in by_sequence.values())
    assert all(e.quality.sampled for s, e in by_sequence.items() if s % 2 == 1)
