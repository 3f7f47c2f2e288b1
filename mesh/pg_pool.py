"""PostgreSQL pool helpers shared by the services."""

from __future__ import annotations

import asyncpg


async def keep_session(connection: asyncpg.Connection) -> None:
    """A pool ``reset`` for services that keep no session state (no LISTEN, SET or session-level advisory
    lock): asyncpg's default reset query costs a round trip on every release, so one per acknowledged
    frame or stored alert. An open transaction is still rolled back before this runs."""
