"""Where the routing configuration in force comes from: a file polled by mtime, or inline text.

The parsing is pure (``routing.parse``); this adapter reads the file, keeps the last good configuration
when a new one is invalid, and remembers the outcome of the last reload for GetRoutingConfig.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.alert.routing import RoutingConfig, RoutingConfigError, parse

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A configuration in force and where and when it came from."""

    config: RoutingConfig
    source_path: str
    load_time: datetime


class RoutingSource:
    """The routing configuration in force; ``reload`` swaps it only for a valid one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.loaded: Loaded | None = None
        self.last_reload_error = ""
        self.last_reload_time: datetime | None = None
        self._mtime_ns: int | None = None

    def reload(self, now: datetime, text: str | None = None, *, validate_only: bool = False) -> RoutingConfig:
        """Parse ``text`` (or re-read the file) and apply it; RoutingConfigError keeps the old one."""
        source_path = ""
        if text is None:
            if self.path is None:
                raise RoutingConfigError([("yaml", "no routing file is configured; send the configuration")])
            try:
                text = self.path.read_text(encoding="utf-8")
                self._mtime_ns = self.path.stat().st_mtime_ns
            except OSError as exc:
                raise self._failed(
                    now, RoutingConfigError([(str(self.path), exc.strerror or str(exc))])
                ) from exc
            source_path = str(self.path)
        try:
            config = parse(text)
        except RoutingConfigError as exc:
            if validate_only:
                raise
            raise self._failed(now, exc) from None
        if not validate_only:
            self.loaded = Loaded(config, source_path, now)
            self.last_reload_error = ""
            self.last_reload_time = now
            log.info("routing configuration applied", extra={"hash": config.config_hash, "path": source_path})
        return config

    def _failed(self, now: datetime, error: RoutingConfigError) -> RoutingConfigError:
        self.last_reload_error = str(error)
        self.last_reload_time = now
        log.warning("routing configuration rejected; the previous one stays", extra={"error": str(error)})
        return error

    def changed_on_disk(self) -> bool:
        """Whether the file's mtime differs from the one last read (a missing file counts as unchanged)."""
        if self.path is None:
            return False
        try:
            return self.path.stat().st_mtime_ns != self._mtime_ns
        except OSError:
            return False

    async def watch(self, interval_s: float, clock: Clock) -> None:
        """Reload whenever the file changes, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed_on_disk():
                # reload() logs a rejected file and keeps it in last_reload_error
                with contextlib.suppress(RoutingConfigError):
                    self.reload(clock())
