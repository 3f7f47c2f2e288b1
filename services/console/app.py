"""The console's ASGI app: health now; status, dashboard and analyst REST come with the console capability."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from mesh.host import VERSION


def create_app() -> FastAPI:
    """The console HTTP app."""
    app = FastAPI(title="itsmesh console", version=VERSION)

    @app.get("/healthz", tags=["health"], summary="Liveness of the console")
    async def healthz() -> dict[str, str]:
        return {"status": "SERVING"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return (
            "<!doctype html><title>itsmesh console</title>"
            "<h1>itsmesh console</h1><p>Live status arrives with the console capability; "
            "see <a href='/docs'>/docs</a>.</p>"
        )

    return app
