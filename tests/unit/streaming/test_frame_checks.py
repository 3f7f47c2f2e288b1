"""Cheap frame checks: JPEG markers and header dimensions without decoding, sizes, times, detections."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from itsmesh.v1 import common_pb2, streaming_pb2
from services.streaming.frames import FrameLimits, JpegInfo, Rejection, check_frame, jpeg_info

NOW = 1_700_000_000.0
LIMITS = FrameLimits(width_px=640, height_px=360, max_frame_bytes=10_000)


def jpeg(width: int = 640, height: int = 360, sof: int = 0xC0, scan: bytes = b"\x12\x34" * 50) -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    frame_header = bytes([0xFF, sof, 0x00, 0x11, 0x08]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    frame_header += b"\x03\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    sos = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + frame_header + sos + scan + b"\xff\xd9"


def at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def frame(data: bytes | None = None, captured: float | None = NOW - 1, **extra) -> streaming_pb2.Frame:
    f = streaming_pb2.Frame(sequence=1, jpeg=jpeg() if data is None else data, **extra)
    if captured is not None:
        f.capture_time.CopyFrom(at(captured))
    return f


def reason(result: JpegInfo | Rejection) -> int:
    assert isinstance(result, Rejection), result
    return result.reason


def test_dimensions_come_from_the_frame_header_of_baseline_and_progressive_jpegs():
    assert jpeg_info(jpeg(1280, 720)) == JpegInfo(1280, 720, progressive=False)
    assert jpeg_info(jpeg(320, 240, sof=0xC2)) == JpegInfo(320, 240, progressive=True)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GIF89a....", common_pb2.FRAME_REJECT_REASON_NOT_JPEG),
        (jpeg()[:-2], common_pb2.FRAME_REJECT_REASON_MALFORMED_JPEG),
        (b"\xff\xd8\xff\xda\x00\x02\x00\xff\xd9", common_pb2.FRAME_REJECT_REASON_MALFORMED_JPEG),
        (b"\xff\xd8\xff\xe0\x7f\xff\x00\xff\xd9", common_pb2.FRAME_REJECT_REASON_MALFORMED_JPEG),
        (jpeg(0, 360), common_pb2.FRAME_REJECT_REASON_MALFORMED_JPEG),
    ],
)
def test_broken_structures_are_refused(data, expected):
    assert reason(jpeg_info(data)) == expected


def test_a_valid_frame_passes_and_returns_its_size():
    assert check_frame(frame(), LIMITS, NOW, NOW - 2) == JpegInfo(640, 360, progressive=False)


@pytest.mark.parametrize(
    ("f", "previous", "expected"),
    [
        (frame(b""), None, common_pb2.FRAME_REJECT_REASON_EMPTY_PAYLOAD),
        (frame(jpeg(scan=b"\x01" * 20_000)), None, common_pb2.FRAME_REJECT_REASON_TOO_LARGE),
        (frame(jpeg(1920, 1080)), None, common_pb2.FRAME_REJECT_REASON_DIMENSIONS_MISMATCH),
        (frame(captured=None), None, common_pb2.FRAME_REJECT_REASON_MISSING_CAPTURE_TIME),
        (frame(captured=NOW + 5.5), None, common_pb2.FRAME_REJECT_REASON_CAPTURE_TIME_IN_FUTURE),
        (frame(captured=NOW - 2 * 86400), None, common_pb2.FRAME_REJECT_REASON_CAPTURE_TIME_TOO_OLD),
        (frame(captured=NOW - 10), NOW - 5, common_pb2.FRAME_REJECT_REASON_CAPTURE_TIME_OUT_OF_ORDER),
    ],
)
def test_each_cheap_check_rejects_with_its_reason(f, previous, expected):
    assert reason(check_frame(f, LIMITS, NOW, previous)) == expected


def test_a_frame_within_the_clock_skew_passes():
    assert isinstance(check_frame(frame(captured=NOW + 4.9), LIMITS, NOW, None), JpegInfo)


@pytest.mark.parametrize(
    "detection",
    [
        common_pb2.Detection(confidence=1.5, box=common_pb2.BoundingBox(width_px=5, height_px=5)),
        common_pb2.Detection(confidence=0.5, box=common_pb2.BoundingBox(width_px=0, height_px=5)),
        common_pb2.Detection(
            confidence=0.5, box=common_pb2.BoundingBox(left_px=600, width_px=50, height_px=5)
        ),
    ],
)
def test_invalid_edge_detections_are_rejected_naming_the_detection(detection):
    result = check_frame(frame(detections=[detection]), LIMITS, NOW, None)
    assert reason(result) == common_pb2.FRAME_REJECT_REASON_INVALID_DETECTION
    assert isinstance(result, Rejection)
    assert result.field == "detections[0]"
