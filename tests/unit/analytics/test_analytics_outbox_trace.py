"""Which record's trace context each violation and anomaly of a consumed batch carries to the outbox."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from services.analytics.consumer import traceparent_of
from services.analytics.model import Anomaly, Violation
from services.analytics.writer import WriteBatch

NOW = datetime(2026, 3, 2, 8, tzinfo=UTC)
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _violation(violation_id: str) -> Violation:
    return Violation(violation_id, "speeding", "medium", NOW, NOW, NOW)


def _anomaly(anomaly_id: str) -> Anomaly:
    return Anomaly(anomaly_id, "flow_high", "low", "cam-1", "", NOW, 600, 90.0, 30.0, 10.0, 6.0, 4.0, 0, NOW)


def _record(headers: tuple[tuple[str, bytes], ...]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="camera.detections.v1",
        partition=0,
        offset=1,
        timestamp=0,
        timestamp_type=0,
        key=b"cam-1",
        value=b"",
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=0,
        headers=headers,
    )


def test_outputs_take_the_context_of_the_record_that_produced_them() -> None:
    batch = WriteBatch()
    batch.violations.append(_violation("v1"))
    assert batch.untraced
    batch.trace_new_outputs("first")
    assert not batch.untraced
    batch.trace_new_outputs("nothing new")  # a record without outputs attributes nothing
    batch.violations.append(_violation("v2"))
    batch.anomalies.append(_anomaly("a1"))
    batch.trace_new_outputs(None)
    batch.violations.append(_violation("v3"))
    batch.trace_new_outputs("third")
    assert batch.violation_traceparents == ["first", None, "third"]
    assert batch.anomaly_traceparents == [None]


def test_the_traceparent_header_is_read_and_junk_is_not() -> None:
    assert traceparent_of(_record((("event-id", b"e"), ("traceparent", PARENT.encode())))) == PARENT
    assert traceparent_of(_record((("event-id", b"e"),))) is None
    assert traceparent_of(_record((("traceparent", b"x" * 10_000),))) is None
