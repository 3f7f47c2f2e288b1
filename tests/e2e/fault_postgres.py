"""A private embedded PostgreSQL that a fault run can stop and start again on the same port and data."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Final

from infrastructure.embedded import free_ports, require_binary
from infrastructure.embedded._postgres import PostgresServer

STARTUP_TIMEOUT_S: Final = 60.0
_EXEC_AS: Final = (
    "import os, sys; os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1])); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)
"""`python -c _EXEC_AS UID GID PROGRAM ARGS...`: drop to UID/GID, then become PROGRAM."""
STOP_TIMEOUT_S: Final = 30.0


class PrivatePostgres:
    """PostgreSQL as `itsmesh infra` runs it (initdb once, same command line, same account when root),
    stopped with a fast shutdown (every client connection is cut) and started again on the same port and
    data directory.

    The server is started here rather than by `EmbeddedInfra`: in a process with gRPC threads (a test
    under load) a child forked with a Python function, or a user switch, to run before exec can crash
    before it execs (gRPC's fork handlers); with neither it is spawned (vfork) safely, so as root the
    switch to the server's account happens in a small program it execs first.
    """

    def __init__(self, data_dir: Path) -> None:
        port = free_ports().postgres
        self._server = PostgresServer(require_binary("postgres"), port, data_dir, STARTUP_TIMEOUT_S)
        self._process: asyncio.subprocess.Process | None = None
        self.url = self._server.url

    async def start(self) -> None:
        """Start it (initialising the data directory the first time) and wait until it answers."""
        server = self._server
        server.log_path.parent.mkdir(parents=True, exist_ok=True)
        await server.prepare()
        argv = server.argv()
        if server.run_as is not None:  # as root: the unprivileged account, switched to by a small exec
            argv = [sys.executable, "-c", _EXEC_AS, str(server.run_as.uid), str(server.run_as.gid), *argv]
        with server.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=server.cwd,
                start_new_session=True,
            )
        not_ready: tuple[type[BaseException], ...] = (TimeoutError, *server.not_ready_errors)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}; see {server.log_path}")
            try:
                await asyncio.wait_for(server.probe(), 5.0)
                break
            except not_ready:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await server.finish()  # creates the database the first time

    async def stop(self) -> None:
        """Stop it (the data stays); a no-op when it is not running."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown; SIGTERM would wait for every client
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
