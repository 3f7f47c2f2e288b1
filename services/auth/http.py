"""REST front of the auth service (OpenAPI docs at /docs)."""

from __future__ import annotations

from fastapi import FastAPI

from mesh.host import VERSION


def create_app() -> FastAPI:
    """The auth REST API; routes are added by the auth capability."""
    app = FastAPI(title="itsmesh auth", version=VERSION, description="Users, tokens, devices and keys.")

    @app.get("/healthz", tags=["health"], summary="Liveness of the auth HTTP API")
    async def healthz() -> dict[str, str]:
        return {"status": "SERVING"}

    return app
