"""An edge device's connection to itsmesh: its token, its route to the streaming service, its streams."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from itsmesh.v1 import streaming_pb2_grpc
from mesh.breaker import BreakerConfig
from mesh.client import ClientConfig, MeshClient, ServicePolicy
from mesh.edge.buffer import PendingBuffer
from mesh.edge.counters import EdgeCounters
from mesh.edge.frames import CameraStream
from mesh.edge.stream import ResultHook, ResumableStream, TokenSource
from mesh.edge.telemetry import TelemetryStream
from mesh.tokens import ServiceTokenSource

STREAMING_SERVICE: Final = "streaming"
CLIENT_VERSION: Final = "itsmesh-edge/0.1.0"
_SAFE: Final = re.compile(r"[^a-z0-9._-]")

EDGE_CLIENT_CONFIG: Final = ClientConfig(
    default_policy=ServicePolicy(
        # A device's streams reconnect with their own jittered backoff; a breaker that opens after a few
        # cut streams (and holds a half-open probe for as long as a stream lives) would only add delay.
        breaker=BreakerConfig(consecutive_failures=None, minimum_requests=2**31 - 1)
    )
)


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """What a device was given at registration (auth's RegisterDevice or RotateDeviceCredentials)."""

    device_id: str
    api_key: str = field(repr=False)
    hmac_key_id: str = ""
    hmac_secret: bytes = field(default=b"", repr=False)


class EdgeSession:
    """One device's session: a device token, a route to streaming, and its streams.

    Reach the streaming service at a fixed ``address`` (``host:port``) or through discovery in Redis
    (``redis_url``). The token comes from the client-credentials grant at ``auth_url`` with the
    credentials' API key, or from ``token`` (a string, or an async callable returning one). Buffers hold
    up to ``buffer_capacity`` unsettled items per stream, journaled under ``buffer_dir`` when given.
    """

    def __init__(
        self,
        credentials: DeviceCredentials | None = None,
        *,
        auth_url: str | None = None,
        address: str | None = None,
        redis_url: str | None = None,
        token: str | TokenSource | None = None,
        buffer_capacity: int = 10_000,
        buffer_dir: Path | None = None,
        client_version: str = CLIENT_VERSION,
    ) -> None:
        if (address is None) == (redis_url is None):
            raise ValueError("give exactly one of address (fixed) or redis_url (discovery)")
        self.credentials = credentials
        self._address = address
        self._redis_url = redis_url
        self._token = self._token_source(credentials, auth_url, token)
        self._capacity = buffer_capacity
        self._buffer_dir = buffer_dir
        self._client_version = client_version
        self._client: MeshClient | None = None
        self._streams: list[ResumableStream] = []

    @staticmethod
    def _token_source(
        credentials: DeviceCredentials | None, auth_url: str | None, token: str | TokenSource | None
    ) -> TokenSource | None:
        if isinstance(token, str):
            fixed = token

            async def constant() -> str:
                return fixed

            return constant
        if token is not None:
            return token
        if credentials is not None and auth_url is not None:
            # The client-credentials grant serves devices (API key) and services alike.
            source = ServiceTokenSource(auth_url, credentials.device_id, credentials.api_key)

            async def device_token() -> str:
                return await source()

            return device_token
        return None

    async def start(self) -> None:
        """Build the route to the streaming service (``async with`` does this)."""
        if self._client is not None:
            return
        # The token goes on each stream's call itself (no client interceptor: a grpc.aio interceptor on a
        # stream that a cut connection ends leaves its request generator to the garbage collector).
        if self._address is not None:
            self._client = MeshClient.static({STREAMING_SERVICE: [self._address]}, config=EDGE_CLIENT_CONFIG)
        else:
            assert self._redis_url is not None
            self._client = await MeshClient.from_registry(
                self._redis_url, [STREAMING_SERVICE], config=EDGE_CLIENT_CONFIG
            )

    def _stub(self) -> streaming_pb2_grpc.StreamingServiceStub:
        if self._client is None:
            raise RuntimeError("start the session first (async with EdgeSession(...))")
        return self._client.stub(STREAMING_SERVICE, streaming_pb2_grpc.StreamingServiceStub)

    def _buffer(self, kind: str, source_id: str) -> PendingBuffer:
        path = None
        if self._buffer_dir is not None:
            path = self._buffer_dir / f"{kind}-{_SAFE.sub('_', source_id)}.sqlite3"
        return PendingBuffer(self._capacity, path)

    def telemetry(
        self,
        *,
        device_id: str | None = None,
        hmac_secret: bytes | None = None,
        hmac_key_id: str | None = None,
        on_result: ResultHook | None = None,
    ) -> TelemetryStream:
        """Open (and keep open) a telemetry stream; defaults come from the session's credentials."""
        creds = self.credentials
        device = device_id or (creds.device_id if creds else "")
        secret = hmac_secret if hmac_secret is not None else (creds.hmac_secret if creds else b"")
        key_id = hmac_key_id if hmac_key_id is not None else (creds.hmac_key_id if creds else "")
        if not device or not secret:
            raise ValueError("telemetry needs a device id and its HMAC secret")
        stream = TelemetryStream(
            self._stub(),
            self._token,
            device,
            secret,
            key_id,
            self._buffer("telemetry", device),
            client_version=self._client_version,
            on_result=on_result,
        )
        self._streams.append(stream)
        stream.start()
        return stream

    def camera(self, camera_id: str | None = None, *, on_result: ResultHook | None = None) -> CameraStream:
        """Open (and keep open) the frame stream of ``camera_id`` (default: the credentials' device)."""
        camera = camera_id or (self.credentials.device_id if self.credentials else "")
        if not camera:
            raise ValueError("a camera stream needs a camera id")
        stream = CameraStream(
            self._stub(),
            self._token,
            camera,
            self._buffer("frames", camera),
            client_version=self._client_version,
            on_result=on_result,
        )
        self._streams.append(stream)
        stream.start()
        return stream

    @property
    def counters(self) -> EdgeCounters:
        """The sum of every stream's counters."""
        total = EdgeCounters()
        for stream in self._streams:
            total = total + stream.counters
        return total

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every stream's buffer is settled; False if ``timeout_s`` passed first."""
        for stream in self._streams:
            if not await stream.flush(timeout_s):
                return False
        return True

    async def close(self, timeout_s: float | None = 5.0) -> None:
        """Send what is buffered (up to ``timeout_s`` per stream), end the streams and disconnect."""
        for stream in self._streams:
            await stream.close(timeout_s)
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
