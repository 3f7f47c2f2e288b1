"""A throwaway valkey-server on a free loopback port, without persistence, that a test can kill."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from redis.exceptions import RedisError

from infrastructure.embedded import require_binary
from mesh.registry import open_redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateValkey:
    """A valkey-server of a test's own, to stop and start again while clients run."""

    def __init__(self, directory: Path, *extra_args: str) -> None:
        self.port = free_port()
        self._extra_args = extra_args
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            str(require_binary("redis")),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._directory)),
            *("--save", "", "--appendonly", "no", "--logfile", ""),
            *self._extra_args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        probe = open_redis(self.url)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError, RedisError):
                    if await probe.ping():
                        return
                await asyncio.sleep(0.05)
        finally:
            await probe.aclose()
        raise RuntimeError("private valkey-server did not come up")

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None
