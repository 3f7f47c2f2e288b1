"""EmbeddedInfra: start the missing servers together, wait until each answers, stop them in order."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import binaries
from ._errors import InfraError
from ._kafka import KafkaServer
from ._ports import LOOPBACK, InfraPorts, ensure_port_free
from ._postgres import PostgresServer
from ._process import ChildProcess, spawn
from ._redis import RedisServer
from ._server import EmbeddedServer

_log = logging.getLogger(__name__)

#: Start-up order of the components; they stop in the reverse order.
COMPONENTS = ("postgres", "redis", "kafka")
_SERVER_TYPES: Mapping[str, type[EmbeddedServer]] = {
    "postgres": PostgresServer,
    "redis": RedisServer,
    "kafka": KafkaServer,
}
_PROBE_TIMEOUT = 5.0
_PROBE_INTERVAL = 0.1


@dataclass(frozen=True, slots=True)
class InfraUrls:
    """Where the three servers are, whether we started them or they came from the environment."""

    database_url: str
    redis_url: str
    kafka_bootstrap_servers: str
    #: Components this launcher started, in start-up order; the others came from environment URLs.
    started: tuple[str, ...]


def _ignore_status(component: str, message: str) -> None:
    _log.debug("%s: %s", component, message)


class EmbeddedInfra:
    """Async context manager that provides PostgreSQL, a Redis-compatible server and a Kafka broker.

    A component whose URL variable (DATABASE_URL, REDIS_URL, KAFKA_BOOTSTRAP_SERVERS) is set in env is
    used as given and not started. The others run as child processes on loopback with their data and
    logs under data_dir; entering waits until each answers a real request, leaving stops them.
    """

    def __init__(
        self,
        data_dir: Path,
        ports: InfraPorts = InfraPorts(),  # noqa: B008 - frozen dataclass, safe as a default
        env: Mapping[str, str] | None = None,
        on_status: Callable[[str, str], None] | None = None,
        *,
        startup_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        self._data_dir = Path(data_dir).absolute()
        self._ports = ports
        self._env = env
        self._on_status = on_status or _ignore_status
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        self._children: dict[str, ChildProcess] = {}
        self._entered = False

    def pids(self) -> dict[str, int]:
        """Process ids of the servers this launcher started and that are still running."""
        return {name: child.pid for name, child in self._children.items() if child.exit_code is None}

    async def __aenter__(self) -> InfraUrls:
        if self._entered:
            raise RuntimeError("EmbeddedInfra can be entered only once")
        self._entered = True
        env = os.environ if self._env is None else self._env
        urls: dict[str, str] = {}
        servers: list[EmbeddedServer] = []
        for name in COMPONENTS:
            url_var = binaries.URL_ENV_VARS[name]
            given = env.get(url_var, "").strip()
            if given:
                urls[name] = given
                self._on_status(name, f"using {url_var} from the environment (not started)")
            else:
                servers.append(self._server(name))
        # Everything that can be checked up front fails before anything is started.
        for server in servers:
            ensure_port_free(server.name, server.port, binaries.URL_ENV_VARS[server.name])
        try:
            await self._start_all(servers)
        except BaseException:
            await self._stop_all()
            raise
        urls.update({server.name: server.url for server in servers})
        return InfraUrls(
            database_url=urls["postgres"],
            redis_url=urls["redis"],
            kafka_bootstrap_servers=urls["kafka"],
            started=tuple(server.name for server in servers),
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop_all()

    def _server(self, name: str) -> EmbeddedServer:
        binary = binaries.require_binary(name)
        return _SERVER_TYPES[name](binary, getattr(self._ports, name), self._data_dir, self._startup_timeout)

    async def _start_all(self, servers: list[EmbeddedServer]) -> None:
        if not servers:
            return
        tasks = [asyncio.create_task(self._start(server), name=f"start-{server.name}") for server in servers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failures = [exc for task in done if not task.cancelled() and (exc := task.exception()) is not None]
        if failures:
            # Prefer the operator-facing error over a cancellation it caused elsewhere.
            raise next((exc for exc in failures if isinstance(exc, InfraError)), failures[0])

    async def _start(self, server: EmbeddedServer) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            server.log_path.parent.mkdir(parents=True, exist_ok=True)
            await server.prepare()
        except OSError as exc:
            raise InfraError(
                server.name,
                f"cannot prepare {exc.filename or self._data_dir} ({exc.strerror or exc}) — "
                "fix its permissions or choose another data directory",
            ) from exc
        child = spawn(
            server.name,
            server.argv(),
            server.log_path,
            cwd=server.cwd,
            stop_signal=server.stop_signal,
            run_as=server.run_as,
        )
        self._children[server.name] = child
        self._on_status(server.name, f"starting on {LOOPBACK}:{server.port} (pid {child.pid})")
        await self._wait_until_ready(server, child)
        await server.finish()
        self._on_status(server.name, f"ready at {server.url} in {loop.time() - began:.1f} s")

    async def _wait_until_ready(self, server: EmbeddedServer, child: ChildProcess) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._startup_timeout
        not_ready: tuple[type[BaseException], ...] = (TimeoutError, *server.not_ready_errors)
        while True:
            code = child.exit_code
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise InfraError(
                    server.name,
                    f"{how} while starting — last log line: {child.last_log_line()!r} (see {child.log_path})",
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise InfraError(
                    server.name,
                    f"did not answer within {self._startup_timeout:g} s — last log line: "
                    f"{child.last_log_line()!r} (see {child.log_path})",
                )
            try:
                await asyncio.wait_for(server.probe(), timeout=min(remaining, _PROBE_TIMEOUT))
            except not_ready:
                await asyncio.sleep(_PROBE_INTERVAL)
            else:
                return

    async def _stop_all(self) -> None:
        try:
            for name in reversed(COMPONENTS):
                child = self._children.get(name)
                if child is None:
                    continue
                if child.exit_code is None:
                    self._on_status(name, f"stopping (pid {child.pid})")
                code: int | None
                try:
                    code = await child.stop(self._stop_grace)
                except Exception:
                    _log.exception("%s: could not stop pid %d", name, child.pid)
                    child.kill()
                    code = child.exit_code
                del self._children[name]
                self._on_status(name, f"stopped (exit code {code})")
        except BaseException:
            # Interrupted while stopping (a second Ctrl-C, a cancelled task): leave nothing running.
            for child in self._children.values():
                child.kill()
            self._children.clear()
            raise
