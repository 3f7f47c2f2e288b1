"""The Redis service registry against the real embedded Valkey (and a private one that a test kills)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from mesh.endpoints import NOT_SERVING, EndpointsChange, Instance, encode_record
from mesh.registry import (
    Registration,
    RegistryKeys,
    RegistryUnavailableError,
    Watcher,
    list_instances,
    list_services,
    open_redis,
)
from tests.integration.private_valkey import PrivateValkey

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def instance(instance_id: str, service: str = "echo", port: int = 50051) -> Instance:
    return Instance(service, instance_id, f"127.0.0.1:{port}", version="1.0", started_at=time.time())


def ids(instances: list[Instance] | tuple[Instance, ...]) -> list[str]:
    return [i.instance_id for i in instances]


def has(*wanted: str):
    return lambda endpoints: sorted(ids(endpoints)) == sorted(wanted)


@pytest.fixture
def namespace() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:registry"


@pytest.fixture
async def client(infra) -> AsyncIterator[Redis]:
    redis = open_redis(infra.redis_url)
    yield redis
    await redis.aclose()


# --- announcements ----------------------------------------------------------------------------------------


async def test_watcher_sees_a_registration_and_a_graceful_stop_within_one_second(client, namespace):
    keys = RegistryKeys(namespace)
    # A re-list interval far beyond the test: only announcements can deliver the changes in time.
    async with Watcher(client, ["echo"], relist_interval_s=60.0, namespace=namespace) as watcher:
        assert watcher.synced
        assert watcher.endpoints("echo") == []
        registration = Registration(client, instance("a"), ttl_s=5.0, namespace=namespace)
        started = time.monotonic()
        await registration.start()
        await watcher.wait_for("echo", has("a"), timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert registration.registered

        stopped = time.monotonic()
        await registration.stop()
        await watcher.wait_for("echo", has(), timeout=1.0)
        assert time.monotonic() - stopped < 1.0

    assert await client.exists(keys.instance("echo", "a")) == 0
    assert await client.smembers(keys.service("echo")) == set()
    assert await client.smembers(keys.services) == set()


async def test_watcher_of_all_services_reports_changes_to_its_callback(client, namespace):
    changes: list[EndpointsChange] = []
    async with (
        Watcher(client, relist_interval_s=60.0, namespace=namespace, on_change=changes.append) as watcher,
        Registration(client, instance("a", "echo"), ttl_s=5.0, namespace=namespace),
        Registration(client, instance("b", "relay", 50052), ttl_s=5.0, namespace=namespace),
    ):
        await watcher.wait_for("echo", has("a"), timeout=1.0)
        await watcher.wait_for("relay", has("b"), timeout=1.0)
        assert watcher.services() == ["echo", "relay"]
    assert {(c.service, ids(c.added)[0]) for c in changes if c.added} == {("echo", "a"), ("relay", "b")}


async def test_health_change_takes_an_instance_out_of_rotation_and_back(client, namespace):
    async with (
        Watcher(client, ["echo"], relist_interval_s=60.0, namespace=namespace) as watcher,
        Registration(client, instance("a"), ttl_s=5.0, namespace=namespace) as registration,
    ):
        await watcher.wait_for("echo", has("a"), timeout=1.0)
        assert await registration.set_health(NOT_SERVING)
        await watcher.wait_for("echo", has(), timeout=1.0)
        assert [i.health for i in watcher.instances("echo")] == [NOT_SERVING]
        assert [i.health for i in await list_instances(client, "echo", namespace=namespace)] == [NOT_SERVING]
        assert await registration.set_health("SERVING")
        await watcher.wait_for("echo", has("a"), timeout=1.0)


# --- lease expiry, failures and repair --------------------------------------------------------------------

_KILLABLE = """
import asyncio, sys
from mesh.endpoints import Instance
from mesh.registry import Registration

