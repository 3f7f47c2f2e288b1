"""Image-quality checks on real JPEGs: blur, brightness, frozen frames, sampling and hysteresis."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from itsmesh.v1 import common_pb2
from services.streaming.quality import (
    Degraded,
    Measurement,
    QualityThresholds,
    QualityTracker,
    Restored,
    decode_reduced,
    measure_jpeg,
)

Issue = common_pb2.QualityIssue


def encode(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def checkerboard(cell: int = 16, low: int = 40, high: int = 210, shift: int = 0) -> np.ndarray:
    ys, xs = np.indices((360, 640))
    board = (((xs + shift) // cell + ys // cell) % 2).astype(np.uint8)
    grey = np.where(board == 1, high, low).astype(np.uint8)
    return np.dstack([grey, grey, grey])


SHARP = checkerboard()
BLURRED = cv2.GaussianBlur(SHARP, (0, 0), sigmaX=25)
DARK = checkerboard(low=2, high=25)


def test_a_sharp_well_lit_frame_has_no_issues():
    measured = measure_jpeg(encode(SHARP), None)
    assert measured is not None
    assert measured.issues == ()
    assert measured.laplacian_variance > 500
    assert 100 < measured.brightness_mean < 150
    assert measured.frame_difference_mean is None
    assert measured.image.shape == (90, 160)  # decoded at a quarter of 640x360


def test_a_blurred_frame_is_blurry_and_far_less_sharp_than_the_sharp_one():
    sharp = measure_jpeg(encode(SHARP), None)
    blurred = measure_jpeg(encode(BLURRED), None)
    assert sharp is not None
    assert blurred is not None
    assert blurred.laplacian_variance < sharp.laplacian_variance / 50
    assert blurred.issues == (Issue.QUALITY_ISSUE_BLURRY,)


def test_a_dark_frame_is_too_dark_and_a_white_one_too_bright():
    dark = measure_jpeg(encode(DARK), None)
    bright = measure_jpeg(encode(checkerboard(low=235, high=255)), None)
    assert dark is not None
    assert bright is not None
    assert Issue.QUALITY_ISSUE_TOO_DARK in dark.issues
    assert Issue.QUALITY_ISSUE_TOO_BRIGHT in bright.issues
    assert dark.brightness_mean < 20


def test_an_identical_frame_is_frozen_and_a_moved_one_is_not():
    first = measure_jpeg(encode(SHARP), None)
    assert first is not None
    same = measure_jpeg(encode(SHARP), first.image)
    moved = measure_jpeg(encode(checkerboard(shift=8)), first.image)
    assert same is not None
    assert moved is not None
    assert same.frame_difference_mean == 0.0
    assert same.issues == (Issue.QUALITY_ISSUE_FROZEN,)
    assert moved.frame_difference_mean is not None
    assert moved.frame_difference_mean > 10
    assert moved.issues == ()


def test_undecodable_bytes_give_no_measurement():
    assert measure_jpeg(b"\xff\xd8 definitely not a scan \xff\xd9", None) is None
    assert decode_reduced(b"") is None


def test_reductions_other_than_2_4_8_are_refused():
    with pytest.raises(ValueError, match="reduction"):
        decode_reduced(encode(SHARP), reduction=3)
    image = decode_reduced(encode(SHARP), reduction=8)
    assert image is not None
    assert image.shape == (45, 80)


def test_measurement_becomes_the_event_quality():
    first = measure_jpeg(encode(SHARP), None)
    assert first is not None
    assert not first.to_proto().HasField("frame_difference_mean")
    same = measure_jpeg(encode(SHARP), first.image)
    assert same is not None
    quality = same.to_proto()
    assert quality.sampled
    assert quality.frame_difference_mean == 0.0
    assert list(quality.issues) == [Issue.QUALITY_ISSUE_FROZEN]
    assert quality.laplacian_variance == pytest.approx(same.laplacian_variance)


def test_every_nth_frame_is_sampled_starting_with_the_first():
    tracker = QualityTracker(sample_every_frames=3)
    assert [tracker.should_sample() for _ in range(7)] == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError, match="at least 1"):
        QualityTracker(sample_every_frames=0)


def test_samples_are_at_least_the_minimum_interval_apart_however_fast_frames_come():
    tracker = QualityTracker(sample_every_frames=3, min_sample_interval_s=1.0)
    burst = [tracker.should_sample(10.0 + i * 0.1) for i in range(25)]  # 10 frames/s: a sample per second
    assert [i for i, sampled in enumerate(burst) if sampled] == [0, 10, 20]
    slow = QualityTracker(sample_every_frames=3, min_sample_interval_s=1.0)
    # At 1 frame/s the interval never holds a sample back: every 3rd frame, as without it.
    assert [slow.should_sample(float(i)) for i in range(7)] == [True, False, False, True, False, False, True]


def _measured(image: np.ndarray, tracker: QualityTracker) -> Measurement:
    measured = measure_jpeg(encode(image), tracker.previous, tracker.thresholds)
    assert measured is not None
    return measured


def test_degraded_is_reported_once_after_the_run_and_restored_once_after_clean_samples():
    tracker = QualityTracker(QualityThresholds(degrade_after_samples=3, restore_after_samples=2))
    shifts = iter(range(0, 400, 4))

    def clean() -> Measurement:
        return _measured(checkerboard(shift=next(shifts)), tracker)

    transitions = []
    assert tracker.active_issues == ()
    kinds = ["clean", "blur", "blur", "clean", "blur", "blur", "blur", "blur", "blur"]
    for sequence, image_kind in enumerate(kinds, start=1):
        measured = clean() if image_kind == "clean" else _measured(BLURRED, tracker)
        transitions.append(tracker.observe(measured, sequence, now_s=100.0 + sequence))
    # a run of two blurred samples is not enough; the third of the next run raises it, once
    assert [i for i, t in enumerate(transitions) if t is not None] == [6]
    degraded = transitions[6]
    assert isinstance(degraded, Degraded)
    assert degraded.sequence == 7
    assert Issue.QUALITY_ISSUE_BLURRY in degraded.issues
    assert degraded.degraded_for_s == pytest.approx(2.0)  # from sequence 5 to 7
    assert tracker.degraded
    assert tracker.active_issues == degraded.issues

    assert tracker.observe(clean(), 10, 110.0) is None  # one clean sample is not a recovery
    assert tracker.observe(_measured(BLURRED, tracker), 11, 111.0) is None  # still degraded, no repeat
    assert tracker.observe(clean(), 12, 112.0) is None
    restored = tracker.observe(clean(), 13, 113.0)
    assert isinstance(restored, Restored)
    assert restored.sequence == 13
    assert Issue.QUALITY_ISSUE_BLURRY in restored.cleared_issues
    assert not tracker.degraded
    assert tracker.active_issues == ()
    assert tracker.observe(clean(), 14, 114.0) is None


def test_a_frozen_camera_degrades_after_repeated_identical_samples():
    tracker = QualityTracker(QualityThresholds(degrade_after_samples=2))
    jpeg = encode(SHARP)
    results = []
    for sequence in range(1, 5):
        measured = measure_jpeg(jpeg, tracker.previous, tracker.thresholds)
        assert measured is not None
        results.append(tracker.observe(measured, sequence, float(sequence)))
    assert results[0] is None
    assert results[1] is None
    assert isinstance(results[2], Degraded)
    assert results[2].issues == (Issue.QUALITY_ISSUE_FROZEN,)
    assert results[3] is None
