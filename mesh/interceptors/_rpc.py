"""What the interceptors share: an RPC's names, one way to wrap a handler, and how a call ended.

Server side, every interceptor is a ``WrappingServerInterceptor``: it supplies one coroutine,
``around(info, context, proceed)``, and this module turns it into a wrapped method handler for all four
arities. ``proceed()`` runs the rest of the chain and the servicer to completion — for a streaming
response that means until the last message is written — so a stream counts, is traced and holds its
concurrency slot for as long as it is open. Wrapped handlers are built once per method and cached, so an
RPC costs each interceptor a few awaits and no handler construction.

Client side, an ``ObservingClientInterceptor`` is called with ``observe(info, metadata)`` as a call starts
(it may add to the outgoing metadata) and the returned ``finish(code)`` exactly once when it ends, whether
the caller awaits it, iterates it, uses read/write, or cancels it. On a plain grpc.aio channel it is an
interceptor; ``MeshClient`` takes the observers off the front of its chain (``take_observers``) and calls
them around each attempt itself, saving the interceptor hop.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias, TypeVar

import grpc

TRequest = TypeVar("TRequest")
TResponse = TypeVar("TResponse")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
Proceed: TypeAlias = Callable[[], Awaitable[Any]]
Finish: TypeAlias = Callable[[grpc.StatusCode], None]

_INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class RpcInfo:
    """The names of one gRPC method, parsed once per method."""

    path: str
    """As gRPC puts it on the wire: ``/itsmesh.v1.StreamingService/GetCamera``."""
    service: str
    """Full proto service name: ``itsmesh.v1.StreamingService``."""
    method: str
    """Method name: ``GetCamera``."""
    name: str
    """``itsmesh.v1.StreamingService/GetCamera``: span name and ``method`` label of the metrics."""


@lru_cache(maxsize=4096)
def _parse(path: str) -> RpcInfo:
    service, _, method = path.lstrip("/").rpartition("/")
    return RpcInfo(
        path=path, service=service, method=method, name=f"{service}/{method}" if service else method
    )


def rpc_info(path: str | bytes) -> RpcInfo:
    """Names of the method at ``path`` (the client side hands interceptors bytes, the server side str)."""
    return _parse(path.decode() if isinstance(path, bytes) else path)


def is_infrastructure_method(path: str) -> bool:
    """True for the health and reflection services, which answer without credentials or a slot."""
    return path.startswith(_INFRASTRUCTURE_PREFIXES)


def final_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ends with, given what its handler raised (``None`` if it returned)."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        # A handler that returns normally ends with the code it set, else OK. That includes a streaming
        # handler whose peer cancelled: gRPC aio shows it a plain end of the request stream and offers no
        # public way to tell the two apart afterwards. A cancel that lands while it runs raises (below).
        code: grpc.StatusCode | None = context.code()
        return grpc.StatusCode.OK if code is None else code
    if isinstance(error, asyncio.CancelledError):
        return _cancelled_code(context)
    return grpc.StatusCode.UNKNOWN


def _cancelled_code(context: Context) -> grpc.StatusCode:
    remaining: float | None = context.time_remaining()
    expired = remaining is not None and remaining <= 0
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def client_code(error: BaseException) -> grpc.StatusCode:
    """The status a client-side failure stands for."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code()
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def metadata_values(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> list[str]:
    """Every text value of ``key`` in gRPC metadata (keys are lower-case on the wire)."""
    return [value for k, value in metadata or () if k == key and isinstance(value, str)]


# --- server side ------------------------------------------------------------------------------------------


async def _respond(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def _stream(result: Any, context: Context) -> None:
    """Drive a response-streaming servicer to its end, whichever of gRPC's styles it uses."""
    if inspect.isawaitable(result):  # reader/writer style: the servicer writes through the context
        await result
    elif inspect.isasyncgen(result):
        async with aclosing(result) as messages:  # closed at once on cancellation, not at GC
            async for message in messages:
                await context.write(message)
    elif isinstance(result, AsyncIterable):
        async for message in result:
            await context.write(message)
    elif result is not None:
        for message in result:
            await context.write(message)


Around: TypeAlias = Callable[[RpcInfo, Context, Proceed], Awaitable[Any]]


def _behaviour(handler: Handler) -> Any:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def _is_generated_placeholder(behaviour: Any) -> bool:
    """A method a servicer has not implemented yet: the generated base answers UNIMPLEMENTED at once."""
    function = getattr(behaviour, "__func__", behaviour)
    return str(getattr(function, "__module__", "")).endswith("_pb2_grpc")


RequestCheck: TypeAlias = Callable[[Any, Context], Awaitable[None]]
"""Looks at a (unary) request inside the chain, after auth, and aborts the RPC if it cannot be handled."""


async def _checked(check: RequestCheck, request: Any, context: Context, result: Callable[[], Any]) -> Any:
    await check(request, context)
    return await result()


def wrap_handler(
    handler: Handler, info: RpcInfo, around: Around, check: RequestCheck | None = None
) -> Handler:
    """A method handler that runs ``around`` the whole of ``handler``, streams included.

    Only asynchronous handlers (coroutine or async-generator functions, as grpc.aio servicers have) can be
    wrapped: a synchronous one would block the event loop, and letting it pass unwrapped would skip auth.
    The one exception is a generated placeholder, which only sets UNIMPLEMENTED and raises.
    """
    behaviour = _behaviour(handler)
    if not (
        inspect.iscoroutinefunction(behaviour)
        or inspect.isasyncgenfunction(behaviour)
        or _is_generated_placeholder(behaviour)
    ):
        raise TypeError(f"{info.path}: mesh interceptors need an async handler, got {behaviour!r}")
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        inner_ss: Any = handler.stream_stream

        async def stream_stream(requests: Any, context: Context) -> None:
            await around(info, context, lambda: _stream(inner_ss(requests, context), context))

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
    if handler.response_streaming:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> None:
            def proceed() -> Awaitable[None]:
                return _stream(inner_us(request, context), context)

            if check is None:
                await around(info, context, proceed)
            else:
                await around(info, context, lambda: _checked(check, request, context, proceed))

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
    if handler.request_streaming:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Context) -> Any:
            return await around(info, context, lambda: _respond(inner_su(requests, context)))

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
    inner_uu: Any = handler.unary_unary

    async def unary_unary(request: Any, context: Context) -> Any:
        def proceed() -> Awaitable[Any]:
            return _respond(inner_uu(request, context))

        if check is None:
            return await around(info, context, proceed)
        return await around(info, context, lambda: _checked(check, request, context, proceed))

    return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)


