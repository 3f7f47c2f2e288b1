"""Checks of one frame, cheapest first, without decoding the image: pure functions, time passed in.

Order: payload present → size limit → JPEG markers (SOI, EOI) → frame header (SOF) dimensions →
capture time (set, not in the future beyond the skew, not too old, not before the previous frame) →
edge detections inside the image. The first failure is the frame's rejection reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from itsmesh.v1 import common_pb2, streaming_pb2

Reason = common_pb2.FrameRejectReason

MAX_FUTURE_SKEW_S: Final = 5.0
MAX_AGE_S: Final = 24 * 3600.0

# Start-of-frame markers that carry the image size: SOF0-3, 5-7, 9-11, 13-15 (C4, C8 and CC are not SOFs).
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a frame is refused: the reason code, a human-readable detail and the field concerned."""

    reason: Reason.ValueType
    detail: str
    field: str


@dataclass(frozen=True, slots=True)
class JpegInfo:
    """What the JPEG header says."""

    width_px: int
    height_px: int
    progressive: bool


def jpeg_info(data: bytes) -> JpegInfo | Rejection:
    """Width and height from the first SOF segment; a Rejection if the structure is broken."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return Rejection(Reason.FRAME_REJECT_REASON_NOT_JPEG, "no start-of-image marker", "jpeg")
    if data[-2] != 0xFF or data[-1] != 0xD9:
        return Rejection(
            Reason.FRAME_REJECT_REASON_MALFORMED_JPEG, "no end-of-image marker (truncated?)", "jpeg"
        )
    pos, end = 2, len(data) - 2
    while pos < end:
        if data[pos] != 0xFF:
            return Rejection(
                Reason.FRAME_REJECT_REASON_MALFORMED_JPEG, f"expected a marker at byte {pos}", "jpeg"
            )
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            break
        if pos + 4 > end:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            return Rejection(
                Reason.FRAME_REJECT_REASON_MALFORMED_JPEG, f"segment at byte {pos} overruns the data", "jpeg"
            )
        if marker in _SOF_MARKERS:
            if length < 8:
                return Rejection(Reason.FRAME_REJECT_REASON_MALFORMED_JPEG, "frame header too short", "jpeg")
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            if width == 0 or height == 0:
                return Rejection(
                    Reason.FRAME_REJECT_REASON_MALFORMED_JPEG, f"frame header says {width}x{height}", "jpeg"
                )
            return JpegInfo(width, height, progressive=marker in (0xC2, 0xC6, 0xCA, 0xCE))
        pos += 2 + length
    return Rejection(
        Reason.FRAME_REJECT_REASON_MALFORMED_JPEG, "no frame header (SOF) before the scan", "jpeg"
    )


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """What a camera's frames must satisfy."""

    width_px: int
    height_px: int
    max_frame_bytes: int
    max_future_skew_s: float = MAX_FUTURE_SKEW_S
    max_age_s: float = MAX_AGE_S


def check_frame(
    frame: streaming_pb2.Frame,
    limits: FrameLimits,
    now_s: float,
    previous_capture_s: float | None,
    *,
    jpeg: bytes | None = None,
) -> JpegInfo | Rejection:
    """The frame's JPEG info when it passes every cheap check, else the first Rejection.

    ``now_s`` and ``previous_capture_s`` are Unix times in seconds (the latter of the last accepted frame);
    ``jpeg``: ``frame.jpeg`` when the caller has read it already (each read of the field copies it).
    """
    data = frame.jpeg if jpeg is None else jpeg
    if not data:
        return Rejection(Reason.FRAME_REJECT_REASON_EMPTY_PAYLOAD, "the frame has no image bytes", "jpeg")
    if len(data) > limits.max_frame_bytes:
        return Rejection(
            Reason.FRAME_REJECT_REASON_TOO_LARGE,
            f"{len(data)} bytes, at most {limits.max_frame_bytes}",
            "jpeg",
        )
    info = jpeg_info(data)
    if isinstance(info, Rejection):
        return info
    if (info.width_px, info.height_px) != (limits.width_px, limits.height_px):
        return Rejection(
            Reason.FRAME_REJECT_REASON_DIMENSIONS_MISMATCH,
            f"{info.width_px}x{info.height_px}, expected {limits.width_px}x{limits.height_px}",
            "jpeg",
        )
    time_rejection = check_capture_time(frame, limits, now_s, previous_capture_s)
    if time_rejection is not None:
        return time_rejection
    for i, detection in enumerate(frame.detections):
        why = _detection_problem(detection, info)
        if why:
            return Rejection(Reason.FRAME_REJECT_REASON_INVALID_DETECTION, why, f"detections[{i}]")
    return info


def check_capture_time(
    frame: streaming_pb2.Frame, limits: FrameLimits, now_s: float, previous_capture_s: float | None
) -> Rejection | None:
    """Capture time set, not in the future beyond the skew, not too old, not before the previous frame."""
    if not frame.HasField("capture_time"):
        return Rejection(
            Reason.FRAME_REJECT_REASON_MISSING_CAPTURE_TIME, "capture_time is not set", "capture_time"
        )
    captured = frame.capture_time.seconds + frame.capture_time.nanos / 1e9
    if captured > now_s + limits.max_future_skew_s:
        return Rejection(
            Reason.FRAME_REJECT_REASON_CAPTURE_TIME_IN_FUTURE,
            f"capture_time is {captured - now_s:.1f} s in the future "
            f"(at most {limits.max_future_skew_s:g} s)",
            "capture_time",
        )
    if captured < now_s - limits.max_age_s:
        return Rejection(
            Reason.FRAME_REJECT_REASON_CAPTURE_TIME_TOO_OLD,
            f"capture_time is {now_s - captured:.0f} s old (at most {limits.max_age_s:g} s)",
            "capture_time",
        )
    if previous_capture_s is not None and captured < previous_capture_s:
        return Rejection(
            Reason.FRAME_REJECT_REASON_CAPTURE_TIME_OUT_OF_ORDER,
            f"capture_time is {previous_capture_s - captured:.3f} s before the previous frame's",
            "capture_time",
        )
    return None


def _detection_problem(detection: common_pb2.Detection, info: JpegInfo) -> str:
    if not 0.0 <= detection.confidence <= 1.0 or math.isnan(detection.confidence):
        return f"confidence {detection.confidence} outside 0..1"
    box = detection.box
    if not (box.width_px > 0 and box.height_px > 0):
        return "empty box"
    if box.left_px < 0 or box.top_px < 0:
        return "box starts outside the image"
    if box.left_px + box.width_px > info.width_px or box.top_px + box.height_px > info.height_px:
        return "box extends beyond the image"
    return ""
