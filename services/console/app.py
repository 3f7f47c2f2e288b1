"""The console's ASGI app: status vector, live push (WebSocket and Server-Sent Events), dashboard, metrics.

Authentication: every data route needs a token holding ``status:read`` (viewer and up). REST callers send
``Authorization: Bearer <token>``; browsers, which cannot set headers on a WebSocket or an EventSource,
pass the same token as the ``token`` query parameter (``/ws/status?token=…``). Without an authenticator
(``ITSMESH_CONSOLE_REQUIRE_AUTH=false``) the routes are open.

The WebSocket needs a WebSocket-capable ASGI server (uvicorn with ``websockets`` or ``wsproto``
installed); ``GET /api/status/stream`` carries the same pushes as Server-Sent Events over plain HTTP and
works everywhere, and the dashboard falls back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Final

import grpc
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from mesh.client import MeshClient
from mesh.host import VERSION
from mesh.status import StatusError
from mesh.tokens import JwtAuthenticator
from services.console.access import RouteGuard
from services.console.aggregator import StatusAggregator
from services.console.analyst import analyst_router
from services.console.broadcast import Broadcaster, Subscription
from services.console.errors import rpc_error_response, status_error_response
from services.console.operations import operations_router
from services.console.upstream import Upstreams

STATIC_DIR: Final = Path(__file__).parent / "static"
SEND_TIMEOUT_S: Final = 2.0
"""Longest one push to one client may block before that client is dropped."""
_NO_CACHE: Final = {"Cache-Control": "no-cache"}


class EventStream(Response):
    """Server-Sent Events from a subscription; ends when the client leaves, falls behind or is dropped."""

    media_type = "text/event-stream"

    def __init__(self, broadcaster: Broadcaster) -> None:
        super().__init__(headers={**_NO_CACHE, "X-Accel-Buffering": "no"})
        self._broadcaster = broadcaster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._broadcaster.subscribe() as subscription:
            # Starlette's own headers would say content-length: 0; a stream has no length.
            headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            pump = asyncio.create_task(_pump_events(subscription, send))
            left = asyncio.create_task(_wait_disconnect(receive))
            try:
                await asyncio.wait({pump, left}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, left):
                    task.cancel()
                await asyncio.gather(pump, left, return_exceptions=True)


async def _pump_events(subscription: Subscription, send: Send) -> None:
    while (message := await subscription.get()) is not None:
        body = f"event: status\ndata: {message}\n\n".encode()
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except TimeoutError:
            subscription.end()
            return


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(
    aggregator: StatusAggregator | None = None,
    authenticator: JwtAuthenticator | None = None,
    broadcaster: Broadcaster | None = None,
    upstreams: Upstreams | None = None,
) -> FastAPI:
    """The console HTTP app; without an aggregator /api/status answers 503 (pushes: ``broadcaster``).

    ``upstreams`` reach streaming, alert and analytics; without it (never entered) their routes answer 503.
    """
    app = FastAPI(
        title="itsmesh console",
        version=VERSION,
        description=(
            "Live status of every component. Send `Authorization: Bearer <token>` (viewer role or above); "
            "the WebSocket and the event stream also take the token as the `token` query parameter."
        ),
    )
    if broadcaster is None:
        broadcaster = aggregator.broadcaster if aggregator is not None else Broadcaster()
    pushes = broadcaster
    guard = RouteGuard(authenticator)
    services = upstreams if upstreams is not None else Upstreams(_not_configured)

    @app.exception_handler(StatusError)
    async def status_error_handler(request: Request, exc: StatusError) -> JSONResponse:
        return status_error_response(exc)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def rpc_error_handler(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        return rpc_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        return status_error_response(validation_error(exc))

    @app.get("/healthz", tags=["health"], summary="Liveness of the console")
    async def healthz() -> dict[str, str]:
        return {"status": "SERVING"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        # The page itself holds no data; it asks for a token and reads everything through the routes below.
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)

    @app.get(
        "/api/status",
        tags=["status"],
        summary="The status vector: components, sessions, traffic, resources, meta",
        responses={401: {"description": "no or invalid token"}, 403: {"description": "no status:read"}},
    )
    async def status(request: Request, token: str | None = None) -> JSONResponse:
        await guard.check(request, "GET /api/status")
        if aggregator is None or aggregator.latest is None:
            return JSONResponse({"error": "unavailable"}, status_code=503, headers=_NO_CACHE)
        return JSONResponse(aggregator.latest.body, headers=_NO_CACHE)

    @app.get(
        "/api/status/stream",
        tags=["status"],
        summary="The status vector pushed every second as Server-Sent Events (event `status`)",
        response_class=Response,
    )
    async def status_stream(request: Request, token: str | None = None) -> Response:
        await guard.check(request, "GET /api/status/stream")
        return EventStream(pushes)

    @app.websocket("/ws/status")
    async def status_socket(websocket: WebSocket) -> None:
        try:
            await guard.check(websocket, "GET /ws/status")
        except StatusError:
            await websocket.close(code=1008)  # policy violation: before accept, the handshake gets 403
            return
        await websocket.accept()
        async with pushes.subscribe() as subscription:
            left = asyncio.create_task(_wait_ws_close(websocket))
            try:
                while (message := await subscription.get()) is not None and not left.done():
                    async with asyncio.timeout(SEND_TIMEOUT_S):
                        await websocket.send_text(message)
            except (TimeoutError, WebSocketDisconnect, RuntimeError):
                pass
            finally:
                left.cancel()
                await asyncio.gather(left, return_exceptions=True)
                # The client may have gone already: then there is nothing left to close.
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await websocket.close(code=1013 if subscription.dropped else 1000)

    @app.get("/metrics", tags=["health"], summary="Prometheus scrape of the console itself")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(operations_router(guard, services))
    app.include_router(analyst_router(guard, services))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def _not_configured() -> MeshClient:
    raise RuntimeError("this console app was built without upstream services")


def validation_error(exc: RequestValidationError) -> StatusError:
    """A 400 naming the first bad parameter (FastAPI's own answer would be a 422 in another shape)."""
    violations = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body")]
        violations.append((".".join(location) or "request", str(error.get("msg", "invalid"))))
    field, why = violations[0] if violations else ("request", "invalid")
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {why}", field_violations=violations)


async def _wait_ws_close(websocket: WebSocket) -> Any:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
