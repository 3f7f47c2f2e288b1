"""The webhook POST client against real HTTP servers on loopback: kept-alive connections, a server that
closes idle ones, chunked and close-delimited answers, timeouts, refused connections, proxies, TLS."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from services.alert.http_post import HttpError, http_poster
from tests.integration.alert_receiver import self_signed_context, webhook_receiver

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler`` per connection; yields its URL and the connection count."""
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook?x=1", connections
    finally:
        server.close()
        await server.wait_closed()


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def test_posts_reuse_one_kept_alive_connection():
    async with webhook_receiver() as hook, http_poster() as poster:
        for i in range(5):
            answer = await poster.post(hook.url("/hook?n=1"), b'{"i": %d}' % i, JSON, 5.0)
            assert answer.status == 200
            assert answer.body == b"ok"
        assert [r.json()["i"] for r in hook.received] == [0, 1, 2, 3, 4]
        assert {r.path for r in hook.received} == {"/hook?n=1"}
        assert hook.received[0].headers["content-type"] == "application/json"
        assert hook.received[0].headers["host"] == f"127.0.0.1:{hook.port}"
    async with _server(_keep_alive_ok) as (url, connections), http_poster() as poster:
        for _ in range(3):
            assert (await poster.post(url, b"{}", JSON, 5.0)).status == 200
        assert len(connections) == 1


async def _keep_alive_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()


async def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error():
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()  # then closes although the answer did not say so (an idle timeout)

    async with _server(once) as (url, connections), http_poster() as poster:
        for _ in range(3):
            await asyncio.sleep(0.05)  # let the close arrive, or not: both must work
            assert (await poster.post(url, b"{}", JSON, 5.0)).status == 200
        assert len(connections) == 3


async def test_chunked_and_close_delimited_answers_and_an_interim_100():
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _request(reader)
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nbusy \r\n4;ext=1\r\nnow!\r\n0\r\nX-Trailer: 1\r\n\r\n"
            )
            await writer.drain()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.0 202 Accepted\r\n\r\nqueued")
        await writer.drain()

    async with _server(chunked) as (url, connections), http_poster() as poster:
        for _ in range(2):
            answer = await poster.post(url, b"{}", JSON, 5.0)
            assert (answer.status, answer.body) == (503, b"busy now!")
        assert len(connections) == 1  # the chunked answer was read to its end: the connection is reused
    async with _server(until_close) as (url, connections), http_poster() as poster:
        for _ in range(2):
            answer = await poster.post(url, b"{}", JSON, 5.0)
            assert (answer.status, answer.body) == (202, b"queued")
        assert len(connections) == 2


async def test_a_silent_server_times_out_and_a_closed_port_is_unreachable():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await asyncio.sleep(10)

    async with _server(silent) as (url, _), http_poster() as poster:
        with pytest.raises(TimeoutError):
            await poster.post(url, b"{}", JSON, 0.2)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    async with http_poster() as poster:
        with pytest.raises(HttpError) as caught:
            await poster.post(f"http://127.0.0.1:{port}/hook", b"{}", JSON, 2.0)
        assert caught.value.unreachable


async def test_garbage_and_a_cut_answer_are_errors_not_hangs():
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()

    for handler in (garbage, cut):
        async with _server(handler) as (url, _), http_poster() as poster:
            with pytest.raises(HttpError) as caught:
                await poster.post(url, b"{}", JSON, 2.0)
            assert not caught.value.unreachable


async def test_line_breaks_in_a_header_are_refused():
    async with http_poster() as poster:
        with pytest.raises(HttpError):
            await poster.post("http://127.0.0.1:1/hook", b"{}", {"X-Evil": "a\r\nInjected: 1"}, 1.0)


async def test_a_url_behind_a_proxy_from_the_environment_goes_through_the_proxy(monkeypatch):
    async with webhook_receiver() as proxy:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        async with http_poster() as poster:
            answer = await poster.post("http://receiver.invalid/hook", b"{}", JSON, 5.0)
        assert answer.status == 200
        [request] = proxy.received
        assert request.path == "http://receiver.invalid/hook"  # the absolute form a proxy gets


async def test_https_to_an_untrusted_certificate_is_refused():
    received: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await _request(reader))

    server = await asyncio.start_server(record, "127.0.0.1", 0, ssl=self_signed_context())
    port = server.sockets[0].getsockname()[1]
    try:
        async with http_poster() as poster:
            with pytest.raises(HttpError) as caught:
                await poster.post(f"https://127.0.0.1:{port}/hook", b"{}", JSON, 5.0)
        assert "TLS" in str(caught.value)
        assert received == []
    finally:
        server.close()
        await server.wait_closed()
