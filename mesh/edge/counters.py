"""What an edge stream (or a whole session) has done: plain counters, readable at any time."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class EdgeCounters:
    """Counters of an edge stream; a session's are the sum of its streams'."""

    sent: int = 0
    """Items written to the server, resends included."""
    acked: int = 0
    """Items the server accepted (durably in Kafka)."""
    duplicate: int = 0
    """Items the server recognised as already accepted (a resend): settled, not stored twice."""
    rejected: int = 0
    """Items the server rejected (never resent)."""
    rate_limited: int = 0
    """Times a reading was rate-limited (it stays buffered and is resent after retry_after)."""
    buffered: int = 0
    """Items in the local buffer now (unsettled)."""
    reconnects: int = 0
    """Streams opened again after a failure or a server drain."""

    def __add__(self, other: EdgeCounters) -> EdgeCounters:
        return EdgeCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))
