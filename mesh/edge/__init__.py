"""Edge client library: what a traffic camera or a GPS/telemetry unit runs to stream into itsmesh.

One ``EdgeSession`` per device credential. It obtains a device token (client-credentials grant with the
device's API key, refreshed before it expires), reaches the streaming service through discovery (Redis)
or a fixed address, and opens streams that survive any failure: every item waits in a bounded local
buffer (in memory, or on disk with ``buffer_dir``) until the server settles it, and after a failure the
stream reconnects with jittered backoff and resends what is unsettled — frames resume from the server's
acknowledged-through sequence, readings are re-signed with a fresh nonce under the same idempotency key,
so the server answers a resend it already has with a duplicate, never a second copy.

Usage::

    from mesh.edge import DeviceCredentials, EdgeSession, Reading

    credentials = DeviceCredentials(
        device_id="gps-0007", api_key="imk_...", hmac_key_id="hk_...", hmac_secret=b"...32 bytes..."
    )
    async with EdgeSession(
        credentials,
        auth_url="http://127.0.0.1:8000",   # token endpoint of the auth service
        address="127.0.0.1:50051",          # or redis_url="redis://127.0.0.1:16379/0" for discovery
    ) as session:
        telemetry = session.telemetry()     # StreamTelemetry: signed, credit-based, resumable
        await telemetry.send(Reading(latitude_deg=52.52, longitude_deg=13.405, speed_kmh=48.0,
                                     heading_deg=90.0, measurements={"fuel_level_pct": 61.0}))
        camera = session.camera()           # StreamFrames for the camera credentials.device_id
        await camera.send(Frame(jpeg=jpeg_bytes, capture_time=time.time()))
        await session.flush(timeout_s=10.0)   # wait until every buffered item is settled
        print(session.counters)             # EdgeCounters(sent=..., acked=..., rejected=..., buffered=...)

``send`` returns once the item is in the local buffer (it waits only while the buffer is full); the
stream's background task moves it to the server within the credit the server grants. Sequences and
idempotency keys are assigned when left out. ``on_result`` (an argument of ``telemetry()`` and
``camera()``) is called with every settled item's ``Settled`` outcome; rejected items are never resent.
A rate-limited reading stays buffered and is resent after the server's ``retry_after``.
"""

from mesh.edge.buffer import BufferFull, PendingBuffer
from mesh.edge.counters import EdgeCounters
from mesh.edge.frames import CameraStream, Frame
from mesh.edge.session import DeviceCredentials, EdgeSession
from mesh.edge.signing import canonical_bytes, new_nonce, sign_sample, verify_sample
from mesh.edge.stream import Outcome, Settled
from mesh.edge.telemetry import Reading, TelemetryStream

__all__ = [
    "BufferFull",
    "CameraStream",
    "DeviceCredentials",
    "EdgeCounters",
    "EdgeSession",
    "Frame",
    "Outcome",
    "PendingBuffer",
    "Reading",
    "Settled",
    "TelemetryStream",
    "canonical_bytes",
    "new_nonce",
    "sign_sample",
    "verify_sample",
]
