"""A whole itsmesh on private infrastructure, every service its own process, for fault and soak runs.

PostgreSQL and the Kafka-protocol broker are embedded and private (so the first admin, the signing keys
and the consumer group belong to this system alone); PostgreSQL and Redis (a private valkey) can be
stopped and started again on the same port, PostgreSQL on the same data directory. Services run as
`python -m services.cli serve NAME` on fixed free ports, so a restarted process answers where the clients
already point; the console is one of them (HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from infrastructure.embedded import EmbeddedInfra, free_ports
from itsmesh.v1 import events_pb2
from mesh.events import CAMERA_DETECTIONS_TOPIC, TELEMETRY_READINGS_TOPIC
from mesh.migrations import apply_migrations
from mesh.probe import probe_grpc, probe_http
from services.simulator import driver
from services.simulator.config import SimulatorSettings
from services.simulator.driver import RunProgress, RunTarget, Simulation
from services.simulator.plan import Plan, SimulationOptions, build_plan, truth_records
from tests.e2e.fault_postgres import PrivatePostgres
from tests.integration.private_valkey import PrivateValkey, free_port

SERVICES = ("auth", "streaming", "analytics", "alert", "console")
HTTP_SERVICES = frozenset({"console"})
ADMIN_PASSWORD = "fault-suite admin password"
STARTUP_TIMEOUT_S = 90.0
SETTLE_TIMEOUT_S = 60.0
OUTBOX_BACKOFF_MAX_S = 2.0


@dataclass
class ServiceProcess:
    """One `itsmesh serve NAME` child that can be killed and started again on the same port."""

    name: str
    port: int
    """Its gRPC port, or its HTTP port for the console."""
    env: dict[str, str]
    log_dir: Path
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of an HTTP service."""
        return f"http://{self.address}"

    async def serving(self) -> bool:
        """Whether it answers its health check now (gRPC health, the console's /healthz)."""
        if self.name in HTTP_SERVICES:
            return (await probe_http(f"{self.url}/healthz", timeout_s=1.0)).serving
        return (await probe_grpc(self.address, timeout_s=1.0)).serving

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        log_file: IO[bytes] = (self.log_dir / f"{self.name}.log").open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *("-m", "services.cli", "serve", self.name),
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                # No preexec function: running Python in a child forked from a process with gRPC threads
                # can crash it before exec; without one the child is spawned (vfork) safely.
                start_new_session=True,
            )
        finally:
            log_file.close()

    async def wait_serving(self, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
        """Seconds until the process answers SERVING; fails with its log tail when it never does."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc is not None and self.proc.returncode is not None:
                break
            if await self.serving():
                return time.monotonic() - started
            await asyncio.sleep(0.2)
        tail = (self.log_dir / f"{self.name}.log").read_text(errors="replace")[-3000:]
        code = None if self.proc is None else self.proc.returncode
        raise AssertionError(f"{self.name} (exit code {code}) not serving at {self.address}; log:\n{tail}")

    async def kill(self) -> None:
        """kill -9: no drain, no deregistration, no flush."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def restart(self) -> float:
        """Start again after a kill; seconds until it serves."""
        self.restarts += 1
        await self.start()
        return await self.wait_serving()

    async def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            await self.kill()


@dataclass
class FaultSystem:
    """The running system: infrastructure handles, the service processes and the URLs clients use."""

    data_dir: Path
    database_url: str
    kafka_bootstrap: str
    valkey: PrivateValkey
    postgres: PrivatePostgres
    broker: EmbeddedInfra
    auth_http_port: int
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def broker_pid(self) -> int:
        return self.broker.pids()["kafka"]

    @contextlib.asynccontextmanager
    async def kafka_frozen(self) -> AsyncIterator[None]:
        """SIGSTOP the broker for the body, SIGCONT after it (also on failure)."""
        pid = self.broker_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    async def restart_redis(self, down_s: float) -> None:
        """Kill Redis, keep it down for `down_s`, start it again empty on the same port."""
        await self.valkey.kill()
        await asyncio.sleep(down_s)
        await self.valkey.start()

    async def restart_postgres(self, down_s: float) -> None:
        """Stop PostgreSQL (fast shutdown), keep it down for `down_s`, start it again on the same data."""
        await self.postgres.stop()
        await asyncio.sleep(down_s)
        await self.postgres.start()

    def simulator_settings(self) -> SimulatorSettings:
        return SimulatorSettings(
            streaming_address=self.services["streaming"].address,
            auth_address=self.services["auth"].address,
            analytics_address=self.services["analytics"].address,
            redis_url=self.valkey.url,
            auth_url=f"http://127.0.0.1:{self.auth_http_port}",
            data_dir=self.data_dir,
            admin_password=ADMIN_PASSWORD,
        )

    def plan(
        self, duration_s: float, seed: int, cameras: int = 1, devices: int = 2, *, fps: float = 5.0
    ) -> Plan:
        """A load phase: cameras streaming frames with edge detections, devices signing telemetry.

        Ids are made from `seed`, so each phase of one system needs its own seed. At 5 fps the tracker
        may miss a vehicle occluded at the counting line; at 10 fps it counts the scenes exactly.
        """
        options = SimulationOptions(
            cameras=cameras,
            devices=devices,
            fps=fps,
            duration_s=duration_s,
            seed=seed,
            readings_per_second=2.0,
            width_px=640,
            height_px=360,
            vehicles_per_minute=60.0,
            prefix=f"s{seed}",  # scenes follow the camera ids: the same seed, the same vehicles
        )
        return build_plan(options)

    async def run_load(
        self, plan: Plan, fault: Callable[[], object] | None = None, fault_after_s: float = 1.0
    ) -> RunProgress:
        """Stream `plan` in real time; `fault()` (a coroutine factory) runs once streaming is under way.

        The clients wait up to SETTLE_TIMEOUT_S for their last items to settle: a streaming instance
        killed mid-publish leaves its telemetry claims pending in Redis until they expire (30 s).
        """
        previous = driver.FLUSH_TIMEOUT_S
        setattr(driver, "FLUSH_TIMEOUT_S", SETTLE_TIMEOUT_S)  # noqa: B010 - a Final, no argument sets it
        try:
            return await self._run_load(plan, fault, fault_after_s)
        finally:
            setattr(driver, "FLUSH_TIMEOUT_S", previous)  # noqa: B010 - as above

    async def _run_load(
        self, plan: Plan, fault: Callable[[], object] | None, fault_after_s: float
    ) -> RunProgress:
        simulation = Simulation(plan, RunTarget(self.simulator_settings()), truth_path=None)
        running = asyncio.create_task(simulation.run(asyncio.Event()), name="fault-load")
        if fault is not None:
            while not simulation.progress.start_time or time.time() < (
                simulation.progress.start_time + fault_after_s
            ):
                if running.done():
                    break
                await asyncio.sleep(0.05)
            outcome = fault()
            if asyncio.iscoroutine(outcome):
                await outcome
        return await running


async def _start_services(system: FaultSystem, base_env: dict[str, str]) -> None:
    log_dir = system.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in SERVICES:
        port = free_port()
        kind = "HTTP" if name in HTTP_SERVICES else "GRPC"
        env = {**base_env, f"ITSMESH_{name.upper()}_{kind}_PORT": str(port)}
        system.services[name] = ServiceProcess(name, port, env, log_dir)
    auth = system.services["auth"]
    await auth.start()  # the others read the credentials file auth provisions
    await auth.wait_serving()
    for name in SERVICES[1:]:
        await system.services[name].start()
    await asyncio.gather(*(system.services[n].wait_serving() for n in SERVICES[1:]))


def _base_env(system: FaultSystem, redis_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS") and not k.startswith("ITSMESH_")
    }
    env.update(
        DATABASE_URL=system.database_url,
        REDIS_URL=redis_url,
        KAFKA_BOOTSTRAP_SERVERS=system.kafka_bootstrap,
        ITSMESH_DATA_DIR=str(system.data_dir),
        ITSMESH_AUTH_URL=f"http://127.0.0.1:{system.auth_http_port}",
        ITSMESH_AUTH_HTTP_PORT=str(system.auth_http_port),
        ITSMESH_AUTH_PROVISION_SERVICE_ACCOUNTS=",".join(SERVICES[1:]),
        ITSMESH_AUTH_LOCKOUT_IP_THRESHOLD="10000",
        ITSMESH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        # The relay backs off up to this long while alert is down (default 30 s): a short outage here.
        ITSMESH_ANALYTICS_OUTBOX_BACKOFF_MAX_S=str(OUTBOX_BACKOFF_MAX_S),
    )
    for name in SERVICES:
        prefix = f"ITSMESH_{name.upper()}_"
        env[prefix + "MIGRATE_ON_START"] = "false"
        env[prefix + "BIND_HOST"] = "127.0.0.1"
        env[prefix + "DRAIN_GRACE_S"] = "2"
    return env


@asynccontextmanager
async def fault_system(data_dir: Path) -> AsyncIterator[FaultSystem]:
    """A private PostgreSQL, broker and Redis, and the services, each its own process."""
    async with AsyncExitStack() as stack:
        postgres = PrivatePostgres(data_dir / "postgres")
        await postgres.start()
        stack.push_async_callback(postgres.stop)
        valkey_dir = data_dir / "valkey"
        valkey_dir.mkdir(parents=True)
        valkey = PrivateValkey(valkey_dir)
        await valkey.start()
        stack.push_async_callback(valkey.kill)
        broker = EmbeddedInfra(
            data_dir / "infra",
            ports=free_ports(),
            env={"REDIS_URL": valkey.url, "DATABASE_URL": postgres.url},
        )
        urls = await stack.enter_async_context(broker)
        await apply_migrations(urls.database_url)
        system = FaultSystem(
            data_dir=data_dir,
            database_url=urls.database_url,
            kafka_bootstrap=urls.kafka_bootstrap_servers,
            valkey=valkey,
            postgres=postgres,
            broker=broker,
            auth_http_port=free_port(),
        )

        async def stop_services() -> None:
            await asyncio.gather(*(s.stop() for s in system.services.values()))

        stack.push_async_callback(stop_services)
        await _start_services(system, _base_env(system, valkey.url))
        yield system


# --- what the clients saw and what arrived ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """Every item a load phase had acknowledged: (source id, sequence) of frames and of readings."""

    frames: frozenset[tuple[str, int]]
    readings: frozenset[tuple[str, int]]


def acknowledged(plan: Plan, progress: RunProgress) -> Expected:
    """Every planned item, once the run settled all of them (asserted: nothing rejected or left over)."""
    base = int(progress.start_time * 1000)
    problems = [
        f"{s.source_id}: {s.error or 'unsettled'} {s.counters}"
        for s in progress.sources
        if s.error or s.counters.buffered or s.counters.rejected or s.generated != s.planned
    ]
    assert not problems, "load did not settle:\n" + "\n".join(problems)
    frames = {(c.camera_id, base + f.sequence) for c in plan.cameras for f in c.frames()[0]}
    readings = {(d.device_id, base + r.sequence) for d in plan.fleet.devices for r in plan.fleet.readings(d)}
    return Expected(frozenset(frames), frozenset(readings))


def counted_vehicles(plan: Plan, start_time: float) -> int:
    """Vehicles the ground truth says cross a counting line during the run."""
    records = truth_records(plan, start_time, run_id="faults")
    return sum(1 for r in records if r["type"] == "vehicle" and r["counted"])


@dataclass(frozen=True, slots=True)
class TopicView:
    """Records of one topic for some sources: event ids per (source, sequence) and records per event id."""

    ids_by_item: dict[tuple[str, int], set[str]]
    records_by_id: Counter[str]


async def read_topic(bootstrap: str, topic: str, sources: Iterable[str]) -> TopicView:
    """Every record of `topic` (from the start up to the end offsets now) whose key is one of `sources`."""
    wanted = {s.encode() for s in sources}
    decode = (
        events_pb2.CameraDetectionEvent.FromString
        if topic == CAMERA_DETECTIONS_TOPIC
        else events_pb2.TelemetryReading.FromString
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer.topics()  # refresh metadata once: the topic may be new to this client
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 30
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic} was not read to its end in 30 s"
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for batch in batches.values():
                for record in batch:
                    if record.key not in wanted or record.value is None:
                        continue
                    event = decode(record.value)
                    header = dict(record.headers).get("event-id", b"").decode()
                    assert header == event.event_id, "event-id header differs from the payload"
                    source = (
                        event.camera_id
                        if isinstance(event, events_pb2.CameraDetectionEvent)
                        else event.device_id
                    )
                    ids[(source, event.sequence)].add(event.event_id)
                    counts[event.event_id] += 1
    finally:
        await consumer.stop()
    return TopicView(dict(ids), counts)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one phase's acknowledged items ended up, as counts (empty lists = nothing wrong)."""

    missing_in_topic: list[tuple[str, int]]
    two_event_ids: list[tuple[str, int]]
    redelivered_records: int
    missing_rows: list[tuple[str, int]]
    duplicate_rows: list[tuple[str, int]]
    unprocessed_frames: list[str]


def topic_problems(
    expected: frozenset[tuple[str, int]], view: TopicView
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Acknowledged items absent from the topic, items under two event ids, and repeated records."""
    missing = sorted(expected - view.ids_by_item.keys())
    split = sorted(item for item in expected if len(view.ids_by_item.get(item, ())) > 1)
    redelivered = sum(n - 1 for n in view.records_by_id.values())
    return missing, split, redelivered


async def reading_rows(database_url: str, devices: Iterable[str]) -> Counter[tuple[str, int]]:
    """Rows of analytics.telemetry_readings per (device_id, seq) of `devices`."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT device_id, seq, count(*) AS n FROM analytics.telemetry_readings "
            "WHERE device_id = ANY($1::text[]) GROUP BY device_id, seq",
            list(devices),
        )
    finally:
        await conn.close()
    return Counter({(r["device_id"], int(r["seq"])): int(r["n"]) for r in rows})


async def processed_events(database_url: str, event_ids: Iterable[str]) -> set[str]:
    """Which of `event_ids` analytics has applied (analytics.processed_events)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_id FROM analytics.processed_events WHERE event_id = ANY($1::text[])",
            list(event_ids),
        )
    finally:
        await conn.close()
    return {r["event_id"] for r in rows}


async def passage_duplicates(database_url: str, cameras: Iterable[str]) -> tuple[int, list[str]]:
    """Passages of `cameras`, and the crossings (camera, line, lane, time) stored more than once.

    The track id is left out of the key: a restarted tracker numbers its tracks anew, and the same
    crossing stored under two track ids is still a duplicate.
    """
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchval(
            "SELECT count(*) FROM analytics.vehicle_passages WHERE camera_id = ANY($1::text[])",
            list(cameras),
        )
        rows = await conn.fetch(
            "SELECT camera_id, line_id, lane, time, count(*) AS n FROM analytics.vehicle_passages "
            "WHERE camera_id = ANY($1::text[]) GROUP BY 1, 2, 3, 4 HAVING count(*) > 1",
            list(cameras),
        )
    finally:
        await conn.close()
    return int(total), [f"{r['camera_id']}/{r['line_id']}/{r['lane']}@{r['time']}" for r in rows]


async def delivery(system: FaultSystem, plan: Plan, expected: Expected, timeout_s: float = 45.0) -> Delivery:
    """Wait until analytics holds every acknowledged reading (or time runs out), then compare all."""
    cameras = [c.camera_id for c in plan.cameras]
    devices = [d.device_id for d in plan.fleet.devices]
    frames = await read_topic(system.kafka_bootstrap, CAMERA_DETECTIONS_TOPIC, cameras)
    readings = await read_topic(system.kafka_bootstrap, TELEMETRY_READINGS_TOPIC, devices)
    missing_frames, split_frames, again_frames = topic_problems(expected.frames, frames)
    missing_readings, split_readings, again_readings = topic_problems(expected.readings, readings)
    frame_ids = {i for item in expected.frames for i in frames.ids_by_item.get(item, ())}
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await reading_rows(system.database_url, devices)
        missing_rows = sorted(expected.readings - rows.keys())
        unprocessed = sorted(frame_ids - await processed_events(system.database_url, frame_ids))
        if (not missing_rows and not unprocessed) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return Delivery(
        missing_in_topic=missing_frames + missing_readings,
        two_event_ids=split_frames + split_readings,
        redelivered_records=again_frames + again_readings,
        missing_rows=missing_rows,
        duplicate_rows=sorted(k for k, n in rows.items() if n > 1),
        unprocessed_frames=unprocessed,
    )
