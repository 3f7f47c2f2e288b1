"""The /ws/status route through Starlette's in-process client.

The installed uvicorn has no WebSocket library (neither ``websockets`` nor ``wsproto``), so a real
loopback WebSocket cannot be opened here; the same pushes are tested over real HTTP as Server-Sent
Events in tests/integration/test_console_status.py.
"""

from __future__ import annotations

import warnings

from starlette.exceptions import StarletteDeprecationWarning

from services.console.app import create_app
from services.console.broadcast import Broadcaster

with warnings.catch_warnings():
    # This Starlette prefers the httpx2 package for its test client; the installed httpx still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


def test_every_websocket_client_gets_the_latest_vector_then_every_push():
    broadcaster = Broadcaster()
    broadcaster.publish('{"generation":1}')
    with (
        TestClient(create_app(broadcaster=broadcaster)) as client,
        client.websocket_connect("/ws/status") as one,
        client.websocket_connect("/ws/status") as two,
    ):
        assert one.receive_text() == '{"generation":1}'
        assert two.receive_text() == '{"generation":1}'
        assert client.portal is not None
        client.portal.call(broadcaster.publish, '{"generation":2}')
        assert one.receive_text() == '{"generation":2}'
        assert two.receive_text() == '{"generation":2}'


def test_the_status_route_without_an_aggregator_answers_503_with_no_cache():
    with TestClient(create_app()) as client:
        response = client.get("/api/status")
    assert response.status_code == 503
    assert response.headers["cache-control"] == "no-cache"
