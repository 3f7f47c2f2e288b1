"""The part every edge stream shares: buffer → credit-limited writes → settle on acks, resumed forever.

A ``ResumableStream`` owns one background task that keeps a bidirectional call open: it opens the
stream, resends every unsettled buffered item (oldest first) within the credit the server grants,
settles items as acknowledgements arrive, and after any failure — the server restarting or draining,
the network, an expired token, a refused call — waits a jittered backoff (or the server's
``retry_after``) and does it again. Subclasses say how to open, how to encode a batch and how to read
an acknowledgement.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc

from itsmesh.v1 import streaming_pb2_grpc
from mesh.edge.buffer import PendingBuffer
from mesh.edge.counters import EdgeCounters
from mesh.retry import RetryPolicy
from mesh.status import StatusError, status_details

log = logging.getLogger(__name__)

RECONNECT_POLICY: Final = RetryPolicy(
    max_attempts=1_000_000, initial_backoff_seconds=0.1, backoff_multiplier=2.0, max_backoff_seconds=10.0
)
"""Full-jitter backoff between reconnects: up to 0.1 s, 0.2 s, ... capped at 10 s."""
OPEN_TIMEOUT_S: Final = 10.0


class Outcome(enum.Enum):
    """How the server settled one item."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Settled:
    """One settled item, as handed to ``on_result``."""

    sequence: int
    outcome: Outcome
    reason: str = ""
    """Reject reason name, for example ``TELEMETRY_REJECT_REASON_BAD_SIGNATURE``."""
    field: str = ""
    detail: str = ""


ResultHook = Callable[[Settled], None]
TokenSource = Callable[[], Awaitable[str | None]]
Metadata = tuple[tuple[str, str], ...]


