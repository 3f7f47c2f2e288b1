"""Image quality through StreamFrames against the real broker and PostgreSQL, with really encoded JPEGs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC, CAMERA_EVENTS_TOPIC
from services.streaming.ingest import IngestLimits
from services.streaming.quality import QualityThresholds
from tests.integration.streaming_host import (
    STRUCTURAL_JPEG,
    Camera,
    camera,
    frame,
    records,
    streaming_host,
    stub,
)

pytestmark = pytest.mark.integration

Issue = common_pb2.QualityIssue


@pytest.fixture(scope="module")
async def host(infra):
    limits = IngestLimits(
        window_frames=64,
        quality_sample_every_frames=2,
        quality_min_sample_interval_s=0.0,
        quality_thresholds=QualityThresholds(degrade_after_samples=3, restore_after_samples=2),
    )
    async with streaming_host(infra, limits) as running:
        yield running


def _encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


def _undecodable() -> bytes:
    """Sound markers and frame header, but no quantisation table: the decoder gives up on it.

    (The filler-scan JPEG alone is not enough: the decoder fills a corrupt scan in and returns an image.)
    """
    without = STRUCTURAL_JPEG.replace(b"\xff\xdb\x00\x43\x00" + bytes(range(1, 65)), b"")
    assert without != STRUCTURAL_JPEG
    return without


def _scene(shift: int) -> np.ndarray:
    """A sharp 640x360 checkerboard, shifted so consecutive frames differ like a live camera's."""
    ys, xs = np.indices((360, 640))
    grey = np.where(((xs + shift) // 16 + ys // 16) % 2 == 1, 200, 50).astype(np.uint8)
    return np.dstack([grey, grey, grey])


def _camera_events(found) -> list[events_pb2.CameraEvent]:
    return [events_pb2.CameraEvent.FromString(r.value) for r in found]


async def test_blurred_frozen_frames_degrade_the_camera_and_sharp_ones_restore_it(host, kafka_bootstrap):
    blurred = _encode(cv2.GaussianBlur(_scene(0), (0, 0), sigmaX=25))
    frames = [frame(1, jpeg=_undecodable())]  # sampled but not decodable: accepted, quality not sampled
    frames += [frame(s, jpeg=_encode(_scene(s * 4))) for s in range(2, 11)]
    frames += [frame(s, jpeg=blurred) for s in range(11, 21)]
    frames += [frame(s, jpeg=_encode(_scene(s * 4))) for s in range(21, 31)]
    async with stub(host) as client:
        new = camera()
        await client.RegisterCamera(streaming_pb2.RegisterCameraRequest(camera=new))
        cam = Camera(client, new.camera_id)
        await cam.start()
        await cam.send(*frames)
        await cam.read_until(30)
        await cam.close()
    assert cam.rejections() == {}

    found = await records(kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, new.camera_id, lambda f: len(f) >= 30)
    by_sequence = {
        e.sequence: e for e in (events_pb2.CameraDetectionEvent.FromString(r.value) for r in found)
    }
    assert sorted(by_sequence) == list(range(1, 31))
    assert not by_sequence[1].quality.sampled  # passed the cheap checks, but did not decode
    assert not by_sequence[2].quality.sampled  # not a sampled frame
    sharp = by_sequence[3].quality
    assert sharp.sampled
    assert list(sharp.issues) == []
    assert sharp.laplacian_variance > 100
    assert 80 < sharp.brightness_mean < 170
    assert not sharp.HasField("frame_difference_mean")  # the first decoded sample has nothing to compare
    assert by_sequence[5].quality.frame_difference_mean > 10  # the scene moved since sample 3
    blurry = by_sequence[13].quality
    assert blurry.sampled
    assert set(blurry.issues) == {Issue.QUALITY_ISSUE_BLURRY, Issue.QUALITY_ISSUE_FROZEN}
    assert blurry.laplacian_variance < sharp.laplacian_variance / 50

    def changes(found) -> list[events_pb2.CameraEvent]:
        return [e for e in _camera_events(found) if e.WhichOneof("kind").startswith("quality_")]

    found_events = await records(
        kafka_bootstrap, CAMERA_EVENTS_TOPIC, new.camera_id, lambda f: len(changes(f)) >= 2
    )
    quality_events = changes(found_events)
    assert [e.WhichOneof("kind") for e in quality_events] == ["quality_degraded", "quality_restored"]
    degraded, restored = quality_events[0].quality_degraded, quality_events[1].quality_restored
    # samples are the odd sequences; blurred from 11 (blurry) and 13 on (also frozen): the third is 15
    assert degraded.sequence == 15
    assert Issue.QUALITY_ISSUE_BLURRY in degraded.issues
    assert degraded.quality.sampled
    assert degraded.degraded_duration.ToNanoseconds() > 0
    assert restored.sequence == 23  # two clean samples: 21 and 23
    assert set(restored.cleared_issues) == {Issue.QUALITY_ISSUE_BLURRY, Issue.QUALITY_ISSUE_FROZEN}
    assert quality_events[0].camera_id == new.camera_id
