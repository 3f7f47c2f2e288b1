"""A worker's doorbell: it sleeps until rung or until its poll interval passes, whichever comes first."""

from __future__ import annotations

import asyncio


class Wakeup:
    """Rung (from the same event loop) when work became due now, so a worker need not wait for its poll."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        """Wake the worker (cheap; a no-op while it is busy — it looks again before sleeping)."""
        self._event.set()

    def clear(self) -> None:
        """Called by the worker before it looks for work, so a ring during the look is not lost."""
        self._event.clear()

    async def wait(self, timeout_s: float) -> None:
        """Sleep until rung or ``timeout_s`` passed.

        ``asyncio.wait`` with a timeout, not ``asyncio.timeout``: on Python 3.11 the latter, racing a ring,
        can leave a cancel pending that later ends the worker's task.
        """
        if self._event.is_set():
            return
        waiter = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout_s)
        finally:
            waiter.cancel()


def stop_if_cancelled() -> None:
    """Re-raise a cancellation that a timeout swallowed: Python 3.11's ``asyncio.timeout`` turns a cancel
    racing its deadline into TimeoutError, and a worker loop that carries on would hold up shutdown."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
