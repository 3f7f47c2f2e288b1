"""Stateless checks of a telemetry reading and the device-secret cache: pure, clock passed in."""

from __future__ import annotations

import math
import uuid

from itsmesh.v1 import common_pb2, streaming_pb2
from services.streaming.telemetry_checks import check_clock, check_shape
from services.streaming.telemetry_ingest import READING_NAMESPACE, reading_event_id
from services.streaming.telemetry_secrets import DeviceKey, NoSecret, SecretCache

Reason = common_pb2.TelemetryRejectReason
NOW = 1_700_000_000.0


def _sample(**overrides) -> streaming_pb2.TelemetrySample:
    values = {
        "device_id": "gps-7",
        "sequence": 1,
        "position": common_pb2.GeoPoint(latitude_deg=52.5, longitude_deg=13.4),
        "speed_kmh": 50.0,
        "heading_deg": 359.9,
        "nonce": "n" * 22,
        "idempotency_key": "gps-7:1",
        "signature": b"s" * 32,
        **overrides,
    }
    sample = streaming_pb2.TelemetrySample(**values)
    if "reading_time" not in overrides:
        sample.reading_time.FromSeconds(int(NOW))
    return sample


def _why(sample) -> tuple[int, str] | None:
    rejection = check_shape(sample)
    return None if rejection is None else (rejection.reason, rejection.field)


def test_a_well_formed_reading_passes():
    assert check_shape(_sample()) is None
    assert check_shape(_sample(position=common_pb2.GeoPoint(latitude_deg=-90, longitude_deg=180))) is None


def test_each_range_names_its_field():
    out = Reason.TELEMETRY_REJECT_REASON_FIELD_OUT_OF_RANGE
    cases = {
        "position.latitude_deg": _sample(position=common_pb2.GeoPoint(latitude_deg=90.01, longitude_deg=0)),
        "position.longitude_deg": _sample(position=common_pb2.GeoPoint(latitude_deg=0, longitude_deg=180.5)),
        "position.altitude_m": _sample(
            position=common_pb2.GeoPoint(latitude_deg=0, longitude_deg=0, altitude_m=math.inf)
        ),
        "speed_kmh": _sample(speed_kmh=math.nan),
        "heading_deg": _sample(heading_deg=360.0),
        "horizontal_accuracy_m": _sample(horizontal_accuracy_m=-1.0),
        "measurements[temp_c]": _sample(measurements={"temp_c": math.inf}),
        "device_id": _sample(device_id="GPS 7"),
        "idempotency_key": _sample(idempotency_key="has space"),
        "nonce": _sample(nonce="x" * 65),
    }
    for field, sample in cases.items():
        assert _why(sample) == (out, field), field


def test_missing_fields_are_named():
    missing = Reason.TELEMETRY_REJECT_REASON_MISSING_FIELD
    for field in ("device_id", "position", "nonce", "idempotency_key"):
        sample = _sample()
        sample.ClearField(field)  # type: ignore[arg-type]
        assert _why(sample) == (missing, field)
    sample = _sample()
    sample.ClearField("reading_time")
    assert _why(sample) == (missing, "reading_time")
    assert _why(_sample(signature=b"")) == (Reason.TELEMETRY_REJECT_REASON_BAD_SIGNATURE, "signature")


def test_the_clock_allows_300_s_either_way():
    def at(offset_s: float):
        sample = _sample()
        sample.reading_time.FromNanoseconds(int((NOW + offset_s) * 1e9))
        rejection = check_clock(sample, NOW)
        return None if rejection is None else rejection.reason

    assert at(-300) is None
    assert at(300) is None
    assert at(-300.5) == Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_STALE
    assert at(300.5) == Reason.TELEMETRY_REJECT_REASON_TIMESTAMP_IN_FUTURE


def test_cached_secrets_expire_with_the_ttl_or_their_own_expiry():
    cache = SecretCache(ttl_s=30, negative_ttl_s=5)
    current = DeviceKey("gps-7", "hk-2", b"k" * 32, None, False)
    cache.put("gps-7", "", current, now=0)
    assert cache.get("gps-7", "", 29) == current
    assert cache.get("gps-7", "hk-2", 29) == current, "also cached under its own key id"
    assert cache.get("gps-7", "", 30) is None
    previous = DeviceKey("gps-7", "hk-1", b"o" * 32, 10.0, False)
    cache.put("gps-7", "hk-1", previous, now=0)
    assert cache.get("gps-7", "hk-1", 9.9) == previous
    assert cache.get("gps-7", "hk-1", 10) is None, "a rotated-out secret ends with its grace period"
    cache.put("nobody", "", NoSecret("nobody", ""), now=0)
    assert cache.get("nobody", "", 4.9) == NoSecret("nobody", "")
    assert cache.get("nobody", "", 5) is None


def test_the_cache_is_bounded_and_forgets_on_request():
    cache = SecretCache(max_entries=2)
    for i in range(3):
        cache.put(f"d{i}", "k", NoSecret(f"d{i}", "k"), now=0)
    assert len(cache) == 2
    assert cache.get("d0", "k", 0) is None
    cache.forget("d2", "k")
    assert cache.get("d2", "k", 0) is None


def test_reading_event_ids_are_uuid5_of_device_and_key():
    for key in ("gps-7:1", "r-abc", "x" * 128):
        assert reading_event_id("gps-7", key) == str(uuid.uuid5(READING_NAMESPACE, f"gps-7/{key}"))
