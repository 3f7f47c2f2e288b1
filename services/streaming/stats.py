"""Ingest counters, accepted-frame rate, ack latency percentiles, connection state: pure, time passed in."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from itsmesh.v1 import streaming_pb2

RATE_WINDOW_S: Final = 10.0
"""Rates are averaged over this many seconds."""


@dataclass(slots=True)
class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    window_s: float = RATE_WINDOW_S
    _times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> None:
        """One event at ``now``."""
        self._times.append(now)
        self._forget(now)

    def rate(self, now: float) -> float:
        """Events per second over the window ending at ``now``."""
        self._forget(now)
        return len(self._times) / self.window_s

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()


LATENCY_SAMPLES: Final = 4096
"""Most latency samples a LatencyWindow keeps; at higher rates the oldest leave early (bounded memory)."""


@dataclass(slots=True)
class LatencyWindow:
    """Latencies of the last ``window_s`` seconds, for p50/p99 in the status RPCs."""

    window_s: float = RATE_WINDOW_S
    _samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def record(self, now: float, latency_s: float) -> None:
        """One latency of ``latency_s`` seconds observed at ``now``."""
        self._samples.append((now, latency_s))

    def percentiles(self, now: float) -> tuple[float, float]:
        """(p50, p99) in milliseconds over the window ending at ``now``; zeros without samples."""
        samples = self._samples
        while samples and samples[0][0] <= now - self.window_s:
            samples.popleft()
        if not samples:
            return 0.0, 0.0
        ordered = sorted(latency for _, latency in samples)
        last = len(ordered) - 1
        return ordered[round(0.50 * last)] * 1000.0, ordered[round(0.99 * last)] * 1000.0


@dataclass(slots=True)
class FrameCounters:
    """Frames received and how they settled, with the accepted-frame rate."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    accepted_rate: RateMeter = field(default_factory=RateMeter)

    def record_received(self) -> None:
        """A frame arrived."""
        self.received += 1

    def record_accepted(self, now: float) -> None:
        """A frame's event is durably in Kafka."""
        self.accepted += 1
        self.accepted_rate.record(now)

    def record_rejected(self) -> None:
        """A frame was settled by rejection."""
        self.rejected += 1

    def record_duplicate(self) -> None:
        """A frame already accepted arrived again."""
        self.duplicate += 1


def connection_state(
    *, live: bool, acked_through: int, ever_streamed: bool
) -> streaming_pb2.CameraConnectionState.ValueType:
    """ONLINE with a live stream; OFFLINE once it streamed before; NEVER_CONNECTED otherwise."""
    if live:
        return streaming_pb2.CAMERA_CONNECTION_STATE_ONLINE
    if ever_streamed or acked_through > 0:
        return streaming_pb2.CAMERA_CONNECTION_STATE_OFFLINE
    return streaming_pb2.CAMERA_CONNECTION_STATE_NEVER_CONNECTED
