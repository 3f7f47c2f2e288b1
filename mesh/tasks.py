"""Ending background tasks for certain."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended.

    Cancels again while it runs on: redis-py can swallow a cancellation that lands in the middle of a
    command (observed with redis 8.1: a task looping over ``SET`` survives about a third of cancels).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
