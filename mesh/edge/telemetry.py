"""Telemetry from a device: readings signed, streamed with credit over StreamTelemetry, resent until
settled.

Each transmission of a reading gets a fresh nonce and signature (``mesh.edge.signing``) under the same
idempotency key: the server's nonce check stops replays of a transmission, while the key makes a resend
of a reading it already accepted a duplicate instead of a second copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.edge.buffer import PendingBuffer
from mesh.edge.signing import new_nonce, sign_sample
from mesh.edge.stream import Metadata, Outcome, ResultHook, ResumableStream, TokenSource

Status = streaming_pb2.TelemetryResultStatus
RATE_LIMITED = common_pb2.TELEMETRY_REJECT_REASON_RATE_LIMITED
DEFAULT_RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class Reading:
    """One telemetry reading before it is signed."""

    latitude_deg: float
    longitude_deg: float
    speed_kmh: float = 0.0
    heading_deg: float = 0.0
    reading_time: float | None = None
    """Unix seconds; None = now."""
    altitude_m: float | None = None
    horizontal_accuracy_m: float = 0.0
    measurements: Mapping[str, float] = field(default_factory=dict)
    """Additional sensor values; names are [a-z0-9_] and carry their unit (``fuel_level_pct``)."""
    sequence: int | None = None
    """Increasing per device; None = the next one."""
    idempotency_key: str | None = None
    """None = ``<device_id>:<sequence>``."""


class TelemetryStream(ResumableStream):
    """StreamTelemetry for one device; create it with ``EdgeSession.telemetry()``."""

    def __init__(
        self,
        stub: streaming_pb2_grpc.StreamingServiceStub,
        token: TokenSource | None,
        device_id: str,
        hmac_secret: bytes,
        hmac_key_id: str,
        buffer: PendingBuffer,
        *,
        client_version: str,
        on_result: ResultHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(stub, token, buffer, client_version=client_version, on_result=on_result, clock=clock)
        self.device_id = device_id
        self._secret = hmac_secret
        self._key_id = hmac_key_id

    async def send(self, reading: Reading) -> int:
        """Buffer ``reading`` for sending (waits while the buffer is full); returns its sequence."""
        sequence = reading.sequence
        if sequence is None:
            sequence = self._next_sequence()
        sample = streaming_pb2.TelemetrySample(
            device_id=self.device_id,
            sequence=sequence,
            position=common_pb2.GeoPoint(
                latitude_deg=reading.latitude_deg,
                longitude_deg=reading.longitude_deg,
                altitude_m=reading.altitude_m,
            ),
            speed_kmh=reading.speed_kmh,
            heading_deg=reading.heading_deg,
            horizontal_accuracy_m=reading.horizontal_accuracy_m,
            measurements=dict(reading.measurements),
            idempotency_key=reading.idempotency_key or f"{self.device_id}:{sequence}",
        )
        taken = reading.reading_time if reading.reading_time is not None else self._clock()
        sample.reading_time.FromNanoseconds(round(taken * 1e9))
        await self._enqueue(sequence, sample.SerializeToString())
        return sequence

    def _call(self, metadata: Metadata) -> Any:
        return self._stub.StreamTelemetry(metadata=metadata)  # type: ignore[call-arg]  # reader/writer style

    def _open_request(self) -> streaming_pb2.StreamTelemetryRequest:
        return streaming_pb2.StreamTelemetryRequest(
            open=streaming_pb2.OpenTelemetryStream(
                device_id=self.device_id, client_version=self._client_version
            )
        )

    def _opened(self, response: streaming_pb2.StreamTelemetryResponse) -> None:
        if response.WhichOneof("message") != "opened":
            raise ConnectionError("the server did not open the telemetry stream")
        self._max_batch = max(1, response.opened.max_batch_samples)
        self._grant(response.opened.initial_credit)

    def _batch_request(self, items: Sequence[tuple[int, bytes]]) -> streaming_pb2.StreamTelemetryRequest:
        samples = []
        for _, payload in items:
            sample = streaming_pb2.TelemetrySample.FromString(payload)
            sample.nonce = new_nonce()  # a fresh nonce per transmission; the idempotency key stays
            sign_sample(sample, self._secret, self._key_id)
            samples.append(sample)
        if len(samples) == 1:
            return streaming_pb2.StreamTelemetryRequest(sample=samples[0])
        return streaming_pb2.StreamTelemetryRequest(batch=streaming_pb2.TelemetryBatch(samples=samples))

    def _acknowledged(self, ack: streaming_pb2.TelemetryAck) -> None:
        for result in ack.results:
            if result.status == Status.TELEMETRY_RESULT_STATUS_ACCEPTED:
                self._settle(result.sequence, Outcome.ACCEPTED)
            elif result.status == Status.TELEMETRY_RESULT_STATUS_DUPLICATE:
                self._settle(result.sequence, Outcome.DUPLICATE)
            elif result.reject_reason == RATE_LIMITED:
                delay = result.retry_after.ToNanoseconds() / 1e9 if result.HasField("retry_after") else 0.0
                self._hold(result.sequence, delay or DEFAULT_RETRY_AFTER_S)
            else:
                self._settle(
                    result.sequence,
                    Outcome.REJECTED,
                    common_pb2.TelemetryRejectReason.Name(result.reject_reason),
                    result.field,
                    result.detail,
                )
        self._grant(ack.credit_grant)