class WrappingServerInterceptor(grpc.aio.ServerInterceptor, abc.ABC):
    """A server interceptor defined by one coroutine that runs around every RPC it applies to."""

    def __init__(self, request_check: RequestCheck | None = None) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        self._request_check = request_check

    def applies_to(self, path: str) -> bool:
        """Whether RPCs to ``path`` go through ``around``; the others pass untouched."""
        return True

    @abc.abstractmethod
    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        """Run ``proceed()`` (the rest of the RPC) and return its result, doing this interceptor's job."""

    def around_for(self, path: str) -> Around:
        """What runs around RPCs to ``path`` (one that ``applies_to``): ``around`` unless overridden."""
        return self.around

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[TRequest, TResponse] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[TRequest, TResponse] | None:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or not self.applies_to(path):
            return handler
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        check = None if is_infrastructure_method(path) else self._request_check
        wrapped = wrap_handler(handler, rpc_info(path), self.around_for(path), check)
        self._wrapped[path] = (handler, wrapped)
        return wrapped


class WrappingChain(WrappingServerInterceptor):
    """Several wrapping interceptors run as one grpc.aio hop, ``links`` outermost first.

    grpc.aio runs every server interceptor's ``intercept_service`` for every RPC, and each wrapped handler
    adds a layer of its own; here an RPC costs one of each, and each link's ``around`` still runs only for
    the paths that link ``applies_to``, in the same order and with the same outcome as separate hops.
    """

    def __init__(
        self, links: Sequence[WrappingServerInterceptor], request_check: RequestCheck | None = None
    ) -> None:
        super().__init__(request_check)
        if not links:
            raise ValueError("a chain needs at least one interceptor")
        self._links = tuple(links)

    @property
    def links(self) -> tuple[WrappingServerInterceptor, ...]:
        """The interceptors, outermost first."""
        return self._links

    def applies_to(self, path: str) -> bool:
        return any(link.applies_to(path) for link in self._links)

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        return await self.around_for(info.path)(info, context, proceed)

    def around_for(self, path: str) -> Around:
        return _nest([link.around_for(path) for link in self._links if link.applies_to(path)])


