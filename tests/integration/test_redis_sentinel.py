"""Redis Sentinel: discovery and mesh calls survive a primary failover (two valkey servers + a Sentinel)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from infrastructure.embedded import require_binary
from mesh.redis_connect import RedisUrlError, connect_redis, parse_sentinel_url
from mesh.registry import open_redis
from tests.integration.private_valkey import PrivateValkey, free_port
from tests.integration.test_mesh_client import (
    SERVICE,
    Fleet,
    Stub,
    failure_summary,
    registry_client,
    run_load,
)

pytestmark = pytest.mark.integration

PRIMARY_NAME = "itsmesh"


class Sentinel:
    """A valkey-server in Sentinel mode watching one primary, quick to declare it down."""

    def __init__(self, directory: Path, primary_port: int) -> None:
        self.port = free_port()
        self._conf = directory / "sentinel.conf"
        self._conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {primary_port} 1\n"
            f"sentinel down-after-milliseconds {PRIMARY_NAME} 500\n"
            f"sentinel failover-timeout {PRIMARY_NAME} 2000\n"
        )
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            str(require_binary("redis")),
            str(self._conf),
            "--sentinel",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError, RedisError):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        raise RuntimeError("sentinel did not come up")

    async def primary_port(self) -> int:
        client = Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            _, port = await client.execute_command("SENTINEL", "get-master-addr-by-name", PRIMARY_NAME)
            return int(port)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


async def test_discovery_and_calls_follow_a_primary_failover():
    namespace = f"sentinel-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="itsmesh-sentinel-") as directory:
        root = Path(directory)
        (root / "a").mkdir()
        (root / "b").mkdir()
        primary = PrivateValkey(root / "a")
        await primary.start()
        replica = PrivateValkey(root / "b", "--replicaof", "127.0.0.1", str(primary.port))
        await replica.start()
        sentinel = Sentinel(root, primary.port)
        await sentinel.start()
        redis = open_redis(f"redis+sentinel://127.0.0.1:{sentinel.port}/{PRIMARY_NAME}/0")
        fleet = Fleet(redis, namespace)
        try:
            await fleet.start("a", "b")
            async with registry_client(redis, namespace, expect=2) as (mesh, watcher):
                stub = mesh.stub(SERVICE, Stub)
                stop = asyncio.Event()
                running = asyncio.ensure_future(run_load(stub, stop, workers=4))
                await asyncio.sleep(0.5)  # let the replica catch up with the registrations

                await primary.kill()
                deadline = time.monotonic() + 20
                while await sentinel.primary_port() != replica.port:
                    assert time.monotonic() < deadline, "sentinel did not promote the replica"
                    await asyncio.sleep(0.1)

                # Discovery works on the new primary: a new instance is seen, the old ones stay listed.
                await fleet.start("c")
                deadline = time.monotonic() + 10
                while len(watcher.endpoints(SERVICE)) != 3:
                    assert time.monotonic() < deadline, f"watcher lists {watcher.endpoints(SERVICE)}"
                    await asyncio.sleep(0.05)
                assert watcher.connected
                await asyncio.sleep(0.5)
                stop.set()
                load = await running
            assert load.failures == [], failure_summary(load)
            assert load.served_by["c"] > 0
        finally:
            await fleet.close()
            await redis.aclose()
            await sentinel.kill()
            await replica.kill()
            await primary.kill()


def test_sentinel_urls_name_their_parts():
    assert parse_sentinel_url("redis+sentinel://:s3cret@h1:26379,h2:26380/mymaster/2") == (
        [("h1", 26379), ("h2", 26380)],
        "mymaster",
        2,
        "s3cret",
    )
    with pytest.raises(RedisUrlError, match="names no primary"):
        connect_redis("redis+sentinel://h1:26379")
    with pytest.raises(RedisUrlError, match="not host:port"):
        connect_redis("redis+sentinel://h1/mymaster")