async def main() -> None:
    url, namespace, instance_id = sys.argv[1:4]
    registration = Registration(url, Instance("echo", instance_id, "127.0.0.1:50059"), ttl_s=1.0,
                                namespace=namespace)
    await registration.start()
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_killed_instance_leaves_rotation_when_its_lease_expires(infra, client, namespace):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _KILLABLE,
        infra.redis_url,
        namespace,
        "doomed",
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), timeout=10.0) == b"registered\n"
        async with (
            Watcher(client, ["echo"], relist_interval_s=0.25, namespace=namespace) as watcher,
            Registration(client, instance("alive"), ttl_s=1.0, namespace=namespace),
        ):
            await watcher.wait_for("echo", has("doomed", "alive"), timeout=1.0)
            # Several heartbeats of the survivor and re-lists pass while the doomed one is still up.
            await asyncio.sleep(0.5)
            assert sorted(ids(watcher.endpoints("echo"))) == ["alive", "doomed"]

            process.send_signal(signal.SIGKILL)
            await process.wait()
            killed = time.monotonic()
            await watcher.wait_for("echo", has("alive"), timeout=2.5)
            # Lease 1 s + one re-list interval, with room for a loaded machine.
            assert time.monotonic() - killed < 2.0
        keys = RegistryKeys(namespace)
        # The re-list also dropped the dead instance's index entry.
        assert b"doomed" not in await client.smembers(keys.service("echo"))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_failed_endpoint_leaves_at_once_and_returns_after_its_next_heartbeat(client, namespace):
    async with (
        Watcher(client, ["echo"], relist_interval_s=0.25, namespace=namespace) as watcher,
        Registration(client, instance("a"), ttl_s=1.5, namespace=namespace),
        Registration(client, instance("b", port=50052), ttl_s=60.0, namespace=namespace),
    ):
        await watcher.wait_for("echo", has("a", "b"), timeout=1.0)
        watcher.mark_failed("echo", "a")
        watcher.mark_failed("echo", "b")
        assert watcher.endpoints("echo") == []
        # "a" heartbeats every 0.5 s, so a re-list soon proves it alive after the failure.
        await watcher.wait_for("echo", has("a"), timeout=1.5)
        # "b" renews only every 20 s: its record merely not having expired proves nothing.
        await asyncio.sleep(0.6)
        assert ids(watcher.endpoints("echo")) == ["a"]


async def test_relist_repairs_missed_announcements(client, namespace):
    keys = RegistryKeys(namespace)
    async with Watcher(client, ["echo"], relist_interval_s=0.3, namespace=namespace) as watcher:
        # An instance registered while the watcher's announcement was lost: written without PUBLISH.
        record = encode_record(instance("quiet"), 5.0)
        await client.set(keys.instance("echo", "quiet"), record, px=5000)
        await client.sadd(keys.service("echo"), "quiet")
        await watcher.wait_for("echo", has("quiet"), timeout=1.0)

        # And one whose record vanished without a "down" announcement; its index entry is left behind.
        await client.delete(keys.instance("echo", "quiet"))
        await watcher.wait_for("echo", has(), timeout=1.0)
        assert await client.smembers(keys.service("echo")) == set()


async def test_registration_registers_again_after_its_record_was_deleted(client, namespace):
    keys = RegistryKeys(namespace)
    changes: list[EndpointsChange] = []
    async with (
        Watcher(
            client, ["echo"], relist_interval_s=60.0, namespace=namespace, on_change=changes.append
        ) as watcher,
        Registration(client, instance("a"), ttl_s=0.9, namespace=namespace),
    ):
        await watcher.wait_for("echo", has("a"), timeout=1.0)
        # As after FLUSHALL: record, index and service name gone, and watchers told so.
        await client.delete(keys.instance("echo", "a"), keys.service("echo"), keys.services)
        await client.publish(keys.events, '{"op": "down", "service": "echo", "instance_id": "a"}')
        deleted = time.monotonic()
        # The next heartbeat (every 0.3 s) finds the record gone and registers again, announcing "up".
        while not await client.exists(keys.instance("echo", "a")):
            assert time.monotonic() - deleted < 1.0, "not registered again within 1 s"
            await asyncio.sleep(0.02)
        assert await client.smembers(keys.service("echo")) == {b"a"}
        assert await client.smembers(keys.services) == {b"echo"}
        assert await client.pttl(keys.instance("echo", "a")) > 0
        await asyncio.sleep(0.2)
    assert [(ids(c.added), ids(c.removed)) for c in changes[:3]] == [(["a"], []), ([], ["a"]), (["a"], [])]


