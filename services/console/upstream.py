"""The console's calls to streaming, alert and analytics through the mesh.

One ``MeshClient`` for the process (discovery, balancing, breakers, retries of idempotent reads). Calls
made for a browser or REST caller carry that caller's ``Authorization`` header, so each service decides
with the caller's own permissions; the console's own calls (counts for the status vector) carry the
console's service token, which the client's interceptor adds to every call without credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import grpc

from itsmesh.v1 import alert_pb2_grpc, analytics_pb2_grpc, streaming_pb2_grpc
from mesh.client import MeshClient
from mesh.registry import DEFAULT_NAMESPACE
from mesh.status import StatusError

SERVICES: Final = ("streaming", "alert", "analytics")
CALL_TIMEOUT_S: Final = 5.0
"""Deadline of one forwarded call; a REST caller gets 504 rather than waiting on a stuck service."""

Metadata = tuple[tuple[str, str], ...]


def forwarded(authorization: str | None) -> Metadata:
    """Call metadata carrying the caller's ``Authorization`` header; empty (service token) without one."""
    return (("authorization", authorization),) if authorization else ()


class Upstreams:
    """Stubs of the services the console reads; ``async with`` opens the mesh client and closes it."""

    def __init__(self, open_client: Callable[[], Awaitable[MeshClient]]) -> None:
        self._open = open_client
        self._client: MeshClient | None = None

    @classmethod
    def from_registry(
        cls,
        redis_url: str,
        *,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        namespace: str = DEFAULT_NAMESPACE,
    ) -> Upstreams:
        """Services found in discovery; ``interceptors`` usually send the console's service token."""

        async def open_client() -> MeshClient:
            return await MeshClient.from_registry(
                redis_url, SERVICES, namespace=namespace, interceptors=interceptors
            )

        return cls(open_client)

    async def __aenter__(self) -> Upstreams:
        self._client = await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _mesh(self) -> MeshClient:
        if self._client is None:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, "the console is starting", retry_delay_s=1.0)
        return self._client

    @property
    def streaming(self) -> streaming_pb2_grpc.StreamingServiceAsyncStub:
        """StreamingService through the mesh."""
        return self._mesh().stub("streaming", streaming_pb2_grpc.StreamingServiceStub)

    @property
    def alert(self) -> alert_pb2_grpc.AlertServiceAsyncStub:
        """AlertService through the mesh."""
        return self._mesh().stub("alert", alert_pb2_grpc.AlertServiceStub)

    @property
    def analytics(self) -> analytics_pb2_grpc.AnalyticsServiceAsyncStub:
        """AnalyticsService through the mesh."""
        return self._mesh().stub("analytics", analytics_pb2_grpc.AnalyticsServiceStub)
