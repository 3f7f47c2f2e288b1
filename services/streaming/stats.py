"""Ingest counters, the accepted-frame rate and a camera's connection state: pure, time passed in."""

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