async def test_console_reads_list_services_and_live_instances(client, namespace):
    keys = RegistryKeys(namespace)
    async with (
        Registration(client, instance("b"), ttl_s=5.0, namespace=namespace),
        Registration(client, instance("a"), ttl_s=5.0, namespace=namespace),
        Registration(client, instance("r", "relay"), ttl_s=5.0, namespace=namespace),
    ):
        await client.sadd(keys.service("echo"), "expired-long-ago")
        assert await list_services(client, namespace=namespace) == ["echo", "relay"]
        listed = await list_instances(client, "echo", namespace=namespace)
        assert ids(listed) == ["a", "b"]
        assert listed[0].address == "127.0.0.1:50051"
        assert await list_instances(client, "nobody", namespace=namespace) == []


# --- static stability: a private server that the test stops and starts again -------------------------------


@pytest.fixture
async def private_valkey() -> AsyncIterator[PrivateValkey]:
    with tempfile.TemporaryDirectory(prefix="itsmesh-valkey-") as directory:
        server = PrivateValkey(Path(directory))
        await server.start()
        try:
            yield server
        finally:
            await server.kill()


async def test_endpoints_survive_redis_outage_and_resync_when_it_returns(private_valkey, namespace):
    changes: list[EndpointsChange] = []
    client = open_redis(private_valkey.url)
    watcher = Watcher(
        private_valkey.url,
        ["echo"],
        relist_interval_s=0.3,
        resync_grace_s=3.0,
        namespace=namespace,
        on_change=changes.append,
    )
    before = Registration(private_valkey.url, instance("before"), ttl_s=0.9, namespace=namespace)
    during = Registration(private_valkey.url, instance("during", port=50052), ttl_s=0.9, namespace=namespace)
    after = Registration(client, instance("after", port=50053), ttl_s=0.9, namespace=namespace)
    try:
        await before.start()
        await watcher.start()
        await watcher.wait_for("echo", has("before"), timeout=1.0)

        await private_valkey.kill()
        # Well past the lease and several re-list intervals: the last known list stays.
        await asyncio.sleep(1.5)
        assert not watcher.connected
        assert ids(watcher.endpoints("echo")) == ["before"]
        assert watcher.synced
        with pytest.raises(RegistryUnavailableError):
            await list_services(client, namespace=namespace)
        # Registering while Redis is away neither raises nor blocks for long.
        started = time.monotonic()
        await during.start()
        assert time.monotonic() - started < 2.5
        assert not during.registered

        await private_valkey.start()  # same port, empty dataset
        await watcher.wait_for("echo", has("before", "during"), timeout=3.0)
        await after.start()
        await watcher.wait_for("echo", has("before", "during", "after"), timeout=1.0)
        assert watcher.connected
        # Both background registrations write their records again within their backoff (<= 0.3 s).
        returned = time.monotonic()
        while ids(await list_instances(client, "echo", namespace=namespace)) != ["after", "before", "during"]:
            assert time.monotonic() - returned < 2.0, "records not written again after Redis returned"
            await asyncio.sleep(0.05)
        assert before.registered
        assert during.registered
        assert await list_services(client, namespace=namespace) == ["echo"]
        # Not once did the outage or the empty restart take "before" out of rotation.
        assert all("before" not in ids(change.removed) for change in changes)
    finally:
        for registration in (after, during, before):
            await registration.stop()
        await watcher.stop()
        await client.aclose()