def _nest(arounds: Sequence[Around]) -> Around:
    """One ``around`` that runs ``arounds`` one inside the other, the first outermost.

    Plain functions handing on the outer link's coroutine, so nesting adds no coroutine frame per RPC.
    """
    outer = arounds[0]
    if len(arounds) == 1:
        return outer
    inner = _nest(arounds[1:])

    def around(info: RpcInfo, context: Context, proceed: Proceed) -> Awaitable[Any]:
        return outer(info, context, lambda: inner(info, context, proceed))

    return around


# --- client side ------------------------------------------------------------------------------------------


def with_metadata(
    details: grpc.aio.ClientCallDetails, metadata: grpc.aio.Metadata
) -> grpc.aio.ClientCallDetails:
    """``details`` with its metadata replaced."""
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def copy_metadata(details: grpc.aio.ClientCallDetails) -> grpc.aio.Metadata:
    """A copy of the call's outgoing metadata that an interceptor may add to."""
    return grpc.aio.Metadata(*details.metadata) if details.metadata is not None else grpc.aio.Metadata()


class ObservingClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
    abc.ABC,
):
    """A client interceptor that sees every call start (and may change its details) and end with a code.

    A unary call is awaited in the interceptor, which the caller does anyway. For the other arities the
    call goes back to the caller at once — the caller may be about to ``write`` to it — and a small task
    owned by this interceptor waits for its status.
    """

    def __init__(self) -> None:
        self._watchers: set[asyncio.Task[None]] = set()

    @abc.abstractmethod
    def observe(self, info: RpcInfo, metadata: grpc.aio.Metadata) -> Finish:
        """Called as a call to ``info`` starts, with the outgoing metadata, which it may add to; returns
        the function to call with the call's final code."""

    def start(self, details: grpc.aio.ClientCallDetails) -> tuple[grpc.aio.ClientCallDetails, Finish]:
        """Called as a call starts: the details to send on, and the function to call with its final code."""
        metadata = copy_metadata(details)
        finish = self.observe(rpc_info(details.method), metadata)
        return with_metadata(details, metadata), finish

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, TRequest], Awaitable[grpc.aio.UnaryUnaryCall[TRequest, TResponse]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: TRequest,
    ) -> TResponse | grpc.aio.UnaryUnaryCall[TRequest, TResponse]:
        details, finish = self.start(client_call_details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            finish(client_code(exc))
            raise
        try:
            code = await call.code()
        except asyncio.CancelledError:
            call.cancel()  # the caller gave up while we were waiting for the status
            finish(grpc.StatusCode.CANCELLED)
            raise
        finish(code)
        return call

    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, TRequest], Awaitable[grpc.aio.UnaryStreamCall[TRequest, TResponse]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: TRequest,
    ) -> AsyncIterator[TResponse] | grpc.aio.UnaryStreamCall[TRequest, TResponse]:
        details, finish = self.start(client_call_details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            finish(client_code(exc))
            raise
        self._watch(call, finish)
        return call

    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[TRequest] | Iterable[TRequest]],
            Awaitable[grpc.aio.StreamUnaryCall[TRequest, TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[TRequest] | Iterable[TRequest],
    ) -> TResponse | grpc.aio.StreamUnaryCall[TRequest, TResponse]:
        details, finish = self.start(client_call_details)
        try:
            call = await continuation(details, request_iterator)
        except BaseException as exc:
            finish(client_code(exc))
            raise
        self._watch(call, finish)
        return call

    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[TRequest] | Iterable[TRequest]],
            Awaitable[grpc.aio.StreamStreamCall[TRequest, TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[TRequest] | Iterable[TRequest],
    ) -> AsyncIterator[TResponse] | grpc.aio.StreamStreamCall[TRequest, TResponse]:
        details, finish = self.start(client_call_details)
        try:
            call = await continuation(details, request_iterator)
        except BaseException as exc:
            finish(client_code(exc))
            raise
        self._watch(call, finish)
        return call

    def _watch(self, call: grpc.aio.Call, finish: Finish) -> None:
        async def wait_for_status() -> None:
            try:
                code = await call.code()
            except asyncio.CancelledError:  # only when the loop itself shuts down
                finish(grpc.StatusCode.CANCELLED)
                raise
            finish(code)

        task = asyncio.get_running_loop().create_task(wait_for_status())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)


