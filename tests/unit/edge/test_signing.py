"""The canonical encoding of a telemetry reading and its HMAC-SHA256 signature."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from itsmesh.v1 import common_pb2, streaming_pb2
from mesh.edge.signing import canonical_bytes, new_nonce, sign_sample, signature_of, verify_sample

SECRET = bytes(range(32))


def _sample(**overrides) -> streaming_pb2.TelemetrySample:
    values = {
        "device_id": "gps-7",
        "sequence": 42,
        "position": common_pb2.GeoPoint(latitude_deg=52.52, longitude_deg=13.405, altitude_m=34.25),
        "speed_kmh": 48.5,
        "heading_deg": 90.0,
        "horizontal_accuracy_m": 3.5,
        "measurements": {"fuel_level_pct": 61.0, "engine_temp_c": 88.125},
        "nonce": "AAAAAAAAAAAAAAAAAAAAAA",
        "idempotency_key": "gps-7:42",
        **overrides,
    }
    sample = streaming_pb2.TelemetrySample(**values)
    sample.reading_time.FromNanoseconds(1_700_000_000_123_456_789)
    return sample


def test_the_canonical_encoding_is_the_documented_lines():
    assert canonical_bytes(_sample()).decode().split("\n") == [
        "itsmesh-telemetry-v1",
        "gps-7",
        "42",
        "1700000000123456789",
        "52.5200000",
        "13.4050000",
        "34.250",
        "48.500",
        "90.000",
        "3.500",
        "engine_temp_c=88.125000&fuel_level_pct=61.000000",
        "AAAAAAAAAAAAAAAAAAAAAA",
        "gps-7:42",
    ]


def test_an_unset_altitude_and_no_measurements_are_empty_lines():
    sample = _sample(position=common_pb2.GeoPoint(latitude_deg=1.0, longitude_deg=2.0), measurements={})
    lines = canonical_bytes(sample).decode().split("\n")
    assert (lines[6], lines[10]) == ("", "")


def test_the_signature_is_hmac_sha256_of_the_encoding():
    sample = _sample()
    sign_sample(sample, SECRET, "hk-1")
    assert sample.signing_key_id == "hk-1"
    assert sample.signature == hmac.new(SECRET, canonical_bytes(sample), hashlib.sha256).digest()
    assert verify_sample(sample, SECRET)


def test_any_change_after_signing_breaks_the_signature():
    for change in (
        {"speed_kmh": 48.6},
        {"sequence": 43},
        {"nonce": "BBBBBBBBBBBBBBBBBBBBBB"},
        {"idempotency_key": "gps-7:43"},
        {"device_id": "gps-8"},
    ):
        sample = _sample()
        sign_sample(sample, SECRET)
        for name, value in change.items():
            setattr(sample, name, value)
        assert not verify_sample(sample, SECRET), change
    sample = _sample()
    sign_sample(sample, SECRET)
    sample.measurements["fuel_level_pct"] = 60.0
    assert not verify_sample(sample, SECRET)


def test_the_wrong_secret_or_a_truncated_signature_does_not_verify():
    sample = _sample()
    sign_sample(sample, SECRET)
    assert not verify_sample(sample, b"\x00" * 32)
    sample.signature = sample.signature[:31]
    assert not verify_sample(sample, SECRET)


def test_the_signing_key_id_is_not_part_of_the_encoding():
    sample = _sample()
    sign_sample(sample, SECRET, "hk-1")
    assert signature_of(sample, SECRET) == sample.signature
    sample.signing_key_id = "hk-2"
    assert verify_sample(sample, SECRET)


def test_nonces_are_fresh_and_within_the_allowed_characters():
    nonces = {new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    assert all(16 <= len(n) <= 64 and n.replace("-", "").replace("_", "").isalnum() for n in nonces)


@given(
    latitude=st.floats(-90, 90),
    longitude=st.floats(-180, 180),
    speed=st.floats(0, 400),
    heading=st.floats(0, 359.999),
    sequence=st.integers(0, 2**64 - 1),
)
def test_a_signed_reading_survives_the_wire(latitude, longitude, speed, heading, sequence):
    sample = _sample(
        position=common_pb2.GeoPoint(latitude_deg=latitude, longitude_deg=longitude),
        speed_kmh=speed,
        heading_deg=heading,
        sequence=sequence,
    )
    sign_sample(sample, SECRET)
    received = streaming_pb2.TelemetrySample.FromString(sample.SerializeToString())
    assert verify_sample(received, SECRET)
