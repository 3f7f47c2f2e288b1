"""When to restart a child process that died: exponential backoff that forgets after a stable run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RestartBackoff:
    """Delay before the next restart; a child that ran for `stable_after_s` starts again from `base_s`."""

    base_s: float = 1.0
    cap_s: float = 30.0
    stable_after_s: float = 60.0
    consecutive_failures: int = 0

    def delay_after_exit(self, started_at: float, now: float) -> float:
        """Record an exit at `now` of a child started at `started_at`; return seconds to wait."""
        if now - started_at >= self.stable_after_s:
            self.consecutive_failures = 0
        self.consecutive_failures += 1
        return float(min(self.cap_s, self.base_s * 2.0 ** (self.consecutive_failures - 1)))
