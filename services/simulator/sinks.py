"""Where a simulated camera's frames go: the edge client library, or a raw stream that misbehaves.

``EdgeFrameSink`` is the normal path: ``mesh.edge.CameraStream`` buffers, sends within credit and
resumes after failures, as a real camera does. It insists on strictly increasing sequences, so a run that
asks for duplicate or out-of-order frames uses ``RawFrameSink`` instead: StreamFrames on the generated
stub, sending exactly what it is given (a resent sequence, an earlier one after a later one) within the
server's credit, counting what the server answers, and never resending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Protocol

import grpc

from itsmesh.v1 import streaming_pb2, streaming_pb2_grpc
from mesh.edge import CameraStream, EdgeCounters
from mesh.tasks import stop_task

log = logging.getLogger(__name__)

CLIENT_VERSION: Final = "itsmesh-simulator/0.1.0"
OPEN_TIMEOUT_S: Final = 10.0


class FrameSink(Protocol):
    """Takes a camera's frames."""

    async def send(self, frame: streaming_pb2.Frame) -> None: ...

    @property
    def counters(self) -> EdgeCounters: ...

    async def close(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every frame sent to be settled; whether all were."""
        ...


class EdgeFrameSink:
    """Frames through ``mesh.edge`` (buffered, resumable)."""

    def __init__(self, stream: CameraStream) -> None:
        self._stream = stream

    async def send(self, frame: streaming_pb2.Frame) -> None:
        await self._stream.send(frame)

    @property
    def counters(self) -> EdgeCounters:
        return self._stream.counters

    async def close(self, timeout_s: float) -> bool:
        return await self._stream.flush(timeout_s)


class RawFrameSink:
    """StreamFrames sending exactly the frames given, duplicates and disorder included."""

    def __init__(
        self,
        stub: streaming_pb2_grpc.StreamingServiceAsyncStub,
        camera_id: str,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self._stub = stub
        self._camera_id = camera_id
        self._metadata = metadata
        self._call: (
            grpc.aio.StreamStreamCall[streaming_pb2.StreamFramesRequest, streaming_pb2.StreamFramesResponse]
            | None
        ) = None
        self._credit = 0
        self._credit_changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        # Frames sent above every earlier sequence are settled by the server's cumulative mark; any other
        # transmission (a resend, an earlier frame after a later one) only by an explicit duplicate or
        # rejection report, since the mark may have passed it before it arrived.
        self._in_order: set[int] = set()
        self._explicit: dict[int, int] = {}
        self._highest_sent = 0
        self._idle = asyncio.Event()
        """Set while no sent frame waits for its settlement."""
        self._counters = EdgeCounters()
        self.last_error = ""

    async def start(self) -> None:
        """Open the stream and take the initial credit."""
        call = self._stub.StreamFrames(metadata=self._metadata)
        open_message = streaming_pb2.OpenFrameStream(
            camera_id=self._camera_id, take_over=True, client_version=CLIENT_VERSION
        )
        await call.write(streaming_pb2.StreamFramesRequest(open=open_message))
        async with asyncio.timeout(OPEN_TIMEOUT_S):
            response = await call.read()
        if not isinstance(response, streaming_pb2.StreamFramesResponse) or not response.HasField("opened"):
            raise ConnectionError(f"the server did not open the frame stream of {self._camera_id}")
        self._call = call
        self._credit = response.opened.initial_credit
        self._reader = asyncio.create_task(self._read(call), name=f"frames-{self._camera_id}")

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall[
            streaming_pb2.StreamFramesRequest, streaming_pb2.StreamFramesResponse
        ],
    ) -> None:
        try:
            while isinstance(response := await call.read(), streaming_pb2.StreamFramesResponse):
                if not response.HasField("ack"):
                    continue
                ack = response.ack
                # Reports first: the server lists a rejection in the ack that covers it, or an earlier one.
                for sequence in (*(r.sequence for r in ack.rejections), *ack.duplicate_sequences):
                    if self._explicit.get(sequence, 0) > 0:
                        self._explicit[sequence] -= 1
                    else:
                        self._in_order.discard(sequence)  # an in-order frame refused (invalid)
                self._counters.rejected += len(ack.rejections)
                self._counters.duplicate += len(ack.duplicate_sequences)
                settled = [s for s in self._in_order if s <= ack.acked_through_sequence]
                self._counters.acked += len(settled)
                self._in_order.difference_update(settled)
                if not self._unsettled():
                    self._idle.set()
                async with self._credit_changed:
                    self._credit += ack.credit_grant
                    self._credit_changed.notify_all()
        except grpc.aio.AioRpcError as exc:
            self.last_error = f"{exc.code().name}: {exc.details()}"
            log.warning("frame stream ended", extra={"camera_id": self._camera_id, "error": self.last_error})
        finally:
            async with self._credit_changed:
                self._credit = -1  # the stream is gone: senders stop waiting
                self._credit_changed.notify_all()

    def _unsettled(self) -> int:
        return len(self._in_order) + sum(self._explicit.values())

    async def send(self, frame: streaming_pb2.Frame) -> None:
        if self._call is None:
            raise RuntimeError("start the sink first")
        async with self._credit_changed:
            await self._credit_changed.wait_for(lambda: self._credit != 0)
            if self._credit < 0:
                raise ConnectionError(f"the frame stream of {self._camera_id} ended: {self.last_error}")
            self._credit -= 1
        if frame.sequence > self._highest_sent:
            self._highest_sent = frame.sequence
            self._in_order.add(frame.sequence)
        else:
            self._explicit[frame.sequence] = self._explicit.get(frame.sequence, 0) + 1
        self._idle.clear()
        self._counters.sent += 1
        await self._call.write(streaming_pb2.StreamFramesRequest(frame=frame))

    @property
    def counters(self) -> EdgeCounters:
        counters = EdgeCounters(**{name: getattr(self._counters, name) for name in EdgeCounters.__slots__})
        counters.buffered = self._unsettled()
        return counters

    async def close(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every frame to be settled, then end the stream."""
        call, reader = self._call, self._reader
        if call is None or reader is None:
            return True
        if self._unsettled():
            idle = asyncio.create_task(self._idle.wait())
            await asyncio.wait({idle, reader}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            await stop_task(idle)
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await call.done_writing()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(reader)
        await stop_task(reader)
        call.cancel()
        return not self._unsettled()