# grpc.aio's Channel files each interceptor object under the first arity it implements only (an if/elif
# chain; grpc/grpc#31442), so a four-arity interceptor would silently skip every streaming call. Channels
# therefore get one single-arity adapter per arity, in the chain's order.


class ObserverChain(ObservingClientInterceptor):
    """Several observers run as one: each grpc.aio interceptor hop costs a call object and a task of its
    own, so tracing and metrics share one hop (and ``MeshClient`` runs the chain in its own attempt path,
    with no hop at all). Starts run in order, finishes in reverse."""

    def __init__(self, observers: Sequence[ObservingClientInterceptor]) -> None:
        super().__init__()
        self._observers = tuple(observers)

    @property
    def observers(self) -> tuple[ObservingClientInterceptor, ...]:
        """The observers, outermost first."""
        return self._observers

    def observe(self, info: RpcInfo, metadata: grpc.aio.Metadata) -> Finish:
        if len(self._observers) == 2:  # tracing + metrics, the usual chain: no list, no loop
            first, second = self._observers
            finish_first = first.observe(info, metadata)
            finish_second = second.observe(info, metadata)

            def finish_pair(code: grpc.StatusCode) -> None:
                finish_second(code)
                finish_first(code)

            return finish_pair
        finishes = [observer.observe(info, metadata) for observer in self._observers]
        finishes.reverse()

        def finish_all(code: grpc.StatusCode) -> None:
            for finish in finishes:
                finish(code)

        return finish_all


def take_observers(
    interceptors: Iterable[grpc.aio.ClientInterceptor],
) -> tuple[ObservingClientInterceptor | None, list[grpc.aio.ClientInterceptor]]:
    """Split a client chain into its leading observers, merged into one, and the rest, kept as it is.

    A caller that runs the observers itself around each call (``MeshClient``) saves their grpc.aio hop.
    Only observers in front of every other interceptor are taken, so the order of the chain holds: an
    observer behind, say, a token interceptor stays where it is. ``split_by_arity`` adapters are looked
    through, and an observer filed under several arities is taken once.
    """
    taken: list[ObservingClientInterceptor] = []
    rest: list[grpc.aio.ClientInterceptor] = []
    for interceptor in interceptors:
        inner = getattr(interceptor, "inner", None) if isinstance(interceptor, _ArityAdapter) else interceptor
        if not rest and isinstance(inner, ObservingClientInterceptor):
            if not any(inner is seen for seen in taken):
                taken.append(inner)
        else:
            rest.append(interceptor)
    if not taken:
        return None, rest
    return (taken[0] if len(taken) == 1 else ObserverChain(taken)), rest


