"""Who may use a console route: the caller's bearer token checked against the route's permission."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.requests import HTTPConnection

from mesh.tokens import JwtAuthenticator


def authorization_of(connection: HTTPConnection) -> str | None:
    """The caller's ``Authorization`` header, else ``Bearer <token>`` from the ``token`` query parameter.

    Browsers cannot set headers on a WebSocket or an EventSource; they use the parameter.
    """
    header = connection.headers.get("authorization")
    if header:
        return header
    token = connection.query_params.get("token")
    return f"Bearer {token}" if token else None


class RouteGuard:
    """Checks each request against ``mesh.permissions``; open (no checks) without an authenticator."""

    def __init__(self, authenticator: JwtAuthenticator | None) -> None:
        self._authenticator = authenticator

    async def check(self, connection: HTTPConnection, route: str) -> str | None:
        """Raise StatusError (401/403) unless the caller may use ``route``; returns the header to forward."""
        authorization = authorization_of(connection)
        if self._authenticator is not None:
            await self._authenticator.authorize_route(route, authorization)
        return authorization

    def require(self, route: str) -> Callable[[Request], Awaitable[str | None]]:
        """A FastAPI dependency checking ``route`` (its key in ``HTTP_ROUTE_PERMISSIONS``)."""

        async def dependency(request: Request) -> str | None:
            return await self.check(request, route)

        return dependency
