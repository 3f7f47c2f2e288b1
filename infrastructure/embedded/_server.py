"""What the launcher needs to know about one embedded server; one subclass per component."""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from ._process import RunAs


class EmbeddedServer(ABC):
    """A server the launcher can prepare, start, probe with a real request and stop."""

    name: ClassVar[str]
    #: Signal that asks the server for a clean shutdown.
    stop_signal: ClassVar[int] = signal.SIGTERM
    #: Errors a probe raises while the server is still coming up; anything else is a real failure.
    not_ready_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def __init__(self, binary: Path, port: int, data_dir: Path, timeout: float) -> None:
        self.binary = binary
        self.port = port
        self.data_dir = data_dir
        self.timeout = timeout

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.log"

    @property
    @abstractmethod
    def url(self) -> str:
        """What clients use to reach it (the value its URL environment variable would hold)."""

    @abstractmethod
    def argv(self) -> list[str]:
        """Command line of the server, running in the foreground."""

    @property
    def cwd(self) -> Path:
        return self.data_dir

    @property
    def run_as(self) -> RunAs | None:
        return None

    async def prepare(self) -> None:  # noqa: B027 - optional hook; most servers need nothing
        """Create directories and first-run state before the server starts."""

    @abstractmethod
    async def probe(self) -> None:
        """One real protocol round trip; raises one of not_ready_errors while the server is not there."""

    async def finish(self) -> None:  # noqa: B027 - optional hook; most servers need nothing
        """First-run set-up that needs the running server (raises InfraError on failure)."""