class _Reconnect(Exception):
    """The server ended the stream (drained or closed); open it again after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"reconnect after {delay_s} s")
        self.delay_s = delay_s


class ResumableStream(ABC):
    """One edge stream with its buffer, credit and reconnect loop (see the module docstring)."""

    def __init__(
        self,
        stub: streaming_pb2_grpc.StreamingServiceStub,
        token: TokenSource | None,
        buffer: PendingBuffer,
        *,
        client_version: str,
        on_result: ResultHook | None = None,
        clock: Callable[[], float] = time.time,
        policy: RetryPolicy = RECONNECT_POLICY,
        rng: random.Random | None = None,
    ) -> None:
        self._stub = stub
        self._buffer = buffer
        self._token = token
        self._client_version = client_version
        self._clock = clock
        # Sequences continue above every one used before and above the clock in milliseconds, so a device
        # restarted without its buffer file never reuses one the server already settled.
        self._floor = int(clock() * 1000)
        self._on_result = on_result
        self._policy = policy
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security
        self._counters = EdgeCounters(buffered=len(buffer))
        self._queue: deque[int] = deque()
        self._changed = asyncio.Event()
        self._settled = asyncio.Event()
        self._credit = 0
        self._max_batch = 1
        self._connected = False
        self._draining = False
        self._closing = False
        self._held: set[int] = set()
        """Rate-limited items waiting for their retry_after before being sent again."""
        self._task: asyncio.Task[None] | None = None
        self._opened_since_failure = False
        self.last_error: str = ""

    # --- public ---------------------------------------------------------------------------------------

    @property
    def counters(self) -> EdgeCounters:
        """What this stream has done so far (a copy)."""
        counters = self._counters
        counters.buffered = len(self._buffer)
        return EdgeCounters(**{name: getattr(counters, name) for name in counters.__slots__})

    @property
    def connected(self) -> bool:
        """Whether the stream is open right now."""
        return self._connected

    def start(self) -> None:
        """Start the background task (done by the session)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"edge-{type(self).__name__}")

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every buffered item is settled; False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self._buffer):
                    self._settled.clear()
                    await self._settled.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout_s: float | None = 5.0) -> None:
        """Send what is buffered (for up to ``timeout_s``), end the stream and stop; unsent items stay in
        the buffer (and in its file, when on disk)."""
        self._closing = True
        self._changed.set()
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(task)
            except TimeoutError:
                log.info("edge stream closed with items unsettled", extra={"buffered": len(self._buffer)})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._buffer.close()

    # --- for subclasses -------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        return max(self._buffer.last_sequence + 1, self._floor)

    async def _enqueue(self, sequence: int, payload: bytes) -> None:
        """Buffer one item, waiting while the buffer is full."""
        while self._buffer.full:
            self._settled.clear()
            await self._settled.wait()
        self._buffer.add(sequence, payload)
        if self._connected:
            self._queue.append(sequence)
            self._changed.set()

    def _settle(
        self, sequence: int, outcome: Outcome, reason: str = "", field: str = "", detail: str = ""
    ) -> None:
        if not self._buffer.remove(sequence):
            return
        counters = self._counters
        if outcome is Outcome.ACCEPTED:
            counters.acked += 1
        elif outcome is Outcome.DUPLICATE:
            counters.duplicate += 1
        else:
            counters.rejected += 1
        self._settled.set()
        self._changed.set()
        if self._on_result is not None:
            self._on_result(Settled(sequence, outcome, reason, field, detail))

    def _hold(self, sequence: int, delay_s: float) -> None:
        """Send ``sequence`` again after ``delay_s`` (rate limited)."""
        self._counters.rate_limited += 1
        self._held.add(sequence)
        asyncio.get_running_loop().call_later(delay_s, self._release, sequence)

    def _release(self, sequence: int) -> None:
        self._held.discard(sequence)
        if self._connected and sequence in self._buffer:
            self._queue.append(sequence)
            self._changed.set()

    def _grant(self, credit: int) -> None:
        self._credit += credit
        if credit:
            self._changed.set()

    @abstractmethod
    def _call(self, metadata: Metadata) -> Any:
        """Start the bidirectional call (a grpc.aio StreamStreamCall) with ``metadata``."""

    @abstractmethod
    def _open_request(self) -> Any:
        """The first message of the stream."""

    @abstractmethod
    def _opened(self, response: Any) -> None:
        """Handle the server's first message (credit, batch size, resume point); raise if it is not one."""

    @abstractmethod
    def _batch_request(self, items: Sequence[tuple[int, bytes]]) -> Any:
        """One request carrying ``items`` (sequence, payload), oldest first."""

    @abstractmethod
    def _acknowledged(self, ack: Any) -> None:
        """Handle the ``ack`` of one server message (a FrameAck or TelemetryAck)."""

    def _received(self, response: Any) -> float | None:
        """Handle one server message; a delay (s) when the server drains and asks to reconnect."""
        kind = response.WhichOneof("message")
        if kind == "draining":
            return float(response.draining.reconnect_after.ToNanoseconds() / 1e9)
        if kind == "ack":
            self._acknowledged(response.ack)
        return None

    # --- the loop -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            delay: float | None = None
            try:
                await self._connect_once()
                if self._closing and not len(self._buffer):
                    return
            except asyncio.CancelledError:
                raise
            except _Reconnect as again:
                delay = again.delay_s
            except grpc.aio.AioRpcError as exc:
                details = status_details(exc)
                self.last_error = f"{details.code.name}: {details.message}"
                delay = details.retry_delay_s
                log.info("edge stream failed", extra={"error": self.last_error})
            except StatusError as exc:  # no token yet (auth unreachable or refused)
                self.last_error = f"{exc.grpc_code.name}: {exc.message}"
                delay = exc.retry_delay_s
            except Exception as exc:  # no endpoints, circuit open, connection errors: all retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.info("edge stream failed", extra={"error": self.last_error})
            if self._closing and not len(self._buffer):
                return
            # Backoff grows over failures in a row; a stream that opened starts the count again.
            attempt = 1 if self._opened_since_failure else attempt + 1
            self._opened_since_failure = False
            if delay is None:
                delay = self._policy.backoff(attempt, self._rng)
            self._counters.reconnects += 1
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        token = await self._token() if self._token is not None else None
        call = self._call((("authorization", f"Bearer {token}"),) if token else ())
        reader: asyncio.Task[None] | None = None
        writer: asyncio.Task[None] | None = None
        try:
            await call.write(self._open_request())
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                first = await call.read()
            if first is grpc.aio.EOF:
                await call  # raises the status the server ended with
                raise _Reconnect(0.0)
            self._credit = 0
            self._draining = False
            self._opened(first)
            self._opened_since_failure = True
            self._queue = deque(s for s in self._buffer.sequences() if s not in self._held)
            self._connected = True
            self._changed.set()
            reader = asyncio.create_task(self._read(call), name="edge-reader")
            writer = asyncio.create_task(self._write(call), name="edge-writer")
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                writer.result()  # raises a write failure
                await reader  # half-closed: the server settles the rest and ends the stream
            else:
                reader.result()
        finally:
            self._connected = False
            for task in (reader, writer):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (reader, writer) if t is not None), return_exceptions=True)
            call.cancel()

    async def _read(self, call: Any) -> None:
        reconnect_after: float | None = None
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                await call  # raises when the stream ended with an error
                if self._closing and not len(self._buffer):
                    return
                raise _Reconnect(reconnect_after or 0.0)
            delay = self._received(response)
            if delay is not None:
                self._draining = True
                reconnect_after = delay
                self._changed.set()

    async def _write(self, call: Any) -> None:
        counters = self._counters
        while True:
            self._changed.clear()
            if self._closing and not len(self._buffer):
                await call.done_writing()
                return
            if not self._draining and self._credit > 0:
                items: list[tuple[int, bytes]] = []
                limit = min(self._credit, self._max_batch)
                while self._queue and len(items) < limit:
                    sequence = self._queue.popleft()
                    payload = self._buffer.get(sequence)
                    if payload is not None and sequence not in self._held:
                        items.append((sequence, payload))
                if items:
                    self._credit -= len(items)
                    await call.write(self._batch_request(items))
                    counters.sent += len(items)
                    continue
            await self._changed.wait()
