"""PostgreSQL pool helpers shared by the services."""

from __future__ import annotations

from typing import Final

import asyncpg


async def keep_session(connection: asyncpg.Connection) -> None:
    """A pool ``reset`` for services that keep no session state (no LISTEN, SET or session-level advisory
    lock): asyncpg's default reset query costs a round trip on every release, so one per acknowledged
    frame or stored alert. An open transaction is still rolled back before this runs."""


DATABASE_DOWN: Final = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # SQLSTATE class 57: shutting down, starting up, cannot connect now
    asyncpg.InterfaceError,  # a connection closed under the driver
    asyncpg.InternalClientError,  # a connection cut mid-query
    OSError,
)
"""Errors that say PostgreSQL is (for now) unreachable, not that the request was wrong: answer
UNAVAILABLE and retry later, and keep background loops alive through them."""
