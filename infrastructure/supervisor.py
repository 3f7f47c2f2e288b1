"""`itsmesh up`: runs every service as a child process, restarts the ones that die, stops all on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from infrastructure.process import die_with_parent
from infrastructure.restart import RestartBackoff
from mesh.probe import ProbeResult, probe_grpc, probe_http

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[ProbeResult]]
Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """A process to keep running: its command line, extra env, and how to ask whether it serves."""

    name: str
    argv: Sequence[str]
    endpoint: str
    probe: Probe
    env: Mapping[str, str] = field(default_factory=dict)


def service_children(hosts: Mapping[str, tuple[str, int]]) -> list[ChildSpec]:
    """One `itsmesh serve NAME` child per entry of `hosts` (name → (kind, port)); kind is grpc or http."""
    specs = []
    for name, (kind, port) in hosts.items():
        argv = [sys.executable, "-m", "services.cli", "serve", name]
        if kind == "grpc":
            address = f"127.0.0.1:{port}"
            specs.append(ChildSpec(name, argv, f"grpc://{address}", _grpc_probe(address)))
        else:
            url = f"http://127.0.0.1:{port}"
            specs.append(ChildSpec(name, argv, url, _http_probe(f"{url}/healthz")))
    return specs


def _grpc_probe(address: str) -> Probe:
    return lambda: probe_grpc(address, timeout_s=1.0)


def _http_probe(url: str) -> Probe:
    return lambda: probe_http(url, timeout_s=1.0)


class _Child:
    """A running (or restarting) child and its restart history."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.backoff = RestartBackoff()


class Supervisor:
    """Owns the child processes; `run()` returns after `stop` is set and every child has exited."""

    def __init__(
        self,
        children: Sequence[ChildSpec],
        env: Mapping[str, str],
        log_dir: Path,
        report: Report,
        stop_grace_s: float = 15.0,
    ) -> None:
        self._children = [_Child(spec) for spec in children]
        self._env = dict(env)
        self._log_dir = log_dir
        self._report = report
        self._stop_grace_s = stop_grace_s
        self._stopping = False

    def pids(self) -> dict[str, int]:
        """Pids of the children running now."""
        return {c.spec.name: c.proc.pid for c in self._children if c.proc and c.proc.returncode is None}

    async def _spawn(self, child: _Child) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_file: IO[bytes] = (self._log_dir / f"{child.spec.name}.log").open("ab")
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *child.spec.argv,
                env={**os.environ, **self._env, **child.spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        finally:
            log_file.close()  # the child holds its own descriptor
        child.started_at = time.monotonic()

    async def wait_serving(self, timeout_s: float) -> dict[str, ProbeResult]:
        """Probe every child until all serve or `timeout_s` passes; returns the last result of each."""
        deadline = time.monotonic() + timeout_s
        results: dict[str, ProbeResult] = {}
        while True:
            probes = await asyncio.gather(*(c.spec.probe() for c in self._children))
            results = {c.spec.name: r for c, r in zip(self._children, probes, strict=True)}
            if all(r.serving for r in results.values()) or time.monotonic() >= deadline:
                return results
            await asyncio.sleep(0.25)

    async def run(self, stop: asyncio.Event, on_serving: Callable[[dict[str, ProbeResult]], None]) -> None:
        """Start all children, report once all serve, restart any that dies; stop all once `stop` is set."""
        for child in self._children:
            await self._spawn(child)
        try:
            async with asyncio.TaskGroup() as tasks:
                for child in self._children:
                    tasks.create_task(self._keep_alive(child, stop))
                tasks.create_task(self._announce(stop, on_serving))
                await stop.wait()
                self._stopping = True
                await self._terminate_all()
        finally:
            await self._kill_stragglers()

    async def _announce(
        self, stop: asyncio.Event, on_serving: Callable[[dict[str, ProbeResult]], None]
    ) -> None:
        results = await self.wait_serving(timeout_s=60.0)
        if not stop.is_set():
            on_serving(results)

    async def _keep_alive(self, child: _Child, stop: asyncio.Event) -> None:
        while child.proc is not None:
            code = await child.proc.wait()
            if self._stopping or stop.is_set():
                return
            delay = child.backoff.delay_after_exit(child.started_at, time.monotonic())
            self._report(
                f"{child.spec.name} exited with code {code}; restarting in {delay:.0f}s "
                f"(log: {self._log_dir / (child.spec.name + '.log')})"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return
            child.restarts += 1
            await self._spawn(child)

    async def _terminate_all(self) -> None:
        running = [c.proc for c in self._children if c.proc is not None and c.proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), self._stop_grace_s)

    async def _kill_stragglers(self) -> None:
        for child in self._children:
            proc = child.proc
            if proc is not None and proc.returncode is None:
                self._report(f"{child.spec.name} did not stop in {self._stop_grace_s:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
