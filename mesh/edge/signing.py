"""Telemetry signatures: the canonical encoding of a reading and HMAC-SHA256 over it.

Devices sign with ``sign_sample`` and the streaming service checks with ``verify_sample``; both use this
one module, so the bytes signed and the bytes verified cannot drift apart.

The canonical encoding (``canonical_bytes``) is these lines, UTF-8, joined with a single ``"\\n"`` and
no trailing newline:

 1. the literal ``itsmesh-telemetry-v1``
 2. ``device_id``
 3. ``sequence`` in decimal
 4. ``reading_time`` as integer nanoseconds since the Unix epoch, in decimal
 5. ``position.latitude_deg`` formatted ``"%.7f"``
 6. ``position.longitude_deg`` formatted ``"%.7f"``
 7. ``position.altitude_m`` formatted ``"%.3f"``, or empty when unset
 8. ``speed_kmh`` formatted ``"%.3f"``
 9. ``heading_deg`` formatted ``"%.3f"``
10. ``horizontal_accuracy_m`` formatted ``"%.3f"``
11. ``measurements`` as ``name=value`` pairs, value formatted ``"%.6f"``, sorted by name, joined with
    ``"&"`` (empty when there are none)
12. ``nonce``
13. ``idempotency_key``

``"%.Nf"`` is C/Python fixed-point formatting (round-half-even on the exact binary value). The server
checks identifiers, nonce, key and measurement names against their character sets before it verifies,
so no field can smuggle a separator into the encoding. The signature is the raw 32-byte HMAC-SHA256 of
the encoding keyed with the device's HMAC secret; ``signing_key_id`` names the secret (rotation).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from itsmesh.v1 import streaming_pb2

DOMAIN: Final = "itsmesh-telemetry-v1"
"""First line of the encoding: binds a signature to this purpose and version."""

SIGNATURE_BYTES: Final = 32


def canonical_bytes(sample: streaming_pb2.TelemetrySample) -> bytes:
    """The bytes a reading's signature covers (see the module docstring)."""
    position = sample.position
    stamp = sample.reading_time
    altitude = f"{position.altitude_m:.3f}" if position.HasField("altitude_m") else ""
    measurements = "&".join(f"{name}={value:.6f}" for name, value in sorted(sample.measurements.items()))
    lines = (
        DOMAIN,
        sample.device_id,
        str(sample.sequence),
        str(stamp.seconds * 1_000_000_000 + stamp.nanos),
        f"{position.latitude_deg:.7f}",
        f"{position.longitude_deg:.7f}",
        altitude,
        f"{sample.speed_kmh:.3f}",
        f"{sample.heading_deg:.3f}",
        f"{sample.horizontal_accuracy_m:.3f}",
        measurements,
        sample.nonce,
        sample.idempotency_key,
    )
    return "\n".join(lines).encode()


def signature_of(sample: streaming_pb2.TelemetrySample, secret: bytes) -> bytes:
    """HMAC-SHA256 of the reading's canonical encoding under ``secret`` (32 bytes)."""
    return hmac.new(secret, canonical_bytes(sample), hashlib.sha256).digest()


def sign_sample(sample: streaming_pb2.TelemetrySample, secret: bytes, key_id: str = "") -> None:
    """Set ``signing_key_id`` and ``signature`` of ``sample`` in place."""
    sample.signing_key_id = key_id
    sample.signature = signature_of(sample, secret)


def verify_sample(sample: streaming_pb2.TelemetrySample, secret: bytes) -> bool:
    """Whether ``sample.signature`` is the HMAC of its canonical encoding under ``secret`` (constant time)."""
    if len(sample.signature) != SIGNATURE_BYTES:
        return False
    return hmac.compare_digest(sample.signature, signature_of(sample, secret))


def new_nonce() -> str:
    """A fresh single-use nonce: 22 URL-safe characters (128 random bits)."""
    return secrets.token_urlsafe(16)
