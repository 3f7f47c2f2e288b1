"""The bounded buffer of unsettled edge items, in memory and journaled to disk."""

from __future__ import annotations

import pytest

from mesh.edge.buffer import BufferFull, PendingBuffer
from mesh.edge.counters import EdgeCounters


def test_items_are_kept_oldest_first_until_settled():
    buffer = PendingBuffer(10)
    for sequence in (3, 5, 9):
        buffer.add(sequence, f"item-{sequence}".encode())
    assert buffer.sequences() == [3, 5, 9]
    assert len(buffer) == 3
    assert buffer.remove(5)
    assert not buffer.remove(5)
    assert buffer.get(9) == b"item-9"
    assert 5 not in buffer
    assert buffer.remove_through(8) == [3]
    assert buffer.sequences() == [9]


def test_sequences_must_increase():
    buffer = PendingBuffer(10)
    buffer.add(5, b"x")
    with pytest.raises(ValueError, match="not above 5"):
        buffer.add(5, b"y")
    buffer.remove(5)
    with pytest.raises(ValueError, match="not above 5"):
        buffer.add(4, b"y")  # even after it was settled: sequences are never reused


def test_a_full_buffer_refuses_more():
    buffer = PendingBuffer(2)
    buffer.add(1, b"a")
    buffer.add(2, b"b")
    assert buffer.full
    with pytest.raises(BufferFull):
        buffer.add(3, b"c")
    buffer.remove(1)
    buffer.add(3, b"c")
    assert buffer.sequences() == [2, 3]


def test_a_journaled_buffer_comes_back_after_a_restart(tmp_path):
    path = tmp_path / "edge" / "telemetry-gps-7.sqlite3"
    buffer = PendingBuffer(10, path)
    for sequence in range(1, 6):
        buffer.add(sequence, bytes([sequence]))
    buffer.remove(2)
    buffer.remove_through(3)
    buffer.close()
    again = PendingBuffer(10, path)
    assert again.sequences() == [4, 5]
    assert again.get(4) == b"\x04"
    assert again.last_sequence == 5
    again.remove_through(5)
    again.close()
    emptied = PendingBuffer(10, path)
    assert emptied.sequences() == []
    assert emptied.last_sequence == 5, "sequences continue above the last one"
    emptied.close()


def test_counters_add_up():
    total = EdgeCounters(sent=3, acked=2, buffered=1) + EdgeCounters(sent=1, rejected=1, reconnects=2)
    assert total == EdgeCounters(sent=4, acked=2, rejected=1, buffered=1, reconnects=2)
