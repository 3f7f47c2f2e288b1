"""The acknowledgement and credit window of one frame stream: a pure state machine, no I/O, no clock.

The shell feeds it events — ``open``, ``receive`` (a frame arrived), ``settle`` (its event, or its
dead letter, was acknowledged by Kafka), ``set_backpressure``, ``drain`` — and asks it what to tell the
camera (``take_ack(now)``) and when it next needs attention (``next_deadline()``). Time is passed in.

Invariants:
- ``acked_through`` never decreases and only covers frames that are settled: a frame counts only once
  every frame received before it on this stream is settled too (Kafka acknowledges one partition in
  order, but a rejection can settle before an earlier frame's event).
- The camera never holds more credit than ``window`` minus the frames in flight, so the server never
  buffers more than ``window`` frames per stream.
"""

from __future__ import annotations

import bisect
import enum
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final


class State(enum.Enum):
    """Lifecycle of a stream."""

    AWAITING_OPEN = "awaiting_open"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class Event(enum.Enum):
    """What can happen to a stream."""

    OPEN = "open"
    RECEIVE = "receive"
    SETTLE = "settle"
    DRAIN = "drain"
    CLOSE = "close"


TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (State.AWAITING_OPEN, Event.OPEN): State.OPEN,
    (State.AWAITING_OPEN, Event.CLOSE): State.CLOSED,
    (State.OPEN, Event.RECEIVE): State.OPEN,
    (State.OPEN, Event.SETTLE): State.OPEN,
    (State.OPEN, Event.DRAIN): State.DRAINING,
    (State.OPEN, Event.CLOSE): State.CLOSED,
    # While draining, frames already on the wire are still taken (they were sent within credit) and
    # settled, but no new credit is granted.
    (State.DRAINING, Event.RECEIVE): State.DRAINING,
    (State.DRAINING, Event.SETTLE): State.DRAINING,
    (State.DRAINING, Event.DRAIN): State.DRAINING,
    (State.DRAINING, Event.CLOSE): State.CLOSED,
    (State.CLOSED, Event.CLOSE): State.CLOSED,
    (State.CLOSED, Event.SETTLE): State.CLOSED,
}
"""Every legal (state, event) → next state; anything else raises ``IllegalTransition``."""


class IllegalTransition(Exception):
    """An event that the stream's state does not allow (a protocol error of the shell or the client)."""


class CreditExceeded(Exception):
    """The camera sent a frame without credit."""


class Verdict(enum.Enum):
    """What to do with a received frame."""

    ACCEPT = "accept"
    """New: check it and publish it."""
    DUPLICATE = "duplicate"
    """Already settled (at or below the durable mark, and not skipped on this stream): acknowledge again,
    never republish."""
    OUT_OF_ORDER = "out_of_order"
    """Lower than a frame received before it on this stream and not a copy of a settled one (a frame
    still in flight, or one skipped and arriving late): reject it, never acknowledge it as delivered."""


MAX_GAPS: Final = 256
"""Most runs of skipped sequences a stream remembers; past that, the oldest runs are forgotten and every
sequence up to the last forgotten one (above the stream's opening mark) counts as OUT_OF_ORDER, so a
skipped frame is never acknowledged as delivered."""


@dataclass(frozen=True, slots=True)
class Ack:
    """What to send the camera: the fields of a FrameAck."""

    acked_through: int
    rejections: tuple[tuple[int, int, str], ...]
    """(sequence, FrameRejectReason value, detail)."""
    duplicates: tuple[int, ...]
    credit_grant: int
    backpressure: bool


