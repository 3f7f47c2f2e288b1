"""Server-side moving-vehicle detection on rendered JPEG sequences: background subtraction, boxes, scale."""

from __future__ import annotations

import cv2
import numpy as np

from services.streaming.detection import DetectionSettings, MotionDetector
from services.streaming.quality import GreyImage, decode_reduced

BACKGROUND = cv2.GaussianBlur(
    np.random.default_rng(7).integers(60, 120, (360, 640)).astype(np.uint8), (0, 0), 2
)


def rendered(block_left: int | None) -> GreyImage:
    """The road background, with a bright 60x40 block at ``block_left`` (none when None), as decoded."""
    image = BACKGROUND.copy()
    if block_left is not None:
        cv2.rectangle(image, (block_left, 150), (block_left + 60, 190), 230, -1)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    assert ok
    decoded = decode_reduced(data.tobytes(), 4)
    assert decoded is not None
    return decoded


def test_nothing_is_reported_while_the_background_model_warms_up():
    detector = MotionDetector(DetectionSettings(warmup_samples=5))
    assert all(detector.detect(rendered(40 + i * 25), 640, 360) == [] for i in range(5))


def test_a_moving_block_is_found_with_a_box_scaled_back_to_the_full_frame():
    detector = MotionDetector()
    found = [detector.detect(rendered(40 + i * 25), 640, 360) for i in range(16)]
    for i in range(8, 16):
        assert len(found[i]) == 1
        box = found[i][0]
        left = 40 + i * 25
        # the box covers the block's rows and overlaps its columns, in 640x360 coordinates
        assert box.top_px <= 150
        assert box.top_px + box.height_px >= 190
        assert box.left_px < left + 60
        assert box.left_px + box.width_px > left
        assert box.left_px + box.width_px <= 640
        assert 0.3 <= box.confidence <= 0.95


def test_a_static_scene_gives_no_detections_and_bigger_blobs_score_higher():
    detector = MotionDetector()
    assert all(detector.detect(rendered(None), 640, 360) == [] for _ in range(10))
    settings = DetectionSettings(warmup_samples=0)
    small, large = MotionDetector(settings), MotionDetector(settings)
    for _ in range(5):
        small.detect(rendered(None), 640, 360)
        large.detect(rendered(None), 640, 360)
    small_found = small.detect(rendered(300), 640, 360)
    image = BACKGROUND.copy()
    cv2.rectangle(image, (200, 100), (400, 300), 230, -1)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    assert ok
    big_image = decode_reduced(data.tobytes(), 4)
    assert big_image is not None
    large_found = large.detect(big_image, 640, 360)
    assert small_found
    assert large_found
    assert large_found[0].confidence > small_found[0].confidence


def test_a_change_of_resolution_restarts_the_model():
    detector = MotionDetector(DetectionSettings(warmup_samples=2))
    for i in range(4):
        detector.detect(rendered(40 + i * 25), 640, 360)
    smaller = cv2.resize(rendered(None), (80, 45))
    assert detector.detect(smaller, 640, 360) == []  # warming up again, no shape error
