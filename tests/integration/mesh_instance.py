"""A StreamingService instance for the mesh client tests, whose behaviour a test can change while it runs.

Imported by ``test_mesh_client.py`` for in-process instances, and run as a script for an instance that a
test kills with SIGKILL::

    python tests/integration/mesh_instance.py REDIS_URL NAMESPACE SERVICE INSTANCE_ID

The script serves on a free loopback port, registers in the registry under NAMESPACE, prints
``ready <port>`` and serves until killed.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc


def retry_info_trailers(delay_s: float) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status whose RetryInfo asks for ``delay_s`` of pushback."""
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(round(delay_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="busy")
    status.details.append(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


class EchoStreaming(streaming_pb2_grpc.StreamingServiceServicer):
    """GetCamera and RegisterCamera echo with the instance's name; StreamFrames acknowledges every frame.

    ``delay_s`` slows every unary answer; ``failing`` makes every call end with UNAVAILABLE (an instance
    that is up but broken); ``pushback_s`` makes every unary call end with RESOURCE_EXHAUSTED and a
    RetryInfo asking for that delay. ``calls`` counts calls per method; ``deadlines`` keeps GetCamera's
    ``time_remaining()`` as seen by the server.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.delay_s = 0.0
        self.failing = False
        self.pushback_s: float | None = None
        self.calls: collections.Counter[str] = collections.Counter()
        self.deadlines: list[float | None] = []
        self.open_streams = 0
        self.stream_opened = asyncio.Event()

    async def _unary_checks(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is failing on purpose")
        if self.pushback_s is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.name} is busy",
                trailing_metadata=retry_info_trailers(self.pushback_s),
            )

    async def GetCamera(self, request, context):
        self.deadlines.append(context.time_remaining())
        await self._unary_checks("GetCamera", context)
        return common_pb2.Camera(camera_id=request.camera_id, name=self.name)

    async def RegisterCamera(self, request, context):
        await self._unary_checks("RegisterCamera", context)
        return common_pb2.Camera(camera_id=request.camera.camera_id, name=self.name)

    async def StreamFrames(
        self, request_iterator, context
    ) -> AsyncIterator[streaming_pb2.StreamFramesResponse]:
        self.calls["StreamFrames"] += 1
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is failing on purpose")
        self.open_streams += 1
        self.stream_opened.set()
        try:
            async for message in request_iterator:
                if message.HasField("open"):
                    yield streaming_pb2.StreamFramesResponse(
                        opened=streaming_pb2.FrameStreamOpened(
                            stream_id=f"{self.name}-{message.open.camera_id}",
                            instance_id=self.name,
                            initial_credit=100,
                        )
                    )
                elif message.HasField("frame"):
                    yield streaming_pb2.StreamFramesResponse(
                        ack=streaming_pb2.FrameAck(
                            acked_through_sequence=message.frame.sequence, credit_grant=1
                        )
                    )
        finally:
            self.open_streams -= 1


async def serve_and_register(redis_url: str, namespace: str, service: str, instance_id: str) -> None:
    from mesh.endpoints import Instance
    from mesh.registry import Registration

    server = grpc.aio.server()
    streaming_pb2_grpc.add_StreamingServiceServicer_to_server(EchoStreaming(instance_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    instance = Instance(service, instance_id, f"127.0.0.1:{port}", started_at=time.time())
    async with Registration(redis_url, instance, ttl_s=10.0, namespace=namespace):
        print(f"ready {port}", flush=True)
        await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve_and_register(*sys.argv[1:5]))