@dataclass(slots=True)
class AckWindow:
    """Ack/credit bookkeeping of one stream. ``window`` = most frames the server holds unsettled."""

    window: int
    ack_delay_s: float = 0.005
    """Coalescing: an ack is due this long after the first change it would report."""
    min_grant: int = 1
    """Credit is granted only in steps of at least this many frames (fewer, larger acks under load)."""
    state: State = State.AWAITING_OPEN
    acked_through: int = 0
    received_through: int = 0
    backpressure: bool = False
    _credit: int = 0
    _pending: OrderedDict[int, bool] = field(default_factory=OrderedDict)
    _rejections: list[tuple[int, int, str]] = field(default_factory=list)
    _duplicates: list[int] = field(default_factory=list)
    _reported_through: int = 0
    _reported_backpressure: bool = False
    _due_at: float | None = None
    _opened_through: int = 0
    _gap_lows: list[int] = field(default_factory=list)
    _gap_highs: list[int] = field(default_factory=list)
    """Runs of sequences skipped on this stream (lows ascending): never received, so never published."""
    _forgotten_through: int = 0

    def _step(self, event: Event) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"{event.value} while {self.state.value}") from None

    @property
    def in_flight(self) -> int:
        """Frames received but not yet settled."""
        return len(self._pending)

    @property
    def credit(self) -> int:
        """Frames the camera may still send under the credit granted so far."""
        return self._credit

    @property
    def settled(self) -> bool:
        """True when nothing is in flight and every change was reported."""
        return not self._pending and not self._has_news()

    def open(self, durable_through: int, now: float) -> int:
        """Start the stream from the camera's durable mark; returns the initial credit."""
        self._step(Event.OPEN)
        self.acked_through = self.received_through = self._reported_through = durable_through
        self._opened_through = self._forgotten_through = durable_through
        self._credit = self.window
        return self.window

    def receive(self, sequence: int, now: float) -> Verdict:
        """A frame arrived; consumes one credit. Raises CreditExceeded when none was left."""
        self._step(Event.RECEIVE)
        if self._credit <= 0:
            raise CreditExceeded(f"frame {sequence} sent without credit")
        self._credit -= 1
        if sequence <= self.acked_through and not self._skipped(sequence):
            self._duplicates.append(sequence)
            self._mark_due(now)
            return Verdict.DUPLICATE
        if sequence <= self.received_through:
            return Verdict.OUT_OF_ORDER  # the shell settles it as a rejection, without publishing
        if sequence > self.received_through + 1:
            self._remember_gap(self.received_through + 1, sequence - 1)
        self.received_through = sequence
        self._pending[sequence] = False
        return Verdict.ACCEPT

    def _skipped(self, sequence: int) -> bool:
        """True when ``sequence`` was skipped on this stream (or may have been: its run was forgotten)."""
        if sequence <= self._opened_through:
            return False  # settled before this stream, or skipped then: the durable mark cannot tell
        if sequence <= self._forgotten_through:
            return True
        index = bisect.bisect_right(self._gap_lows, sequence) - 1
        return index >= 0 and sequence <= self._gap_highs[index]

    def _remember_gap(self, low: int, high: int) -> None:
        if len(self._gap_lows) >= MAX_GAPS:
            del self._gap_lows[0]
            self._forgotten_through = self._gap_highs.pop(0)
        self._gap_lows.append(low)
        self._gap_highs.append(high)

    def reject_unpublished(self, sequence: int, reason: int, detail: str, now: float) -> None:
        """Report a frame that was never taken into the window (out of order) as rejected."""
        self._step(Event.SETTLE)
        self._rejections.append((sequence, reason, detail))
        self._mark_due(now)

    def settle(self, sequence: int, now: float, rejection: tuple[int, str] | None = None) -> None:
        """The frame's event (or its dead letter, with ``rejection`` = (reason, detail)) is in Kafka."""
        self._step(Event.SETTLE)
        if sequence not in self._pending:
            raise IllegalTransition(f"frame {sequence} is not in flight")
        self._pending[sequence] = True
        if rejection is not None:
            self._rejections.append((sequence, rejection[0], rejection[1]))
        while self._pending:
            first, done = next(iter(self._pending.items()))
            if not done:
                break
            del self._pending[first]
            self.acked_through = first
        if self._pending:
            self._mark_due(now)
        else:
            self._due_at = now  # nothing left in flight to coalesce with: waiting only adds latency

    def set_backpressure(self, on: bool, now: float) -> None:
        """Kafka is slow or down (on): stop granting credit until it recovers (off)."""
        if on != self.backpressure:
            self.backpressure = on
            self._mark_due(now)

    def drain(self, now: float) -> None:
        """Stop granting credit; the stream ends once everything in flight is settled and reported."""
        self._step(Event.DRAIN)

    def close(self) -> None:
        """The stream ended."""
        self._step(Event.CLOSE)

    def _grantable(self) -> int:
        if self.state is not State.OPEN or self.backpressure:
            return 0
        grant = self.window - self._credit - len(self._pending)
        return grant if grant >= self.min_grant else 0

    def _has_news(self) -> bool:
        return bool(
            self.acked_through != self._reported_through
            or self._rejections
            or self._duplicates
            or self.backpressure != self._reported_backpressure
        )

    def _mark_due(self, now: float) -> None:
        if self._due_at is None:
            self._due_at = now + self.ack_delay_s

    def next_deadline(self) -> float | None:
        """When ``take_ack`` will next have something to send (None: only after another event)."""
        if self._has_news() or self._grantable():
            return self._due_at if self._due_at is not None else 0.0
        return None

    def take_ack(self, now: float, *, force: bool = False) -> Ack | None:
        """The ack to send now, or None when nothing is due (``force`` ignores the coalescing delay)."""
        if not force and (self._due_at is None or now < self._due_at) and not self._grant_only_due():
            return None
        grant = self._grantable()
        if not self._has_news() and not grant:
            self._due_at = None
            return None
        self._credit += grant
        ack = Ack(
            acked_through=self.acked_through,
            rejections=tuple(self._rejections),
            duplicates=tuple(self._duplicates),
            credit_grant=grant,
            backpressure=self.backpressure,
        )
        self._rejections.clear()
        self._duplicates.clear()
        self._reported_through = self.acked_through
        self._reported_backpressure = self.backpressure
        self._due_at = None
        return ack

    def _grant_only_due(self) -> bool:
        # Credit alone (nothing else to report) is granted without waiting.
        return self._due_at is None and self._grantable() > 0
