"""The embedded launcher against the real PostgreSQL, Redis-compatible server and Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import socket
import stat
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from infrastructure.embedded import EmbeddedInfra, InfraError, InfraPorts, InfraUrls, binaries, free_ports

pytestmark = pytest.mark.integration

# Tansu numbers the first group generation 0 and aiokafka sends LeaveGroup only for generations > 0,
# so a stopped member lingers until its session times out; a short session keeps the resume test quick.
GROUP_TIMINGS = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 300}


# --- PostgreSQL -------------------------------------------------------------------------------------


async def test_postgres_creates_inserts_and_selects_in_a_temporary_schema(pg: asyncpg.Connection) -> None:
    schema = f"test_{uuid.uuid4().hex}"
    await pg.execute(f'CREATE SCHEMA "{schema}"')
    try:
        await pg.execute(f'SET search_path TO "{schema}"')
        await pg.execute(
            "CREATE TABLE passages (id bigint PRIMARY KEY, camera_id text NOT NULL, speed_kmh float8)"
        )
        await pg.executemany(
            "INSERT INTO passages (id, camera_id, speed_kmh) VALUES ($1, $2, $3)",
            [(1, "cam-a", 48.5), (2, "cam-b", 61.0), (3, "cam-a", 52.25)],
        )
        rows = await pg.fetch(
            "SELECT camera_id, count(*), max(speed_kmh) FROM passages GROUP BY camera_id ORDER BY camera_id"
        )
        assert [tuple(row) for row in rows] == [("cam-a", 2, 52.25), ("cam-b", 1, 61.0)]
    finally:
        await pg.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_postgres_url_names_the_database_we_are_connected_to(
    pg: asyncpg.Connection, infra: InfraUrls
) -> None:
    assert await pg.fetchval("SELECT current_database()") == urlsplit(infra.database_url).path.lstrip("/")


# --- Redis ------------------------------------------------------------------------------------------


async def test_redis_value_with_ttl_is_readable_then_expires(redis_client: redis.asyncio.Redis) -> None:
    key = f"test:{uuid.uuid4().hex}"
    assert await redis_client.set(key, b"nonce", px=300)
    assert await redis_client.get(key) == b"nonce"
    assert 0 < await redis_client.pttl(key) <= 300
    await asyncio.sleep(0.5)
    assert await redis_client.get(key) is None


async def test_redis_publish_reaches_a_subscriber(redis_client: redis.asyncio.Redis) -> None:
    channel = f"test:registry:{uuid.uuid4().hex}"
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        assert await redis_client.publish(channel, b"instance up") == 1
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None
        assert (message["channel"], message["data"]) == (channel.encode(), b"instance up")


# --- Kafka ------------------------------------------------------------------------------------------


async def _consume(consumer: AIOKafkaConsumer, count: int, within: float = 30.0) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    async with asyncio.timeout(within):
        while len(records) < count:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    return records


def _group_consumer(topic: str, bootstrap: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TIMINGS,
    )


async def test_kafka_group_resumes_after_its_committed_offset(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    group = f"test-group-{uuid.uuid4().hex}"
    # Tansu refuses InitProducerId, so the idempotent producer stays off here (see DESIGN §8).
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for n in range(3):
            metadata = await producer.send_and_wait(
                unique_topic,
                f"detection-{n}".encode(),
                key=b"cam-7",
                headers=[("event-id", f"evt-{n}".encode()), ("content-type", b"application/x-protobuf")],
            )
            assert metadata.offset == n  # one key, one partition, in order

        first = _group_consumer(unique_topic, kafka_bootstrap, group)
        await first.start()
        try:
            records = await _consume(first, 3)
            assert [record.value for record in records] == [b"detection-0", b"detection-1", b"detection-2"]
            assert [dict(record.headers)["event-id"] for record in records] == [b"evt-0", b"evt-1", b"evt-2"]
            assert all(
                dict(record.headers)["content-type"] == b"application/x-protobuf" for record in records
            )
            await first.commit()
            assert await first.committed(TopicPartition(unique_topic, records[0].partition)) == 3
        finally:
            await first.stop()

        for n in range(3, 5):
            await producer.send_and_wait(unique_topic, f"detection-{n}".encode(), key=b"cam-7")

        second = _group_consumer(unique_topic, kafka_bootstrap, group)
        await second.start()
        try:
            resumed = await _consume(second, 2)
            assert [(record.offset, record.value) for record in resumed] == [
                (3, b"detection-3"),
                (4, b"detection-4"),
            ]
            leftovers = await second.getmany(timeout_ms=1000)
            assert not any(leftovers.values()), "committed records were delivered again"
        finally:
            await second.stop()
    finally:
        await producer.stop()


# --- the launcher's own behaviour -------------------------------------------------------------------


async def test_taken_port_is_reported_with_component_and_port(tmp_path: Path, infra: InfraUrls) -> None:
    env = {"REDIS_URL": infra.redis_url, "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        launcher = EmbeddedInfra(tmp_path, ports=InfraPorts(postgres=taken), env=env)
        with pytest.raises(InfraError) as caught:
            async with launcher:
                pytest.fail("started although the port is taken")
    message = str(caught.value)
    assert caught.value.component == "postgres"
    assert message.startswith(f"postgres: port {taken} is already in use")
    assert "ITSMESH_PG_PORT" in message
    assert "\n" not in message
    assert launcher.pids() == {}


async def test_missing_binary_gives_the_install_hint(
    tmp_path: Path, infra: InfraUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binaries, "locate_binary", lambda component: tmp_path / "absent" / component)
    env = {"DATABASE_URL": infra.database_url, "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers}
    with pytest.raises(InfraError) as caught:
        async with EmbeddedInfra(tmp_path, ports=free_ports(), env=env):
            pytest.fail("started without a binary")
    assert caught.value.component == "redis"
    assert "pip install 'itsmesh[embedded]'" in str(caught.value)
    assert "\n" not in str(caught.value)


def _fake_server(directory: Path, script: str) -> Path:
    path = directory / "fake-server"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_server_that_exits_early_is_reported_with_its_last_log_line(
    tmp_path: Path, infra: InfraUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_server(tmp_path, 'echo "starting"\necho "FATAL: simulated bad config" >&2\nexit 3')
    monkeypatch.setattr(binaries, "locate_binary", lambda component: fake)
    env = {"DATABASE_URL": infra.database_url, "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers}
    with pytest.raises(InfraError) as caught:
        async with EmbeddedInfra(tmp_path / "data", ports=free_ports(), env=env):
            pytest.fail("a server that exited counted as started")
    message = str(caught.value)
    assert message.startswith("redis: exited with code 3 while starting")
    assert "FATAL: simulated bad config" in message
    assert str(tmp_path / "data" / "logs" / "redis.log") in message


async def test_server_that_never_answers_is_stopped_and_reported(
    tmp_path: Path, infra: InfraUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_server(tmp_path, 'echo "waiting for something"\nexec sleep 60')
    monkeypatch.setattr(binaries, "locate_binary", lambda component: fake)
    env = {"DATABASE_URL": infra.database_url, "REDIS_URL": infra.redis_url}
    launcher = EmbeddedInfra(tmp_path / "data", ports=free_ports(), env=env, startup_timeout=1.0)
    with pytest.raises(InfraError) as caught:
        async with launcher:
            pytest.fail("a silent server counted as started")
    assert str(caught.value).startswith(
        "kafka: did not answer within 1 s — last log line: 'waiting for something'"
    )
    assert launcher.pids() == {}
    assert not [proc for proc in psutil.process_iter(["cmdline"]) if proc.info["cmdline"] == ["sleep", "60"]]


async def test_component_with_an_env_url_is_not_started(tmp_path: Path, infra: InfraUrls) -> None:
    env = {"DATABASE_URL": infra.database_url, "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap_servers}
    statuses: list[tuple[str, str]] = []

    def on_status(component: str, message: str) -> None:
        statuses.append((component, message))

    launcher = EmbeddedInfra(tmp_path, ports=free_ports(), env=env, on_status=on_status)
    async with launcher as urls:
        assert urls.started == ("redis",)
        assert (urls.database_url, urls.kafka_bootstrap_servers) == (
            infra.database_url,
            infra.kafka_bootstrap_servers,
        )
        pids = launcher.pids()
        assert set(pids) == {"redis"}
        client = redis.asyncio.Redis.from_url(urls.redis_url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    assert ("postgres", "using DATABASE_URL from the environment (not started)") in statuses
    assert launcher.pids() == {}
    assert not psutil.pid_exists(pids["redis"])
    assert not (tmp_path / "postgres").exists()
