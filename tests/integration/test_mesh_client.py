"""The mesh client against real gRPC servers on loopback and the real embedded Valkey; nothing is mocked.

Instances of the echo service (``mesh_instance.EchoStreaming``) run as real ``ServiceHost``s, registered
in a registry namespace of their own test; the instance a test kills with SIGKILL runs in a subprocess.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from itsmesh.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.breaker import BreakerConfig, BreakerState
from mesh.client import (
    Attempt,
    BudgetConfig,
    ClientConfig,
    MeshClient,
    ServicePolicy,
    read_breakers,
)
from mesh.deadline import DeadlinePropagationInterceptor
from mesh.errors import CircuitOpenError, ClientClosedError, MeshUnavailable, NoEndpointsError
from mesh.host import GrpcService, ServiceHost, ServiceSpec
from mesh.interceptors import server_interceptors
from mesh.registry import Registration, Watcher, open_redis
from mesh.retry import RetryPolicy
from mesh.settings import ServiceSettings
from tests.integration.mesh_instance import EchoStreaming
from tests.integration.private_valkey import PrivateValkey

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_SCRIPT = Path(__file__).with_name("mesh_instance.py")
SERVICE = "echo"
Stub = streaming_pb2_grpc.StreamingServiceStub


def camera(camera_id: str = "cam-1") -> streaming_pb2.GetCameraRequest:
    return streaming_pb2.GetCameraRequest(camera_id=camera_id)


# --- instances, clients and load --------------------------------------------------------------------------


@dataclass
class Member:
    """One running instance of the echo service: its servicer, host and registration."""

    servicer: EchoStreaming
    host: ServiceHost
    registration: Registration | None

    @property
    def name(self) -> str:
        return self.servicer.name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.host.grpc_port}"

    async def stop(self) -> None:
        """Graceful stop as a service does it: leave discovery first, then drain."""
        if self.registration is not None:
            await self.registration.stop()
        await self.host.stop()


class Fleet:
    """In-process echo instances; each registers in ``namespace`` unless ``redis`` is None."""

    def __init__(self, redis: Redis | str | None, namespace: str, *, drain_grace_s: float = 3.0) -> None:
        self._redis = redis
        self._namespace = namespace
        self._grace = drain_grace_s
        self.members: list[Member] = []

    async def start(self, *names: str) -> list[Member]:
        started = []
        for name in names:
            servicer = EchoStreaming(name)
            settings = ServiceSettings(
                bind_host="127.0.0.1",
                grpc_port=0,
                instance_id=name,
                migrate_on_start=False,
                register_in_discovery=False,
                drain_grace_s=self._grace,
            )
            host = ServiceHost(
                ServiceSpec(
                    name=SERVICE,
                    settings=settings,
                    grpc_services=[
                        GrpcService.from_generated(
                            streaming_pb2, streaming_pb2_grpc, "StreamingService", servicer
                        )
                    ],
                    uses_database=False,
                )
            )
            await host.start()
            registration = None
            if self._redis is not None:
                # Nothing here waits for a lease to lapse, and a long one keeps heartbeats out of the way.
                registration = Registration(
                    self._redis, host.instance(), ttl_s=30.0, namespace=self._namespace
                )
                await registration.start()
            member = Member(servicer, host, registration)
            self.members.append(member)
            started.append(member)
        return started

    @property
    def addresses(self) -> list[str]:
        return [member.address for member in self.members]

    def calls(self, method: str = "GetCamera") -> int:
        return sum(member.servicer.calls[method] for member in self.members)

    async def close(self) -> None:
        await asyncio.gather(*(member.stop() for member in self.members))


@pytest.fixture
def namespace() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:registry"


@pytest.fixture
async def redis(infra) -> AsyncIterator[Redis]:
    client = open_redis(infra.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def fleet(redis, namespace) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis, namespace)
    yield fleet
    await fleet.close()


@contextlib.asynccontextmanager
async def registry_client(
    redis: Redis | str,
    namespace: str,
    *,
    expect: int = 0,
    policy: ServicePolicy | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> AsyncIterator[tuple[MeshClient, Watcher]]:
    """A client on a watcher of the echo service in ``namespace``, once ``expect`` instances are listed."""
    watcher = Watcher(redis, [SERVICE], relist_interval_s=0.5, namespace=namespace)
    await watcher.start()
    config = ClientConfig(
        default_policy=policy or ServicePolicy(), breaker_namespace=f"{namespace}:breakers", client_id="test"
    )
    client = MeshClient(watcher, config=config, redis=redis, on_attempt=on_attempt)
    try:
        await watcher.wait_for(SERVICE, lambda endpoints: len(endpoints) >= expect, timeout=2.0)
        yield client, watcher
    finally:
        await client.close()
        await watcher.stop()


@dataclass
class Load:
    """Outcome of a load run: calls that succeeded by the instance that answered, and every failure."""

    served_by: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[grpc.aio.AioRpcError] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(self.served_by.values())


async def run_load(
    stub: Stub, stop: asyncio.Event, *, workers: int = 8, timeout: float = 2.0, until: int | None = None
) -> Load:
    """Idempotent unary calls from ``workers`` loops until ``stop`` is set (or ``until`` calls succeeded)."""
    load = Load()

    async def worker(index: int) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            try:
                reply = await stub.GetCamera(camera(f"w{index}-{sequence}"), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                load.failures.append(exc)
            else:
                load.served_by[reply.name] += 1
                if until is not None and load.ok >= until:
                    stop.set()

    await asyncio.gather(*(worker(i) for i in range(workers)))
    return load


async def load_of(stub: Stub, calls: int, *, within: float = 60.0, **kwargs) -> Load:
    """Load until ``calls`` calls have succeeded: a fixed sample, however fast the machine is right now.

    ``within`` only guards against a hang; it is no speed requirement.
    """
    stop = asyncio.Event()
    running = asyncio.ensure_future(run_load(stub, stop, until=calls, **kwargs))
    try:
        return await asyncio.wait_for(asyncio.shield(running), within)
    except TimeoutError:
        stop.set()
        load = await running
        raise AssertionError(f"only {load.ok} of {calls} calls succeeded within {within} s") from None


async def max_loop_lag(stop: asyncio.Event) -> float:
    """The longest the event loop was late waking a 5 ms sleeper, until ``stop`` is set.

    On a machine shared with other test runs the loop is sometimes starved for tens of milliseconds; a
    bound on how late the mesh reacts is checked net of that, not of the machine's load.
    """
    worst = 0.0
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        worst = max(worst, time.monotonic() - before - 0.005)
    return worst


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


def failure_summary(load: Load) -> list[tuple[str, str | None]]:
    return [(exc.code().name, exc.details()) for exc in load.failures[:5]]


# --- the stub works for every call shape ------------------------------------------------------------------


async def test_generated_stubs_work_unchanged_for_unary_and_streaming_methods(infra, namespace, fleet):
    await fleet.start("a", "b", "c")
    mesh = await MeshClient.from_registry(infra.redis_url, [SERVICE], namespace=namespace)
    try:
        assert len(mesh.endpoint_status(SERVICE)) == 3, "the first listing arrived before it returned"
        stub = mesh.stub(SERVICE, Stub)
        names = collections.Counter()
        for i in range(60):
            reply = await stub.GetCamera(camera(f"cam-{i}"), timeout=2.0)
            assert reply.camera_id == f"cam-{i}"
            names[reply.name] += 1
        assert set(names) == {"a", "b", "c"}, "calls are balanced over every instance"

        # Bidirectional stream: balanced once, at stream start, then every message stays on it.
        call = stub.StreamFrames()
        await call.write(
            streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id="cam-9"))
        )
        opened = await call.read()
        for sequence in (1, 2, 3):
            await call.write(streaming_pb2.StreamFramesRequest(frame=streaming_pb2.Frame(sequence=sequence)))
        await call.done_writing()
        acks = []
        while (response := await call.read()) is not grpc.aio.EOF:
            acks.append(response.ack.acked_through_sequence)
        assert opened.opened.instance_id in {"a", "b", "c"}
        assert acks == [1, 2, 3]
        assert await call.code() == grpc.StatusCode.OK

        # Server streaming, with a stub from another package (grpc.health.v1 on the same hosts).
        watch = mesh.stub(SERVICE, health_pb2_grpc.HealthStub).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        # ``client`` is another name of ``stub``.
        assert (await mesh.client(SERVICE, Stub).GetCamera(camera("cam-c"), timeout=2.0)).camera_id == "cam-c"

        # The call object answers like a grpc.aio call.
        unary = stub.GetCamera(camera("cam-x"), timeout=2.0)
        assert (await unary).camera_id == "cam-x"
        assert await unary.code() == grpc.StatusCode.OK
        assert unary.done()
    finally:
        await mesh.close()


# --- failover ---------------------------------------------------------------------------------------------


async def test_kill_9_under_load_fails_no_call_and_its_address_gets_no_traffic_a_second_later(
    infra, redis, namespace, fleet
):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(INSTANCE_SCRIPT),
        infra.redis_url,
        namespace,
        SERVICE,
        "doomed",
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=15.0)
        assert line.startswith(b"ready "), line
        doomed = f"127.0.0.1:{int(line.split()[1])}"
        await fleet.start("a", "b")
        attempts: list[Attempt] = []
        async with registry_client(redis, namespace, expect=3, on_attempt=attempts.append) as (mesh, watcher):
            stub = mesh.stub(SERVICE, Stub)
            stop = asyncio.Event()
            running = asyncio.ensure_future(run_load(stub, stop))
            await asyncio.sleep(0.7)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            killed = time.monotonic()
            await asyncio.sleep(2.0)
            stop.set()
            load = await running

            assert load.failures == [], failure_summary(load)
            assert load.served_by["doomed"] > 0, "the doomed instance took traffic before the kill"
            late = [a for a in attempts if a.endpoint == doomed and a.started_at > killed + 1.0]
            assert late == []
            # It left rotation on its first refused connection, long before its 10 s lease lapses.
            assert doomed not in [i.address for i in watcher.endpoints(SERVICE)]
            assert load.served_by["a"] > 0
            assert load.served_by["b"] > 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_graceful_stop_fails_no_call_and_lets_an_open_stream_finish(redis, namespace, fleet):
    await fleet.start("a", "b", "c")
    async with registry_client(redis, namespace, expect=3) as (mesh, watcher):
        stub = mesh.stub(SERVICE, Stub)
        stream = stub.StreamFrames()
        await stream.write(
            streaming_pb2.StreamFramesRequest(open=streaming_pb2.OpenFrameStream(camera_id="cam-s"))
        )
        opened = await stream.read()
        holder = next(m for m in fleet.members if m.name == opened.opened.instance_id)

        stop = asyncio.Event()
        running = asyncio.ensure_future(run_load(stub, stop))
        await asyncio.sleep(0.3)
        stopping = asyncio.ensure_future(holder.stop())
        await watcher.wait_for(SERVICE, lambda endpoints: len(endpoints) == 2, timeout=1.0)
        # The stream keeps flowing while its instance drains.
        for sequence in range(1, 6):
            await stream.write(
                streaming_pb2.StreamFramesRequest(frame=streaming_pb2.Frame(sequence=sequence))
            )
            assert (await stream.read()).ack.acked_through_sequence == sequence
            await asyncio.sleep(0.05)
        assert not stopping.done(), "the instance waits for the open stream"
        await stream.done_writing()
        assert await stream.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, timeout=3.0)
        await asyncio.sleep(0.3)
        stop.set()
        load = await running

    assert load.failures == [], failure_summary(load)
    assert load.ok > 50
    assert holder.servicer.open_streams == 0


# --- circuit breakers -------------------------------------------------------------------------------------


async def test_instance_failing_every_call_is_ejected_then_readmitted_by_half_open_probes(
    redis, namespace, fleet
):
    a, b, c = await fleet.start("a", "b", "c")
    b.servicer.failing = True
    policy = ServicePolicy(
        breaker=BreakerConfig(consecutive_failures=3, cool_down_seconds=0.4, half_open_successes=2),
        # Two attempts only: the retry must go to another instance for no call to fail.
        retry=RetryPolicy(max_attempts=2),
    )
    async with registry_client(redis, namespace, expect=3, policy=policy) as (mesh, watcher):
        stub = mesh.stub(SERVICE, Stub)

        def breaker_of_b() -> BreakerState:
            return next(s.breaker for s in mesh.endpoint_status(SERVICE) if s.address == b.address)

        stop = asyncio.Event()
        running = asyncio.ensure_future(run_load(stub, stop, workers=4))
        await eventually(lambda: breaker_of_b() is not BreakerState.CLOSED, 1.0, "b's breaker opens")
        calls_when_open = b.servicer.calls["GetCamera"]
        await asyncio.sleep(1.0)
        # While ejected, b sees only the odd half-open probe (one per cool-down), not a share of traffic.
        assert b.servicer.calls["GetCamera"] - calls_when_open <= 6
        records = await read_breakers(redis, SERVICE, namespace=f"{namespace}:breakers")
        assert records[b.address].state in {"open", "half_open"}
        assert records[b.address].instance_id == "b"
        # Failing answers are not connection failures: b stays registered, only its breaker holds it out.
        assert b.address in [i.address for i in watcher.endpoints(SERVICE)]

        b.servicer.failing = False
        await eventually(lambda: breaker_of_b() is BreakerState.CLOSED, 3.0, "probes close b's breaker")
        readmitted = b.servicer.calls["GetCamera"]
        # However slowly the loaded machine runs the load, b is back in rotation and takes calls again.
        await eventually(
            lambda: b.servicer.calls["GetCamera"] - readmitted > 20, 10.0, "b takes its share again"
        )
        stop.set()
        load = await running

    assert load.failures == [], failure_summary(load)
    records = await read_breakers(redis, SERVICE, namespace=f"{namespace}:breakers")
    assert (records[b.address].previous, records[b.address].state) == ("half_open", "closed")
    assert a.address not in records
    assert c.address not in records


async def test_p2c_sends_at_most_a_fifth_of_the_traffic_to_an_instance_20_ms_slower(redis, namespace, fleet):
    _, _, slow = await fleet.start("a", "b", "slow")
    slow.servicer.delay_s = 0.020
    async with registry_client(redis, namespace, expect=3) as (mesh, _):
        # A fixed number of calls rather than a fixed time: the sample (warm-up included) is the same
        # size on a loaded machine as on an idle one.
        load = await load_of(mesh.stub(SERVICE, Stub), 600, workers=8)
    assert load.failures == []
    share = load.served_by["slow"] / load.ok
    assert share <= 0.20, f"slow instance got {share:.0%} of {load.ok} calls"


# --- static stability -------------------------------------------------------------------------------------


async def test_calls_keep_succeeding_while_redis_is_down(namespace):
    with tempfile.TemporaryDirectory(prefix="itsmesh-valkey-") as directory:
        valkey = PrivateValkey(Path(directory))
        await valkey.start()
        redis = open_redis(valkey.url)
        fleet = Fleet(redis, namespace)
        try:
            _, flaky, _ = await fleet.start("a", "flaky", "c")
            policy = ServicePolicy(breaker=BreakerConfig(consecutive_failures=2, cool_down_seconds=0.3))
            async with registry_client(redis, namespace, expect=3, policy=policy) as (mesh, watcher):
                stub = mesh.stub(SERVICE, Stub)
                stop = asyncio.Event()
                running = asyncio.ensure_future(run_load(stub, stop, workers=4))
                await asyncio.sleep(0.4)
                await valkey.kill()
                # Breaker transitions now happen with nowhere to write them; they must not hold calls up.
                flaky.servicer.failing = True
                await asyncio.sleep(1.5)
                assert not watcher.connected
                assert len(watcher.endpoints(SERVICE)) == 3
                ok_during_outage = await _ok_calls(stub, 20)
                stop.set()
                load = await running
            assert load.failures == [], failure_summary(load)
            assert ok_during_outage == 20
            assert load.served_by["a"] > 0
            assert load.served_by["c"] > 0
        finally:
            await fleet.close()
            await redis.aclose()
            await valkey.kill()


async def _ok_calls(stub: Stub, count: int) -> int:
    ok = 0
    for i in range(count):
        reply = await stub.GetCamera(camera(f"outage-{i}"), timeout=1.0)
        ok += reply.camera_id == f"outage-{i}"
    return ok


# --- retries ----------------------------------------------------------------------------------------------

# Breakers that never trip, so every attempt reaches a server and only the retry rules limit them.
NEVER_TRIP = BreakerConfig(consecutive_failures=None, minimum_requests=1_000_000)


async def test_total_attempts_stay_within_the_retry_budget_when_every_instance_fails(redis, namespace, fleet):
    for member in await fleet.start("a", "b", "c"):
        member.servicer.failing = True
    budget = BudgetConfig(ratio=0.2, min_retries_per_second=1.0, ttl_seconds=10.0)
    policy = ServicePolicy(
        breaker=NEVER_TRIP,
        retry=RetryPolicy(max_attempts=5, initial_backoff_seconds=0.001, max_backoff_seconds=0.005),
        budget=budget,
    )
    requests = 200
    async with registry_client(redis, namespace, expect=3, policy=policy) as (mesh, _):
        stub = mesh.stub(SERVICE, Stub)
        outcomes = await asyncio.gather(
            *(stub.GetCamera(camera(f"c{i}"), timeout=2.0) for i in range(requests)), return_exceptions=True
        )
    assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    assert {o.code() for o in outcomes} == {grpc.StatusCode.UNAVAILABLE}
    attempts = fleet.calls("GetCamera")
    assert requests < attempts <= (1 + budget.ratio) * requests + budget.floor


async def test_a_method_not_declared_idempotent_is_never_retried(redis, namespace, fleet):
    for member in await fleet.start("a", "b", "c"):
        member.servicer.failing = True
    policy = ServicePolicy(
        breaker=NEVER_TRIP, retry=RetryPolicy(max_attempts=5, initial_backoff_seconds=0.001)
    )
    async with registry_client(redis, namespace, expect=3, policy=policy) as (mesh, _):
        stub = mesh.stub(SERVICE, Stub)
        for i in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RegisterCamera(
                    streaming_pb2.RegisterCameraRequest(camera=common_pb2.Camera(camera_id=f"c{i}")),
                    timeout=2.0,
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        for i in range(5):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetCamera(camera(f"c{i}"), timeout=2.0)
    assert fleet.calls("RegisterCamera") == 20, "RegisterCamera has no idempotency_level: one attempt each"
    assert fleet.calls("GetCamera") == 25, "GetCamera is NO_SIDE_EFFECTS: all 5 attempts each"


async def test_retries_never_run_past_the_callers_deadline(redis, namespace, fleet):
    for member in await fleet.start("a", "b", "c"):
        member.servicer.failing = True
        member.servicer.delay_s = 0.03
    policy = ServicePolicy(
        breaker=NEVER_TRIP,
        retry=RetryPolicy(max_attempts=100, initial_backoff_seconds=0.01, max_backoff_seconds=0.05),
    )
    attempts: list[Attempt] = []
    async with registry_client(redis, namespace, expect=3, policy=policy, on_attempt=attempts.append) as (
        mesh,
        _,
    ):
        stub = mesh.stub(SERVICE, Stub)

        async def timed_call() -> tuple[float, float, grpc.StatusCode]:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetCamera(camera(), timeout=0.3)
            return started, time.monotonic() - started, caught.value.code()

        stop_probe = asyncio.Event()
        probe = asyncio.ensure_future(max_loop_lag(stop_probe))
        results = await asyncio.gather(*(timed_call() for _ in range(5)))
        stop_probe.set()
        lag = await probe
    for _, elapsed, code in results:
        assert elapsed < 0.3 + 0.05 + lag, f"ended {elapsed - 0.3:.3f} s late with the loop {lag:.3f} s late"
        assert code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    first_start = min(started for started, _, _ in results)
    assert len(attempts) > 5 * 3, "retries happened"
    assert max(a.started_at for a in attempts) < first_start + 0.3 + 0.01


async def test_resource_exhausted_is_retried_elsewhere_after_the_servers_pushback(namespace):
    fleet = Fleet(None, namespace)
    try:
        busy, _ = await fleet.start("busy", "ok")
        busy.servicer.pushback_s = 0.08
        policy = ServicePolicy(breaker=NEVER_TRIP, retry=RetryPolicy(max_attempts=2))
        attempts: list[Attempt] = []
        async with MeshClient.static(
            {SERVICE: fleet.addresses}, config=ClientConfig(default_policy=policy), on_attempt=attempts.append
        ) as mesh:
            stub = mesh.stub(SERVICE, Stub)
            for i in range(12):
                assert (await stub.GetCamera(camera(f"c{i}"), timeout=2.0)).name == "ok"
            retried = [
                (first, second) for first, second in itertools.pairwise(attempts) if second.number == 2
            ]
            assert retried, "some calls went to the busy instance first"
            for first, second in retried:
                assert (first.endpoint, first.code, second.endpoint) == (
                    busy.address,
                    "RESOURCE_EXHAUSTED",
                    fleet.addresses[1],
                )
                assert second.started_at - (first.started_at + first.duration_s) >= 0.08

            # A pushback longer than the policy's longest backoff is the caller's to honour, not ours.
            busy.servicer.pushback_s = 5.0
            fleet.members[1].servicer.pushback_s = 5.0
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetCamera(camera(), timeout=2.0)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert attempts[-1].number == 1
    finally:
        await fleet.close()


async def test_call_objects_behave_like_grpc_calls_and_a_closed_client_refuses_calls(namespace):
    fleet = Fleet(None, namespace)
    try:
        (member,) = await fleet.start("a")
        mesh = MeshClient.static({SERVICE: fleet.addresses})
        stub = mesh.stub(SERVICE, Stub)

        never_sent = stub.GetCamera(camera())
        assert never_sent.cancel()
        assert never_sent.cancelled()
        assert await never_sent.code() == grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await never_sent

        asked = stub.GetCamera(camera("asked"), timeout=2.0)
        assert await asked.code() == grpc.StatusCode.OK, "asking for the outcome sends the call"
        assert (await asked).camera_id == "asked"
        assert await asked.details() == ""
        assert asked.done()

        member.servicer.delay_s = 1.0
        slow = stub.GetCamera(camera(), timeout=2.0)
        waiting = asyncio.ensure_future(slow.code())
        await asyncio.sleep(0.1)
        assert slow.cancel()
        assert await waiting == grpc.StatusCode.CANCELLED
        assert slow.cancelled()

        await mesh.close()
        with pytest.raises(ClientClosedError):
            stub.GetCamera(camera())
        with pytest.raises(ClientClosedError):
            stub.StreamFrames()
    finally:
        await fleet.close()


# --- deadlines --------------------------------------------------------------------------------------------


class Front(streaming_pb2_grpc.StreamingServiceServicer):
    """A service whose GetCamera asks the echo service downstream, through the mesh, with no timeout."""

    def __init__(self, downstream: Stub) -> None:
        self._downstream = downstream

    async def GetCamera(self, request, context):
        return await self._downstream.GetCamera(request)


async def _front_server(downstream: Stub, interceptors) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=interceptors)
    streaming_pb2_grpc.add_StreamingServiceServicer_to_server(Front(downstream), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_deadline_set_on_an_inbound_call_reaches_the_downstream_call(redis, namespace, fleet):
    (echo,) = await fleet.start("a")
    async with registry_client(redis, namespace, expect=1) as (mesh, _):
        downstream = mesh.stub(SERVICE, Stub)
        propagating, propagating_address = await _front_server(downstream, [DeadlinePropagationInterceptor()])
        plain, plain_address = await _front_server(downstream, [])
        # the same job as a link of the server's one interceptor hop
        chained, chained_address = await _front_server(
            downstream, server_interceptors("front", registry=CollectorRegistry(), propagate_deadline=True)
        )
        try:
            for address in (propagating_address, plain_address, chained_address):
                async with grpc.aio.insecure_channel(address) as channel:
                    await Stub(channel).GetCamera(camera(), timeout=1.5)
        finally:
            await propagating.stop(None)
            await plain.stop(None)
            await chained.stop(None)
    with_interceptor, without, with_chain = echo.servicer.deadlines
    # gRPC measures time_remaining() against the wall clock: allow it a few milliseconds of drift.
    for inherited in (with_interceptor, with_chain):
        assert inherited is not None
        assert 1.0 < inherited < 1.5 + 0.02
    assert without is None, "grpc Python does not pass a deadline on by itself"


# --- nothing to call --------------------------------------------------------------------------------------


async def test_no_endpoints_is_unavailable_naming_the_service(redis, namespace):
    async with registry_client(redis, namespace) as (mesh, _):
        stub = mesh.stub("alert", Stub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetCamera(camera(), timeout=1.0)
        with pytest.raises(NoEndpointsError):
            stub.StreamFrames()
    error = caught.value
    assert isinstance(error, NoEndpointsError)
    assert isinstance(error, MeshUnavailable)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "no registered instances of 'alert'"
    assert error.retriable


async def test_static_endpoints_all_open_is_unavailable_saying_so(namespace):
    fleet = Fleet(None, namespace)
    try:
        for member in await fleet.start("a", "b"):
            member.servicer.failing = True
        policy = ServicePolicy(
            breaker=BreakerConfig(consecutive_failures=1, cool_down_seconds=60.0),
            retry=RetryPolicy(max_attempts=1),
        )
        async with MeshClient.static(
            {SERVICE: fleet.addresses}, config=ClientConfig(default_policy=policy)
        ) as mesh:
            stub = mesh.stub(SERVICE, Stub)
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetCamera(camera(), timeout=1.0)
                assert "failing on purpose" in (caught.value.details() or "")
            with pytest.raises(CircuitOpenError) as caught_open:
                await stub.GetCamera(camera(), timeout=1.0)
            assert fleet.calls("GetCamera") == 2
    finally:
        await fleet.close()
    assert caught_open.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught_open.value.details() == "all 2 instances of 'echo' have open circuit breakers"
