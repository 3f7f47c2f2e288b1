"""POSTs a notification over kept-alive connections (the webhook and Slack receivers' hot path).

aiohttp, for its C parser and lean connection pool: with 20 posts in flight httpx cost ~1.6 ms of CPU per
request here (its pool scans every connection on each request) and aiohttp ~0.1 ms, both counting the
loopback receiver's share; at hundreds of notifications a second that difference was most of the alert
service's CPU. Proxies from the environment (``http_proxy``, ``https_proxy``, ``no_proxy``) are honoured;
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import certifi

from services.alert.wakeup import stop_if_cancelled

KEEPALIVE_S = 5.0
MAX_BODY_BYTES = 1024 * 1024  # a longer answer is cut (and its connection closed)
USER_AGENT = "itsmesh-alert"


class HttpError(Exception):
    """The request failed before a complete answer; ``unreachable`` = no connection could be made."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True, slots=True)
class Answer:
    """The status and (the start of) the body of a response."""

    status: int
    body: bytes


class HttpPoster:
    """POSTs through one aiohttp session; ``http_poster`` makes one and closes it."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Answer:
        """POST ``body``; raises ``TimeoutError`` after ``timeout_s`` and ``HttpError`` on other failures."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"not an http(s) URL: {url.split('?', 1)[0]!r}")
        if any("\r" in text or "\n" in text for item in headers.items() for text in item):
            raise HttpError("a header holds a line break")
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    return await self._exchange(url, body, headers)
                except aiohttp.ServerDisconnectedError:
                    # A kept-alive connection the receiver closed while it idled: send once more on a new
                    # one (receivers see at-least-once delivery anyway: attempts are retried).
                    return await self._exchange(url, body, headers)
        except TimeoutError:
            stop_if_cancelled()
            raise
        except aiohttp.ClientSSLError as exc:
            raise HttpError(f"TLS: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise HttpError(
                f"cannot connect to {parts.netloc.rpartition('@')[2]}: {exc}", unreachable=True
            ) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise HttpError(f"bad or cut answer: {type(exc).__name__}: {exc}") from exc

    async def _exchange(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        post = self._session.post(url, data=body, headers=dict(headers), allow_redirects=False)
        async with post as response:
            # the whole answer, so a cut one is an error, but no more than MAX_BODY_BYTES of it
            answer = bytearray()
            while len(answer) < MAX_BODY_BYTES:
                chunk = await response.content.read(MAX_BODY_BYTES - len(answer))
                if not chunk:
                    break
                answer += chunk
            return Answer(response.status, bytes(answer))


@asynccontextmanager
async def http_poster(max_connections: int = 100) -> AsyncIterator[HttpPoster]:
    """A poster with at most ``max_connections`` open; its connections close at the end."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        keepalive_timeout=KEEPALIVE_S,
        ssl=ssl.create_default_context(cafile=certifi.where()),
    )
    async with aiohttp.ClientSession(
        connector=connector,
        # Proxies from the environment, looked up per request only when some are set: the lookup costs
        # four times the rest of a loopback request.
        trust_env=bool(urllib.request.getproxies_environment()),
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=None),  # each post has its own
        skip_auto_headers=("Accept-Encoding",),
    ) as session:
        yield HttpPoster(session)
