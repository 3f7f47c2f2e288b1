"""Shared fixtures: real PostgreSQL, Redis and Kafka, started once per test run."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from infrastructure.embedded import EmbeddedInfra, InfraUrls, free_ports


@pytest.fixture(scope="session")
async def infra() -> AsyncIterator[InfraUrls]:
    """The three servers for the whole run.

    DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS are used when set; whatever is missing runs
    embedded on free loopback ports in a temporary directory and is stopped when the run ends. The
    directory is not under pytest's basetemp: a second pytest run on the machine prunes old basetemps,
    which would delete a running server's data.
    """
    with tempfile.TemporaryDirectory(prefix="itsmesh-test-infra-") as directory:
        async with EmbeddedInfra(Path(directory), ports=free_ports()) as urls:
            yield urls


@pytest.fixture(scope="session")
def kafka_bootstrap(infra: InfraUrls) -> str:
    """Bootstrap servers of the Kafka-protocol broker."""
    return infra.kafka_bootstrap_servers


@pytest.fixture
async def pg(infra: InfraUrls) -> AsyncIterator[asyncpg.Connection]:
    """A fresh PostgreSQL connection for one test."""
    connection = await asyncpg.connect(infra.database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def redis_client(infra: InfraUrls) -> AsyncIterator[redis.asyncio.Redis]:
    """A Redis client for one test (bytes in, bytes out)."""
    client = redis.asyncio.Redis.from_url(infra.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def unique_topic() -> str:
    """A Kafka topic name no other test uses."""
    return f"test.{uuid.uuid4().hex}"
