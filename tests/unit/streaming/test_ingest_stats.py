"""Ingest counters, the accepted-frame rate and a camera's connection state, with time passed in."""

from __future__ import annotations

import pytest

from itsmesh.v1 import streaming_pb2
from services.streaming.stats import (
    LATENCY_SAMPLES,
    FrameCounters,
    LatencyWindow,
    RateMeter,
    connection_state,
)


def test_rate_counts_only_events_inside_the_window():
    meter = RateMeter(window_s=10.0)
    for t in (0.0, 1.0, 2.0, 9.0):
        meter.record(t)
    assert meter.rate(9.5) == pytest.approx(0.4)
    assert meter.rate(11.5) == pytest.approx(0.2)  # 0 and 1 have left the window
    assert meter.rate(30.0) == 0.0


def test_counters_keep_each_outcome_apart():
    counters = FrameCounters()
    for _ in range(3):
        counters.record_received()
    counters.record_accepted(1.0)
    counters.record_rejected()
    counters.record_duplicate()
    assert (counters.received, counters.accepted, counters.rejected, counters.duplicate) == (3, 1, 1, 1)
    assert counters.accepted_rate.rate(1.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("live", "acked_through", "ever_streamed", "state"),
    [
        (True, 0, True, streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE),
        (True, 5, True, streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE),
        (False, 5, False, streaming_pb2.CAMERA_CONNECTION_STATE_OFFLINE),
        (False, 0, True, streaming_pb2.CAMERA_CONNECTION_STATE_OFFLINE),
        (False, 0, False, streaming_pb2.CAMERA_CONNECTION_STATE_NEVER_CONNECTED),
    ],
)
def test_connection_state(live, acked_through, ever_streamed, state):
    assert connection_state(live=live, acked_through=acked_through, ever_streamed=ever_streamed) == state


def test_latency_percentiles_cover_only_the_window():
    window = LatencyWindow(window_s=10.0)
    assert window.percentiles(0.0) == (0.0, 0.0)
    for i in range(100):
        window.record(1.0, (i + 1) / 1000)  # 1..100 ms
    p50, p99 = window.percentiles(5.0)
    assert p50 == pytest.approx(50.0, abs=1.0)
    assert p99 == pytest.approx(99.0, abs=1.0)
    window.record(12.0, 0.5)
    assert window.percentiles(12.0) == (500.0, 500.0)  # the first hundred left the window


def test_latency_memory_is_bounded():
    window = LatencyWindow()
    for i in range(LATENCY_SAMPLES + 10):
        window.record(0.0, 1.0 if i < 10 else 0.001)
    assert window.percentiles(0.0) == (1.0, 1.0)  # the ten slow, oldest samples were dropped