def contains_observer(interceptors: Iterable[grpc.aio.ClientInterceptor]) -> bool:
    """Whether any interceptor of the chain (``split_by_arity`` adapters looked through) is an observer."""
    return any(
        isinstance(
            getattr(i, "inner", None) if isinstance(i, _ArityAdapter) else i, ObservingClientInterceptor
        )
        for i in interceptors
    )


class _ArityAdapter:
    """One arity of a four-arity interceptor, which subclasses keep as ``inner``."""


class _UnaryUnaryAdapter(_ArityAdapter, grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, inner: grpc.aio.UnaryUnaryClientInterceptor) -> None:
        self.inner = inner

    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, TRequest], Awaitable[grpc.aio.UnaryUnaryCall[TRequest, TResponse]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: TRequest,
    ) -> TResponse | grpc.aio.UnaryUnaryCall[TRequest, TResponse]:
        return await self.inner.intercept_unary_unary(continuation, client_call_details, request)


class _UnaryStreamAdapter(_ArityAdapter, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, inner: grpc.aio.UnaryStreamClientInterceptor) -> None:
        self.inner = inner

    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, TRequest], Awaitable[grpc.aio.UnaryStreamCall[TRequest, TResponse]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: TRequest,
    ) -> AsyncIterator[TResponse] | grpc.aio.UnaryStreamCall[TRequest, TResponse]:
        return await self.inner.intercept_unary_stream(continuation, client_call_details, request)


class _StreamUnaryAdapter(_ArityAdapter, grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, inner: grpc.aio.StreamUnaryClientInterceptor) -> None:
        self.inner = inner

    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[TRequest] | Iterable[TRequest]],
            Awaitable[grpc.aio.StreamUnaryCall[TRequest, TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[TRequest] | Iterable[TRequest],
    ) -> TResponse | grpc.aio.StreamUnaryCall[TRequest, TResponse]:
        return await self.inner.intercept_stream_unary(continuation, client_call_details, request_iterator)


class _StreamStreamAdapter(_ArityAdapter, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, inner: grpc.aio.StreamStreamClientInterceptor) -> None:
        self.inner = inner

    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[TRequest] | Iterable[TRequest]],
            Awaitable[grpc.aio.StreamStreamCall[TRequest, TResponse]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[TRequest] | Iterable[TRequest],
    ) -> AsyncIterator[TResponse] | grpc.aio.StreamStreamCall[TRequest, TResponse]:
        return await self.inner.intercept_stream_stream(continuation, client_call_details, request_iterator)


def split_by_arity(interceptors: Iterable[grpc.aio.ClientInterceptor]) -> list[grpc.aio.ClientInterceptor]:
    """The chain as a grpc.aio channel can take it: one object per arity each interceptor handles.

    Order is kept within every arity; an interceptor of a single arity is passed through as it is.
    """
    chain: list[grpc.aio.ClientInterceptor] = []
    for interceptor in interceptors:
        adapters: list[grpc.aio.ClientInterceptor] = []
        if isinstance(interceptor, grpc.aio.UnaryUnaryClientInterceptor):
            adapters.append(_UnaryUnaryAdapter(interceptor))
        if isinstance(interceptor, grpc.aio.UnaryStreamClientInterceptor):
            adapters.append(_UnaryStreamAdapter(interceptor))
        if isinstance(interceptor, grpc.aio.StreamUnaryClientInterceptor):
            adapters.append(_StreamUnaryAdapter(interceptor))
        if isinstance(interceptor, grpc.aio.StreamStreamClientInterceptor):
            adapters.append(_StreamStreamAdapter(interceptor))
        chain.extend(adapters if len(adapters) > 1 else [interceptor])
    return chain
