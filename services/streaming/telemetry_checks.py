"""Checks of one telemetry reading: pure functions, the server clock passed in.

Order (the first failure is the reading's rejection reason): required fields and character sets →
value ranges → (signature, checked by the caller with ``mesh.edge.signing`` once the secret is known) →
clock skew. Shapes are checked before the signature so that the canonical encoding of whatever is
verified is unambiguous; the clock is checked after it so that a forged time never reads as "stale".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from itsmesh.v1 import common_pb2, streaming_pb2
from services.streaming.validation import ID_PATTERN

Reason = common_pb2.TelemetryRejectReason

MAX_CLOCK_SKEW_S: Final = 300.0
MAX_SPEED_KMH: Final = 400.0
NONCE_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MEASUREMENT_PATTERN: Final = re.compile(r"^[a-z0-9_]{1,63}$")
KEY_ID_MAX_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a reading is refused: the reason code, a human-readable detail and the field concerned."""

    reason: Reason.ValueType
    detail: str
    field: str = ""


def _missing(field: str) -> Rejection:
    return Rejection(Reason.TELEMETRY_REJECT_REASON_MISSING_FIELD, f"{field} is required", field)


def _out_of_range(field: str, detail: str) -> Rejection:
    return Rejection(Reason.TELEMETRY_REJECT_REASON_FIELD_OUT_OF_RANGE, detail, field)


def _in_range(value: float, low: float, high: float, *, high_open: bool = False) -> bool:
    if not math.isfinite(value) or value < low:
        return False
    return value < high if high_open else value <= high


def check_shape(sample: streaming_pb2.TelemetrySample) -> Rejection | None:
    """Required fields, character sets and value ranges; None when the reading is well-formed."""
    if not sample.device_id:
        return _missing("device_id")
    if not ID_PATTERN.match(sample.device_id):
        return _out_of_range("device_id", "1-63 characters of [a-z0-9._-]")
    if not sample.HasField("reading_time"):
        return _missing("reading_time")
    if not sample.HasField("position"):
        return _missing("position")
    if not sample.nonce:
        return _missing("nonce")
    if not NONCE_PATTERN.match(sample.nonce):
        return _out_of_range("nonce", "16-64 characters of [A-Za-z0-9_-]")
    if not sample.idempotency_key:
        return _missing("idempotency_key")
    if not KEY_PATTERN.match(sample.idempotency_key):
        return _out_of_range("idempotency_key", "1-128 characters of [A-Za-z0-9._:-]")
    if not sample.signature:
        return Rejection(Reason.TELEMETRY_REJECT_REASON_BAD_SIGNATURE, "signature is missing", "signature")
    if len(sample.signing_key_id) > KEY_ID_MAX_CHARS:
        return _out_of_range("signing_key_id", f"at most {KEY_ID_MAX_CHARS} characters")
    position = sample.position
    if not _in_range(position.latitude_deg, -90.0, 90.0):
        return _out_of_range("position.latitude_deg", f"{position.latitude_deg} is outside -90..90")
    if not _in_range(position.longitude_deg, -180.0, 180.0):
        return _out_of_range("position.longitude_deg", f"{position.longitude_deg} is outside -180..180")
    if position.HasField("altitude_m") and not math.isfinite(position.altitude_m):
        return _out_of_range("position.altitude_m", "must be a finite number")
    if not _in_range(sample.speed_kmh, 0.0, MAX_SPEED_KMH):
        return _out_of_range("speed_kmh", f"{sample.speed_kmh} is outside 0..{MAX_SPEED_KMH:g}")
    if not _in_range(sample.heading_deg, 0.0, 360.0, high_open=True):
        return _out_of_range("heading_deg", f"{sample.heading_deg} is outside 0 <= heading < 360")
    if not _in_range(sample.horizontal_accuracy_m, 0.0, math.inf):
        return _out_of_range("horizontal_accuracy_m", f"{sample.horizontal_accuracy_m} must be >= 0")
    for name, value in sample.measurements.items():
        if not MEASUREMENT_PATTERN.match(name):
            return _out_of_range(f"measurements[{name[:63]}]", "names are 1-63 characters of [a-z0-9_]")
        if not math.isfinite(value):
            return _out_of_range(f"measurements[{name}]", "must be a finite number")
    return None


def check_clock(
    sample: streaming_pb2.TelemetrySample, now_s: float, max_skew_s: float = MAX_CLOCK_SKEW_S
) -> Rejection | None:
    """Whether ``reading_time`` is within ``max_skew_s`` of the server clock ``now_s``."""
    stamp = sample.reading_time
    offset = stamp.seconds + stamp.nanos / 1e9 - now_s
    if offset < -max_skew_s:
        return Rejection(
            Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_STALE,
            f"reading_time is {-offset:.0f} s old (at most {max_skew_s:.0f} s)",
            "reading_time",
        )
    if offset > max_skew_s:
        return Rejection(
            Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_IN_FUTURE,
            f"reading_time is {offset:.0f} s ahead of the server clock (at most {max_skew_s:.0f} s)",
            "reading_time",
        )
    return None
