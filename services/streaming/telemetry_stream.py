"""The shell of one StreamTelemetry call: reader → checker → Kafka → writer, each stage in order.

- the reader takes samples and batches within the credit granted (more is RESOURCE_EXHAUSTED) and
  queues them;
- the checker takes whatever has arrived as one batch, runs the checks and hands it to Kafka
  (``TelemetryIngest.start``), so the next batch is checked while Kafka acknowledges this one;
- the writer waits for each batch's results in order and sends them with as much new credit as readings
  were settled.

On drain the reader stops, every reading received is still settled, and the stream ends with a
``draining`` message; the device resends anything unsettled elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import grpc
from google.protobuf import duration_pb2

from itsmesh.v1 import streaming_pb2
from mesh.status import StatusError, status_error
from services.streaming.telemetry_checks import MAX_CLOCK_SKEW_S

if TYPE_CHECKING:
    from services.streaming.telemetry_ingest import Caller, TelemetryIngest

Context = grpc.aio.ServicerContext[Any, Any]
Status = streaming_pb2.TelemetryResultStatus

RECONNECT_AFTER_S: Final = 1.0
MAX_COALESCED: Final = 1000
"""Most readings checked as one batch (one Redis round trip)."""


@dataclass(slots=True)
class TelemetryStreamState:
    """What one open telemetry stream has done so far (for ListStreams)."""

    stream_id: str
    device_id: str
    peer: str
    client_version: str
    open_time: datetime
    credit: int
    last_message_time: datetime | None = None
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    in_flight: int = 0


_END: Final = object()


class TelemetryStreamCall:
    """One StreamTelemetry call: reader → checker → (Kafka) → writer, each stage in order."""

    def __init__(
        self, ingest: TelemetryIngest, caller: Caller, state: TelemetryStreamState, context: Context
    ) -> None:
        self._ingest = ingest
        self._caller = caller
        self._state = state
        self._context = context
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._settling: asyncio.Queue[Any] = asyncio.Queue()
        self._drained = False

    async def run(self, requests: AsyncIterator[streaming_pb2.StreamTelemetryRequest]) -> None:
        ingest, settings = self._ingest, self._ingest.settings
        skew = duration_pb2.Duration()
        skew.FromSeconds(int(MAX_CLOCK_SKEW_S))
        await self._context.write(
            streaming_pb2.StreamTelemetryResponse(
                opened=streaming_pb2.TelemetryStreamOpened(
                    stream_id=self._state.stream_id,
                    initial_credit=settings.stream_window,
                    max_batch_samples=settings.max_batch_samples,
                    instance_id=ingest.instance_id,
                    max_clock_skew=skew,
                )
            )
        )
        reader = asyncio.create_task(self._read(requests), name="telemetry-reader")
        checker = asyncio.create_task(self._check(), name="telemetry-checker")
        drain = asyncio.create_task(self._drain(reader), name="telemetry-drain")
        try:
            await self._write()
        finally:
            for task in (reader, checker, drain):
                task.cancel()
            await asyncio.gather(reader, checker, drain, return_exceptions=True)

    async def _drain(self, reader: asyncio.Task[None]) -> None:
        await self._ingest.draining.wait()
        self._drained = True
        reader.cancel()  # what was received is still settled; the device resends the rest elsewhere

    async def _read(self, requests: AsyncIterator[streaming_pb2.StreamTelemetryRequest]) -> None:
        state, settings = self._state, self._ingest.settings
        end: Any = _END
        try:
            async for request in requests:
                state.last_message_time = datetime.now(UTC)
                kind = request.WhichOneof("message")
                if kind == "sample":
                    samples: Sequence[streaming_pb2.TelemetrySample] = [request.sample]
                elif kind == "batch":
                    samples = request.batch.samples
                    if len(samples) > settings.max_batch_samples:
                        raise status_error(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"a batch holds at most {settings.max_batch_samples} readings, "
                            f"got {len(samples)}",
                            reason="BATCH_TOO_LARGE",
                        )
                else:
                    raise status_error(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "`open` may be sent only once; then samples or batches",
                        field_violations={"message": f"unexpected {kind or 'empty message'}"},
                    )
                if len(samples) > state.credit:
                    raise status_error(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{len(samples)} readings sent with {state.credit} credit; wait for credit",
                        reason="CREDIT_EXCEEDED",
                    )
                state.credit -= len(samples)
                state.received += len(samples)
                state.in_flight += len(samples)
                self._inbox.put_nowait(samples)
        except StatusError as error:
            end = error
        finally:
            self._inbox.put_nowait(end)

    async def _check(self) -> None:
        """Take what arrived (coalesced into one batch), check it and hand it to Kafka, in order."""
        while True:
            item = await self._inbox.get()
            if item is _END or isinstance(item, StatusError):
                self._settling.put_nowait(item)
                return
            samples = list(item)
            end: Any = None
            while not self._inbox.empty() and len(samples) < MAX_COALESCED:
                more = self._inbox.get_nowait()
                if more is _END or isinstance(more, StatusError):
                    end = more
                    break
                samples.extend(more)
            try:
                task = await self._ingest.start(self._caller, samples)
            except StatusError as error:
                self._settling.put_nowait(error)
                return
            self._settling.put_nowait(task)
            if end is not None:
                self._settling.put_nowait(end)
                return

    async def _write(self) -> None:
        state, context = self._state, self._context
        while True:
            item = await self._settling.get()
            if item is _END:
                if self._drained:
                    reconnect = duration_pb2.Duration()
                    reconnect.FromMilliseconds(int(RECONNECT_AFTER_S * 1000))
                    await context.write(
                        streaming_pb2.StreamTelemetryResponse(
                            draining=streaming_pb2.StreamDraining(
                                reason="shutdown", reconnect_after=reconnect
                            )
                        )
                    )
                return
            if isinstance(item, StatusError):
                raise item
            results: list[streaming_pb2.TelemetryResult] = await asyncio.shield(item)
            for result in results:
                if result.status == Status.TELEMETRY_RESULT_STATUS_ACCEPTED:
                    state.accepted += 1
                elif result.status == Status.TELEMETRY_RESULT_STATUS_DUPLICATE:
                    state.duplicate += 1
                else:
                    state.rejected += 1
            state.in_flight -= len(results)
            grant = 0 if self._drained else len(results)
            state.credit += grant
            await context.write(
                streaming_pb2.StreamTelemetryResponse(
                    ack=streaming_pb2.TelemetryAck(results=results, credit_grant=grant)
                )
            )
