"""The DLQ copy of a record the analytics consumer cannot decode."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from itsmesh.v1 import events_pb2
from services.analytics.consumer import MAX_DLQ_PAYLOAD_BYTES, dead_letter


def _record(value: bytes, offset: int = 41) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="camera.detections.v1",
        partition=3,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"cam-7",
        value=value,
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=len(value),
        headers=(),
    )


def test_the_letter_names_the_source_record_and_the_reason() -> None:
    letter = dead_letter(
        _record(b"\xff junk"), "itsmesh.v1.CameraDetectionEvent", "undecodable detection event: x"
    )
    assert letter.source == events_pb2.DEAD_LETTER_SOURCE_KAFKA_RECORD
    assert (letter.source_id, letter.original_topic, letter.original_partition, letter.original_offset) == (
        "cam-7",
        "camera.detections.v1",
        3,
        41,
    )
    assert (letter.payload, letter.payload_size_bytes, letter.payload_truncated) == (b"\xff junk", 6, False)
    assert letter.payload_type == "itsmesh.v1.CameraDetectionEvent"
    assert letter.reason_detail == "undecodable detection event: x"
    assert letter.HasField("reject_time")


def test_a_retried_batch_sends_the_same_letter_id_and_big_payloads_are_cut() -> None:
    first = dead_letter(_record(b"a"), "t", "r")
    assert dead_letter(_record(b"a"), "t", "r").event_id == first.event_id
    assert dead_letter(_record(b"a", offset=42), "t", "r").event_id != first.event_id
    big = dead_letter(_record(b"x" * (MAX_DLQ_PAYLOAD_BYTES + 10)), "t", "r")
    assert len(big.payload) == MAX_DLQ_PAYLOAD_BYTES
    assert big.payload_truncated
    assert big.payload_size_bytes == MAX_DLQ_PAYLOAD_BYTES + 10
