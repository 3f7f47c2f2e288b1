"""One grpc.aio channel per endpoint address: opened on first use, closed when the endpoint goes away.

The mesh balances across endpoints itself, so each channel points at exactly one ``host:port``. Retiring
an endpoint (it left discovery, or failed) closes its channel once the calls and streams running on it
have ended, or after a grace period (a graceful stop deregisters first, then drains: its open streams
must be able to finish). Multicallables are cached per channel and method, so a call costs no more than
on a plain channel.

The pool counts running calls itself (``call_started`` / ``call_ended``) rather than relying on
``grpc.aio.Channel.close(grace)``: a channel whose graceful close was interrupted counts as closed to
grpc and cannot be closed for real afterwards, which would leave its calls running after the client
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final

import grpc

from mesh.tls import TlsSettings, open_channel

log = logging.getLogger(__name__)

ChannelOptions = Sequence[tuple[str, Any]]

DEFAULT_CHANNEL_OPTIONS: Final[ChannelOptions] = (
    # After a connection failure a channel refuses calls until its reconnect backoff ends; cap it low so
    # an endpoint that comes back (static mode, half-open probes) is reachable again within seconds.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
"""Options every endpoint channel gets unless the client is configured with others."""

# Generated stubs register their methods with the channel, so gRPC core prepares each method once rather
# than per call. The keyword is private to grpc (missing from the type stubs), hence passed by unpacking.
_REGISTERED: Final[dict[str, Any]] = {"_registered_method": True}

DEFAULT_CLOSE_GRACE_S: Final = 30.0
"""How long a retired endpoint's channel lets its running calls and streams finish before cancelling."""


class EndpointChannel:
    """The channel to one endpoint, its cached multicallables, and how many calls run on it."""

    __slots__ = ("_callables", "_idle", "active", "address", "channel")

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.active = 0
        self._callables: dict[tuple[str, str], Any] = {}
        self._idle: asyncio.Event | None = None

    def unary_unary(
        self, method: str, serializer: Any, deserializer: Any
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """The cached unary-unary multicallable of ``method``."""
        key = ("uu", method)
        found = self._callables.get(key)
        if found is None:
            found = self._callables[key] = self.channel.unary_unary(
                method, serializer, deserializer, **_REGISTERED
            )
        return found

    def unary_stream(
        self, method: str, serializer: Any, deserializer: Any
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        """The cached unary-stream multicallable of ``method``."""
        key = ("us", method)
        found = self._callables.get(key)
        if found is None:
            found = self._callables[key] = self.channel.unary_stream(
                method, serializer, deserializer, **_REGISTERED
            )
        return found

    def stream_unary(
        self, method: str, serializer: Any, deserializer: Any
    ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]:
        """The cached stream-unary multicallable of ``method``."""
        key = ("su", method)
        found = self._callables.get(key)
        if found is None:
            found = self._callables[key] = self.channel.stream_unary(
                method, serializer, deserializer, **_REGISTERED
            )
        return found

    def stream_stream(
        self, method: str, serializer: Any, deserializer: Any
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        """The cached stream-stream multicallable of ``method``."""
        key = ("ss", method)
        found = self._callables.get(key)
        if found is None:
            found = self._callables[key] = self.channel.stream_stream(
                method, serializer, deserializer, **_REGISTERED
            )
        return found

    def call_started(self) -> None:
        """Count a call (or stream) as running on this channel."""
        self.active += 1

    def call_ended(self) -> None:
        """Count a call started with ``call_started`` as ended."""
        self.active -= 1
        if self.active <= 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call runs on this channel."""
        if self.active <= 0:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()


class ChannelPool:
    """The open channels of one service's endpoints, keyed by ``host:port``."""

    def __init__(
        self,
        *,
        options: ChannelOptions = DEFAULT_CHANNEL_OPTIONS,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        close_grace_s: float = DEFAULT_CLOSE_GRACE_S,
        tls: TlsSettings | None = None,
    ) -> None:
        if not close_grace_s >= 0.0:
            raise ValueError("close_grace_s must be non-negative")
        self._tls = tls
        self._options = list(options)
        self._interceptors = list(interceptors)
        self._grace = close_grace_s
        self._open: dict[str, EndpointChannel] = {}
        self._retiring: dict[asyncio.Task[None], EndpointChannel] = {}
        self._closed = False

    def __contains__(self, address: object) -> bool:
        return address in self._open

    @property
    def addresses(self) -> list[str]:
        """Addresses with an open (not retiring) channel, sorted."""
        return sorted(self._open)

    def get(self, address: str) -> EndpointChannel:
        """The channel to ``address``, opened now if there is none; RuntimeError once the pool is closed."""
        endpoint = self._open.get(address)
        if endpoint is None:
            if self._closed:
                raise RuntimeError("channel pool is closed")
            channel = open_channel(address, self._tls, self._options, self._interceptors or None)
            endpoint = self._open[address] = EndpointChannel(address, channel)
        return endpoint

    def existing(self, address: str) -> EndpointChannel | None:
        """The open channel to ``address``, or None; never opens one."""
        return self._open.get(address)

    def retire(self, address: str) -> None:
        """Stop using ``address``: its channel closes in the background once its calls end (or the grace)."""
        endpoint = self._open.pop(address, None)
        if endpoint is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._close_when_idle(endpoint), name=f"mesh-retire-{address}"
        )
        self._retiring[task] = endpoint
        task.add_done_callback(self._forget)

    async def close(self, grace: float | None = None) -> None:
        """Close every channel, retiring ones included; ``grace`` lets running calls finish first."""
        self._closed = True
        retiring = list(self._retiring.items())
        self._retiring.clear()
        for task, _ in retiring:
            task.cancel()
        for task, _ in retiring:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        endpoints = [*self._open.values(), *(endpoint for _, endpoint in retiring)]
        self._open.clear()
        if endpoints:
            await asyncio.gather(*(endpoint.channel.close(grace) for endpoint in endpoints))

    async def _close_when_idle(self, endpoint: EndpointChannel) -> None:
        # If the pool closes meanwhile, this is cancelled while waiting and the pool closes the channel.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._grace):
                await endpoint.wait_idle()
        await endpoint.channel.close(None)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing a retired channel failed", extra={"error": repr(task.exception())})
