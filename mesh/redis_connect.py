"""One way to open Redis from a URL, including Sentinel-managed primaries that fail over.

``redis://`` and ``rediss://`` URLs go to ``Redis.from_url``. A Sentinel deployment is named as
``redis+sentinel://[:password@]host1:26379,host2:26379/<primary-name>[/<db>]``: every command asks the
Sentinels for the current primary when it (re)connects, so discovery, rate limits and revocations follow
a failover without a restart.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME: Final = "redis+sentinel"


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message says which part is wrong."""


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinel addresses, primary name, db, password) of a ``redis+sentinel://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisUrlError(f"not a {SENTINEL_SCHEME}:// URL")
    credentials, _, hosts = parts.netloc.rpartition("@")
    password = unquote(credentials.partition(":")[2]) if credentials else None
    addresses: list[tuple[str, int]] = []
    for item in filter(None, hosts.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"sentinel address {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise RedisUrlError("no sentinel address in the URL")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise RedisUrlError("the URL names no primary (redis+sentinel://host:port/<primary-name>/<db>)")
    if len(path) > 1 and not path[1].isdigit():
        raise RedisUrlError(f"database {path[1]!r} is not a number")
    return addresses, path[0], int(path[1]) if len(path) > 1 else 0, password or None


def connect_redis(url: str, **options: Any) -> Redis:
    """A client for ``url`` (plain or Sentinel); ``options`` are connection options such as timeouts."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return Redis.from_url(url, **options)
    addresses, primary, db, password = parse_sentinel_url(url)
    sentinel_options = {
        key: options[key] for key in ("socket_connect_timeout", "socket_timeout") if key in options
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves __init__ unannotated
        addresses, sentinel_kwargs=sentinel_options, password=password, db=db, **options
    )
    client: Redis = sentinel.master_for(primary)
    return client
