"""The deadline of the request being handled, carried to every downstream mesh call made for it.

gRPC Python does not pass a server call's deadline on to the calls its handler makes, so a caller that
gave up long ago can keep a whole chain of services busy. Here the deadline lives in a ``contextvars``
variable as an absolute ``time.monotonic()`` value:

- ``DeadlinePropagationInterceptor`` (a server interceptor) sets it from ``context.time_remaining()``
  before each handler runs;
- the mesh client sends every call with ``effective_deadline(now, timeout, current_deadline())``, the
  earlier of the caller's own timeout and the inherited deadline;
- ``deadline_scope`` narrows it for a block of code (a background job with its own time budget).

Each RPC is handled in its own asyncio task, whose copy of the context dies with it, so one request's
deadline never leaks into another.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final

import grpc

_DEADLINE: Final[ContextVar[float | None]] = ContextVar("itsmesh_deadline", default=None)


def current_deadline() -> float | None:
    """The deadline of the request being handled, on the ``time.monotonic()`` clock; None: no deadline."""
    return _DEADLINE.get()


def time_remaining() -> float | None:
    """Seconds left until ``current_deadline()`` (0.0 once passed), or None when there is no deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


def effective_deadline(now: float, timeout: float | None, inherited: float | None) -> float | None:
    """The absolute deadline of a call: the earlier of ``now + timeout`` and the inherited deadline.

    ``timeout`` is the caller's own limit in seconds (None: none; negative counts as 0); ``inherited`` is
    an absolute deadline on the same clock as ``now`` (None: none).
    """
    own = None if timeout is None else now + max(timeout, 0.0)
    if own is None:
        return inherited
    if inherited is None:
        return own
    return min(own, inherited)


@contextlib.contextmanager
def deadline_scope(timeout: float | None) -> Iterator[float | None]:
    """Within the block, mesh calls finish within ``timeout`` seconds (or sooner if already inherited).

    Yields the resulting absolute deadline (None if there is none). ``timeout=None`` keeps the inherited
    deadline unchanged.
    """
    deadline = effective_deadline(time.monotonic(), timeout, _DEADLINE.get())
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def adopt_deadline(context: Any) -> None:
    """Make the deadline of the call ``context`` belongs to the ``current_deadline()`` of this task.

    For a server interceptor to call before the handler runs (``DeadlinePropagationInterceptor`` does).
    """
    _set_from_context(context)


def _set_from_context(context: Any) -> None:
    remaining = context.time_remaining()
    # Set unconditionally, None included: a handler run on a pool thread must not see the deadline of
    # the previous request that thread served.
    if remaining is None or not math.isfinite(remaining):
        _DEADLINE.set(None)
    else:
        _DEADLINE.set(time.monotonic() + max(remaining, 0.0))


def _wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream_handler(request: Any, context: Any) -> AsyncIterator[Any]:
            _set_from_context(context)
            async for response in behavior(request, context):
                yield response

        return stream_handler
    if inspect.iscoroutinefunction(behavior):

        async def handler(request: Any, context: Any) -> Any:
            _set_from_context(context)
            return await behavior(request, context)

        return handler

    # A plain function (such as a generated UNIMPLEMENTED placeholder) cannot await a mesh call, so it
    # needs no deadline; it is returned as it is, so the interceptors around it still recognise it.
    return behavior


class DeadlinePropagationInterceptor(grpc.aio.ServerInterceptor):
    """Server interceptor that makes each handler's deadline the default for its outgoing mesh calls."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler so that it runs with ``current_deadline()`` set from its call's deadline."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        deserializer = handler.request_deserializer
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_wrap(handler.unary_unary), deserializer, serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_wrap(handler.unary_stream), deserializer, serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_wrap(handler.stream_unary), deserializer, serializer)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap(handler.stream_stream), deserializer, serializer
            )
        return handler
