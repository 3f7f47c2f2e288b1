"""How edge streams settle their buffers from the server's messages (no network: messages fed in)."""

from __future__ import annotations

import asyncio

from google.protobuf import duration_pb2

from itsmesh.v1 import common_pb2, streaming_pb2
from mesh.edge import CameraStream, Frame, Outcome, PendingBuffer, Reading, Settled, TelemetryStream
from mesh.edge.signing import verify_sample

SECRET = b"k" * 32
Status = streaming_pb2.TelemetryResultStatus


def _telemetry(results: list[Settled]) -> TelemetryStream:
    return TelemetryStream(
        None,  # type: ignore[arg-type]  # never called: no connection in these tests
        None,
        "gps-7",
        SECRET,
        "hk-1",
        PendingBuffer(100),
        client_version="test",
        on_result=results.append,
        clock=lambda: 1_700_000_000.0,
    )


def _ack(*results: streaming_pb2.TelemetryResult, credit: int = 0) -> streaming_pb2.StreamTelemetryResponse:
    return streaming_pb2.StreamTelemetryResponse(
        ack=streaming_pb2.TelemetryAck(results=results, credit_grant=credit)
    )


async def test_readings_get_increasing_sequences_and_are_signed_afresh_per_transmission():
    stream = _telemetry([])
    first = await stream.send(Reading(latitude_deg=1.0, longitude_deg=2.0))
    second = await stream.send(Reading(latitude_deg=1.0, longitude_deg=2.0))
    assert first == 1_700_000_000_000
    assert second == first + 1
    items = [(s, stream._buffer.get(s) or b"") for s in (first, second)]
    one, two = stream._batch_request(items), stream._batch_request(items)
    assert [s.idempotency_key for s in one.batch.samples] == ["gps-7:1700000000000", "gps-7:1700000000001"]
    assert all(verify_sample(s, SECRET) and s.signing_key_id == "hk-1" for s in one.batch.samples)
    assert one.batch.samples[0].nonce != two.batch.samples[0].nonce, "a fresh nonce per transmission"
    assert one.batch.samples[0].idempotency_key == two.batch.samples[0].idempotency_key


async def test_results_settle_readings_and_rate_limited_ones_stay_buffered():
    results: list[Settled] = []
    stream = _telemetry(results)
    sequences = [await stream.send(Reading(latitude_deg=1.0, longitude_deg=2.0)) for _ in range(4)]
    stream._received(
        _ack(
            streaming_pb2.TelemetryResult(
                sequence=sequences[0], status=Status.TELEMETRY_RESULT_STATUS_ACCEPTED
            ),
            streaming_pb2.TelemetryResult(
                sequence=sequences[1], status=Status.TELEMETRY_RESULT_STATUS_DUPLICATE
            ),
            streaming_pb2.TelemetryResult(
                sequence=sequences[2],
                status=Status.TELEMETRY_RESULT_STATUS_REJECTED,
                reject_reason=common_pb2.TELEMETRY_REJECT_REASON_FIELD_OUT_OF_RANGE,
                field="speed_kmh",
            ),
            streaming_pb2.TelemetryResult(
                sequence=sequences[3],
                status=Status.TELEMETRY_RESULT_STATUS_REJECTED,
                reject_reason=common_pb2.TELEMETRY_REJECT_REASON_RATE_LIMITED,
                retry_after=duration_pb2.Duration(nanos=10_000_000),
            ),
            credit=3,
        )
    )
    assert [(r.sequence, r.outcome) for r in results] == [
        (sequences[0], Outcome.ACCEPTED),
        (sequences[1], Outcome.DUPLICATE),
        (sequences[2], Outcome.REJECTED),
    ]
    assert results[2].reason == "TELEMETRY_REJECT_REASON_FIELD_OUT_OF_RANGE"
    assert results[2].field == "speed_kmh"
    counters = stream.counters
    assert (counters.acked, counters.duplicate, counters.rejected, counters.rate_limited) == (1, 1, 1, 1)
    assert counters.buffered == 1, "the rate-limited reading waits for its retry_after"
    assert sequences[3] in stream._held
    await asyncio.sleep(0.05)
    assert sequences[3] not in stream._held, "released after retry_after"


async def test_draining_asks_to_reconnect_after_the_delay():
    stream = _telemetry([])
    draining = streaming_pb2.StreamTelemetryResponse(
        draining=streaming_pb2.StreamDraining(
            reason="shutdown", reconnect_after=duration_pb2.Duration(seconds=2)
        )
    )
    assert stream._received(draining) == 2.0


async def test_frames_settle_through_the_mark_with_rejections_and_duplicates():
    results: list[Settled] = []
    camera = CameraStream(
        None,  # type: ignore[arg-type]  # never called
        None,
        "cam-1",
        PendingBuffer(100),
        client_version="test",
        on_result=results.append,
        clock=lambda: 1.0,
    )
    for sequence in range(1, 6):
        await camera.send(Frame(jpeg=b"\xff\xd8\xff\xd9", sequence=sequence))
    assert camera._open_request().open.resume_from_sequence == 1
    ack = streaming_pb2.FrameAck(
        acked_through_sequence=3,
        rejections=[
            streaming_pb2.FrameRejection(
                sequence=2, reason=common_pb2.FRAME_REJECT_REASON_NOT_JPEG, detail="no start-of-image marker"
            )
        ],
        duplicate_sequences=[3],
        credit_grant=3,
    )
    camera._received(streaming_pb2.StreamFramesResponse(ack=ack))
    assert [(r.sequence, r.outcome, r.reason) for r in results] == [
        (1, Outcome.ACCEPTED, ""),
        (2, Outcome.REJECTED, "FRAME_REJECT_REASON_NOT_JPEG"),
        (3, Outcome.DUPLICATE, ""),
    ]
    opened = streaming_pb2.FrameStreamOpened(acked_through_sequence=4, initial_credit=8, max_batch_frames=4)
    camera._opened(streaming_pb2.StreamFramesResponse(opened=opened))
    assert camera._buffer.sequences() == [5], "the server's mark on reopening settles what it already has"
    assert camera._credit == 3 + 8
