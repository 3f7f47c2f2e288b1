"""Client side of the mesh: generated stubs whose calls pick an endpoint, fail over, retry, carry deadlines.

::

    async with await MeshClient.from_registry(settings.redis_url, ["alert"]) as mesh:
        alerts = mesh.stub("alert", alert_pb2_grpc.AlertServiceStub)
        alert = await alerts.GetAlert(request, timeout=2.0)

``stub`` hands the generated stub class a channel-like object whose multicallables choose an endpoint for
every call (for a stream, once, when it starts), so every method keeps its usual signature. Per service:

- **endpoints** come from an ``EndpointSource``: the registry ``Watcher`` (last known endpoints, so a Redis
  outage never stops traffic) or ``StaticEndpoints`` (a fixed list, for edge devices and tests);
- **channels**: one grpc.aio channel per endpoint, opened on first use, closed (after its calls finish)
  when the endpoint leaves discovery;
- **balancing**: power-of-two-choices on peak-EWMA latency * outstanding (default) or round-robin, fed
  with every unary attempt's latency;
- **circuit breakers**: one per endpoint, consulted by the picker; transitions are logged and written to
  Redis in the background (``BreakerKeys``) for the console, and dropped if Redis is away;
- **retries**: unary calls of methods whose proto declares them idempotent (``mesh.idempotency``), on
  retryable codes only (``retry_code``), with jittered backoff or the server's RetryInfo pushback,
  within a retry budget shared by the service's calls, never past the deadline, preferring an endpoint
  not tried yet;
- **deadlines**: each call runs until the earlier of its ``timeout`` and the deadline of the request
  being handled (``mesh.deadline``);
- **telemetry**: each attempt gets a CLIENT span whose ``traceparent`` travels in its metadata, and
  Prometheus metrics; recorded here, in the attempt loop, not by a grpc.aio interceptor, which would cost
  every call an intercepted call object and a task;
- **connection failures**: an endpoint that refuses connections is reported with ``mark_failed`` and so
  leaves rotation at once; a call whose connection dropped under it triggers one reconnect attempt, and
  a refusal reports the endpoint the same way (a process killed with -9 shows both).

Errors: every failed call raises ``grpc.aio.AioRpcError``: the server's status passed through, or a
``mesh.errors.MeshRpcError`` when the mesh ends the call itself: ``NoEndpointsError`` and
``CircuitOpenError`` (UNAVAILABLE, details naming the service and the reason) or ``MeshDeadlineExceeded``.
Streams are not retried, and a stream that cannot start raises when it is created. Like a closed
grpc.aio channel, a closed client raises a ``grpc.aio.UsageError`` (``ClientClosedError``).

Defaults live in ``ServicePolicy`` (per-service behaviour) and ``ClientConfig`` (channels, Redis keys);
``DEFAULT_POLICY`` is the policy of any service without its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Protocol, Self, TypeVar

import grpc
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mesh.balancer import EndpointStats, PeakEwmaP2C, RoundRobin
from mesh.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition, WindowCounts
from mesh.channels import (
    DEFAULT_CHANNEL_OPTIONS,
    DEFAULT_CLOSE_GRACE_S,
    ChannelOptions,
    ChannelPool,
    EndpointChannel,
)
from mesh.deadline import current_deadline, effective_deadline
from mesh.endpoints import EndpointsChange, Instance
from mesh.errors import (
    CircuitOpenError,
    ClientClosedError,
    MeshDeadlineExceeded,
    NoEndpointsError,
    is_connect_failure,
    is_connection_lost,
    retry_pushback,
)
from mesh.idempotency import is_idempotent
from mesh.interceptors import client_observer
from mesh.interceptors._rpc import (
    Finish,
    ObserverChain,
    ObservingClientInterceptor,
    RpcInfo,
    client_code,
    contains_observer,
    rpc_info,
    take_observers,
)
from mesh.interceptors.metrics import (
    MeshMetrics,
    MetricsClientInterceptor,
    forget_breaker,
    set_breaker_state,
)
from mesh.registry import DEFAULT_NAMESPACE, Watcher, open_redis
from mesh.retry import Retrier, RetryBudget, RetryPolicy, code_name
from mesh.tasks import stop_task
from mesh.tls import TlsSettings

log = logging.getLogger(__name__)

_S = TypeVar("_S")

Clock = Callable[[], float]
BalancerKind = Literal["p2c", "round_robin"]
Verdict = Literal["success", "failure", "neutral"]

DEFAULT_FAILURE_CODES: Final = frozenset({"UNAVAILABLE", "UNKNOWN", "INTERNAL", "DATA_LOSS"})
"""Status codes that count against an endpoint's circuit breaker: the endpoint is down or broken."""

# The caller gave up or ran out of time: says nothing about the endpoint either way. (A slow endpoint is
# still avoided: the attempt's full duration feeds its latency estimate.)
_NEUTRAL_CODES: Final = frozenset({"CANCELLED", "DEADLINE_EXCEEDED"})

DEFAULT_BREAKER_NAMESPACE: Final = "itsmesh:breakers"
"""Prefix of the Redis keys breaker transitions are written to (see ``BreakerKeys``)."""
BREAKER_RECORD_TTL_S: Final = 86_400
"""A service's breaker hash expires this long after its last transition, so departed services vanish."""
_PUBLISH_TIMEOUT_S: Final = 2.0
_RECONNECT_CHECK_S: Final = 1.0
_MAX_PENDING_RECORDS: Final = 1000
_REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)


def breaker_verdict(code: str, failure_codes: frozenset[str]) -> Verdict:
    """How a call that ended with status ``code`` (a name) counts for its endpoint's breaker.

    ``failure`` for ``failure_codes``; ``neutral`` (the slot is released, nothing recorded) for CANCELLED
    and DEADLINE_EXCEEDED; ``success`` for everything else, including application errors such as
    NOT_FOUND, which prove the endpoint is up and answering.
    """
    if code in failure_codes:
        return "failure"
    if code in _NEUTRAL_CODES:
        return "neutral"
    return "success"


def retry_code(code: str) -> str:
    """The status a failed attempt counts as when deciding on a retry.

    A call the caller cancelled ends in ``asyncio.CancelledError``, never in a CANCELLED status, so a
    CANCELLED status comes from the other side: a server shutting down cancels the calls it received but
    had not yet handed to a handler. That is the server going away, and counts as UNAVAILABLE.
    """
    return "UNAVAILABLE" if code == "CANCELLED" else code


# --- configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """Shape of a service's retry budget (see ``mesh.retry.RetryBudget``).

    - ``ratio`` (0.2): retries allowed per request over the window;
    - ``min_retries_per_second`` (10.0): retries allowed whatever the traffic, so quiet callers can retry;
    - ``ttl_seconds`` (10.0): the sliding window.

    Within any window, attempts <= (1 + ratio) * requests + min_retries_per_second * ttl_seconds.
    """

    ratio: float = 0.2
    min_retries_per_second: float = 10.0
    ttl_seconds: float = 10.0

    def __post_init__(self) -> None:
        self.build()  # validates

    @property
    def floor(self) -> float:
        """Retries allowed per window regardless of traffic."""
        return self.min_retries_per_second * self.ttl_seconds

    def build(self) -> RetryBudget:
        """A fresh budget with this shape."""
        return RetryBudget(
            ratio=self.ratio,
            min_retries_per_second=self.min_retries_per_second,
            ttl_seconds=self.ttl_seconds,
        )


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """How calls to one service are balanced, broken and retried; the defaults suit unary RPCs.

    - ``balancer`` ("p2c"): power-of-two-choices on peak-EWMA cost, or "round_robin";
    - ``ewma_decay_seconds`` (10.0): how fast a latency estimate forgets a slow sample;
    - ``breaker``: per-endpoint breaker thresholds (``BreakerConfig`` defaults);
    - ``retry``: attempts, retryable codes and backoff (``RetryPolicy`` defaults: 3 attempts on
      UNAVAILABLE and RESOURCE_EXHAUSTED, 25 ms full-jitter backoff doubling up to 1 s); a server pushback
      longer than ``max_backoff_seconds`` is not waited for: the error goes back to the caller;
    - ``budget``: the retry budget shared by all calls to the service;
    - ``failure_codes``: status codes that count against an endpoint's breaker.
    """

    balancer: BalancerKind = "p2c"
    ewma_decay_seconds: float = 10.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    failure_codes: frozenset[str] = DEFAULT_FAILURE_CODES

    def __post_init__(self) -> None:
        if self.balancer not in ("p2c", "round_robin"):
            raise ValueError(f"balancer must be 'p2c' or 'round_robin', got {self.balancer!r}")
        if not (math.isfinite(self.ewma_decay_seconds) and self.ewma_decay_seconds > 0.0):
            raise ValueError("ewma_decay_seconds must be a positive number")
        # Frozen dataclass: normalising a field in __post_init__ has to go through object.__setattr__.
        object.__setattr__(self, "failure_codes", frozenset(code_name(c) for c in self.failure_codes))


DEFAULT_POLICY: Final = ServicePolicy()
"""The policy of every service that ``ClientConfig.policies`` does not name."""


def _default_client_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything about a ``MeshClient`` that is data rather than a live object.

    - ``default_policy`` / ``policies``: behaviour per service (``policies[service]`` wins);
    - ``channel_options``: options of every endpoint channel (``mesh.channels.DEFAULT_CHANNEL_OPTIONS``);
    - ``channel_close_grace_s`` (30.0): how long a departed endpoint's calls and streams may finish;
    - ``breaker_namespace``: prefix of the Redis keys breaker transitions go to;
    - ``client_id``: how this client names itself in those records (host and pid by default);
    - ``tls``: TLS/mTLS of the endpoint channels (default: ``ITSMESH_TLS_*`` from the environment).
    """

    default_policy: ServicePolicy = DEFAULT_POLICY
    policies: Mapping[str, ServicePolicy] = field(default_factory=dict, hash=False)
    channel_options: ChannelOptions = DEFAULT_CHANNEL_OPTIONS
    channel_close_grace_s: float = DEFAULT_CLOSE_GRACE_S
    breaker_namespace: str = DEFAULT_BREAKER_NAMESPACE
    client_id: str = field(default_factory=_default_client_id)
    tls: TlsSettings = field(default_factory=TlsSettings, hash=False)

    def __post_init__(self) -> None:
        if not self.channel_close_grace_s >= 0.0:
            raise ValueError("channel_close_grace_s must be non-negative")
        # Frozen dataclass: the read-only copy keeps a caller's later edits out of the config.
        object.__setattr__(self, "policies", MappingProxyType(dict(self.policies)))
        object.__setattr__(self, "channel_options", tuple(self.channel_options))

    def policy_for(self, service: str) -> ServicePolicy:
        """The policy calls to ``service`` follow."""
        return self.policies.get(service, self.default_policy)


# --- what the client reports --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a call (one stream, for streaming calls), reported to ``on_attempt`` as it ends.

    ``number`` is 1 for the first attempt; ``code`` the status name ("OK" on success); ``started_at`` is on
    the client's clock; ``retrying`` says whether another attempt follows.
    """

    service: str
    method: str
    endpoint: str
    number: int
    code: str
    started_at: float
    duration_s: float
    retrying: bool


AttemptHook = Callable[[Attempt], None]


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """What the client knows about one endpoint now, for status tables and metrics."""

    service: str
    address: str
    instance_id: str
    breaker: BreakerState
    window: WindowCounts
    outstanding: int
    latency_s: float


@dataclass(frozen=True, slots=True)
class BreakerKeys:
    """Redis names of the breaker records under one namespace.

    ``{ns}:{service}`` is a hash: field = endpoint address, value = the latest ``BreakerRecord`` as JSON
    (whichever client reported it last); ``{ns}:events`` is a pub/sub channel carrying every record.
    """

    namespace: str = DEFAULT_BREAKER_NAMESPACE

    def service(self, service: str) -> str:
        """Key of the hash of ``service``'s endpoint breaker states."""
        return f"{self.namespace}:{service}"

    @property
    def events(self) -> str:
        """Pub/sub channel of breaker transitions."""
        return f"{self.namespace}:events"


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """A breaker transition as written to Redis: where, from which state to which, when (Unix s) and why."""

    service: str
    endpoint: str
    instance_id: str
    state: str
    previous: str
    reason: str
    at: float
    client: str

    def to_json(self) -> str:
        """The record as compact JSON."""
        return json.dumps(
            {
                "service": self.service,
                "endpoint": self.endpoint,
                "instance_id": self.instance_id,
                "state": self.state,
                "previous": self.previous,
                "reason": self.reason,
                "at": self.at,
                "client": self.client,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> BreakerRecord:
        """Parse ``to_json`` output; ValueError if it is not a breaker record."""
        try:
            data = json.loads(raw)
            return cls(
                service=str(data["service"]),
                endpoint=str(data["endpoint"]),
                instance_id=str(data.get("instance_id", "")),
                state=str(data["state"]),
                previous=str(data.get("previous", "")),
                reason=str(data.get("reason", "")),
                at=float(data["at"]),
                client=str(data.get("client", "")),
            )
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a breaker record: {exc}") from exc


async def read_breakers(
    redis: Redis, service: str, *, namespace: str = DEFAULT_BREAKER_NAMESPACE
) -> dict[str, BreakerRecord]:
    """The latest breaker record of each endpoint of ``service``, by address (for the console)."""
    raw = await redis.hgetall(BreakerKeys(namespace).service(service))
    records: dict[str, BreakerRecord] = {}
    for key, value in raw.items():
        address = key.decode() if isinstance(key, bytes) else str(key)
        try:
            records[address] = BreakerRecord.from_json(value)
        except ValueError:
            log.warning("skipping a malformed breaker record", extra={"service": service, "field": address})
    return records


# --- where endpoints come from ------------------------------------------------------------------------------


class EndpointSource(Protocol):
    """Routable instances per service, kept current; ``mesh.registry.Watcher`` is the usual one."""

    def endpoints(self, service: str) -> list[Instance]:
        """The instances calls to ``service`` may go to now."""
        ...

    def mark_failed(self, service: str, instance_id: str) -> None:
        """Take an instance out of rotation because connecting to it failed."""
        ...

    def add_listener(self, callback: Callable[[EndpointsChange], None]) -> Callable[[], None]:
        """Call ``callback`` whenever a service's endpoints change; returns a function that removes it."""
        ...


class StaticEndpoints:
    """A fixed address list per service, for edge devices and tests: no Redis, nothing added or removed.

    ``mark_failed`` is a no-op: with no registry to readmit an instance, its circuit breaker ejects it
    and half-open probes bring it back.
    """

    def __init__(self, services: Mapping[str, Sequence[str]]) -> None:
        self._instances: dict[str, list[Instance]] = {}
        for service, addresses in services.items():
            if isinstance(addresses, str):
                raise TypeError(f"addresses of {service!r} must be a list of host:port, not one string")
            self._instances[service] = [Instance(service, address, address) for address in addresses]

    def endpoints(self, service: str) -> list[Instance]:
        """The configured instances of ``service`` (instance id = address)."""
        return list(self._instances.get(service, ()))

    def mark_failed(self, service: str, instance_id: str) -> None:
        """Nothing to do: the breaker takes the endpoint out."""

    def add_listener(self, callback: Callable[[EndpointsChange], None]) -> Callable[[], None]:
        """Static endpoints never change, so the callback is never called."""
        return lambda: None


def _log_failure(task: asyncio.Task[None]) -> None:
    """Done callback of background tasks: a task that died of an error says so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("mesh background task failed", exc_info=task.exception())


# --- breaker transitions to Redis ------------------------------------------------------------------------


class _BreakerPublisher:
    """Writes breaker records to Redis from a background task; calls only append to a bounded queue."""

    def __init__(self, redis: Redis, keys: BreakerKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._pending: deque[BreakerRecord] = deque(maxlen=_MAX_PENDING_RECORDS)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closed = False

    def publish(self, record: BreakerRecord) -> None:
        """Queue ``record``; never blocks, never raises for Redis."""
        if self._closed:
            return
        self._pending.append(record)
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mesh-breaker-publisher")
            self._task.add_done_callback(_log_failure)
        assert self._wake is not None
        self._wake.set()

    async def close(self) -> None:
        """Stop the task after one last attempt to write what is queued."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)
        await self._flush()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch = list(self._pending)
        self._pending.clear()
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                pipe = self._redis.pipeline(transaction=False)
                for record in batch:
                    key, value = self._keys.service(record.service), record.to_json()
                    pipe.hset(key, record.endpoint, value)
                    pipe.expire(key, BREAKER_RECORD_TTL_S)
                    pipe.publish(self._keys.events, value)
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            # Breaker records are for people watching the console; losing some must never slow calls.
            if not self._failing:
                log.warning(
                    "cannot write breaker transitions to Redis; dropping them until it answers",
                    extra={"dropped": len(batch), "error": repr(exc)},
                )
            self._failing = True
        else:
            if self._failing:
                log.info("writing breaker transitions to Redis again")
            self._failing = False


# --- one service --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Method:
    path: str
    serializer: Any
    deserializer: Any
    idempotent: bool
    info: RpcInfo


class _Route:
    """Endpoints, channels, breakers, picker and retry budget of one service, and the call loops."""

    def __init__(
        self,
        service: str,
        policy: ServicePolicy,
        *,
        source: EndpointSource,
        pool: ChannelPool,
        publisher: _BreakerPublisher | None,
        client_id: str,
        clock: Clock,
        rng: random.Random,
        on_attempt: AttemptHook | None,
        observer: ObservingClientInterceptor | None,
        metrics: MeshMetrics | None,
        spawn: Callable[[Any], bool],
    ) -> None:
        self.service = service
        self.policy = policy
        self.clock = clock
        self.closed = False
        self._source = source
        self._pool = pool
        self._publisher = publisher
        self._client_id = client_id
        self._on_attempt = on_attempt
        self._observer = observer
        self._metrics = metrics
        self._spawn = spawn
        self._breakers: dict[str, CircuitBreaker] = {}
        self._reconnecting: set[str] = set()
        self._instances: dict[str, Instance] = {}
        self._addresses: list[str] = []
        self._retrier = Retrier(policy.retry, policy.budget.build(), rng)
        self._picker: PeakEwmaP2C | RoundRobin
        self._rr_stats: dict[str, EndpointStats] = {}
        if policy.balancer == "p2c":
            self._picker = PeakEwmaP2C(rng, decay_seconds=policy.ewma_decay_seconds, admit=self._admit)
        else:
            self._picker = RoundRobin(rng, admit=self._admit)
        self.refresh(source.endpoints(service))

    @property
    def has_endpoints(self) -> bool:
        return bool(self._addresses)

    # -- endpoints ---------------------------------------------------------------------------------------

    def refresh(self, instances: Iterable[Instance]) -> None:
        """Adopt the current routable instances; departed ones lose their breaker and their channel."""
        fresh = {instance.address: instance for instance in instances}
        for address in self._instances.keys() - fresh.keys():
            if self._breakers.pop(address, None) is not None and self._metrics is not None:
                # no stale state scraped for a departed endpoint
                forget_breaker(self.service, address, registry=self._metrics.registry)
            self._rr_stats.pop(address, None)
            self._pool.retire(address)
        self._instances = fresh
        self._addresses = sorted(fresh)
        if isinstance(self._picker, PeakEwmaP2C):
            self._picker.retain(self._addresses)

    def status(self) -> list[EndpointStatus]:
        now = self.clock()
        rows = []
        for address in self._addresses:
            breaker = self._breaker(address)
            stats = self._stats(address)
            rows.append(
                EndpointStatus(
                    service=self.service,
                    address=address,
                    instance_id=self._instances[address].instance_id,
                    breaker=breaker.state(now),
                    window=breaker.window(now),
                    outstanding=stats.outstanding,
                    latency_s=stats.latency(now),
                )
            )
            self._drain(address, breaker)
        return rows

    def _breaker(self, address: str) -> CircuitBreaker:
        breaker = self._breakers.get(address)
        if breaker is None:
            breaker = self._breakers[address] = CircuitBreaker(self.policy.breaker)
            self._export_state(address, BreakerState.CLOSED)
        return breaker

    def _export_state(self, address: str, state: BreakerState) -> None:
        if self._metrics is not None:
            set_breaker_state(self.service, address, state, registry=self._metrics.registry)

    def _stats(self, address: str) -> EndpointStats:
        if isinstance(self._picker, PeakEwmaP2C):
            return self._picker.stats(address)
        stats = self._rr_stats.get(address)
        if stats is None:
            stats = self._rr_stats[address] = EndpointStats(self.policy.ewma_decay_seconds)
        return stats

    def _admit(self, address: str, now: float) -> bool:
        breaker = self._breaker(address)
        allowed = breaker.allow(now)
        self._drain(address, breaker)
        return allowed

    def _pick(self, now: float, avoid: Sequence[str]) -> str | None:
        if avoid:
            # A retry prefers an endpoint this call has not failed on yet, but takes any if none is left.
            untried = [address for address in self._addresses if address not in avoid]
            if untried:
                choice = self._picker.pick(untried, now)
                if choice is not None:
                    return choice
        return self._picker.pick(self._addresses, now)

    def _unusable(self, now: float) -> NoEndpointsError | CircuitOpenError:
        if not self._addresses:
            return NoEndpointsError(self.service)
        open_count = sum(self._breaker(a).state(now) is BreakerState.OPEN for a in self._addresses)
        return CircuitOpenError(self.service, instances=len(self._addresses), open_count=open_count)

    def _settle(self, address: str, code: str, now: float) -> None:
        breaker = self._breakers.get(address)
        if breaker is None:
            return  # the endpoint left while the call was running
        verdict = breaker_verdict(code, self.policy.failure_codes)
        if verdict == "success":
            breaker.record_success(now)
        elif verdict == "failure":
            breaker.record_failure(now)
        else:
            breaker.release(now)
        self._drain(address, breaker)

    def _drain(self, address: str, breaker: CircuitBreaker) -> None:
        transitions = breaker.drain_transitions()
        if transitions:
            self._report(address, transitions)

    def _report(self, address: str, transitions: list[Transition]) -> None:
        instance = self._instances.get(address)
        instance_id = instance.instance_id if instance is not None else ""
        wall_offset = time.time() - self.clock()
        self._export_state(address, transitions[-1].to_state)
        for transition in transitions:
            level = logging.WARNING if transition.to_state is BreakerState.OPEN else logging.INFO
            log.log(
                level,
                "circuit breaker %s -> %s",
                transition.from_state.value,
                transition.to_state.value,
                extra={
                    "service": self.service,
                    "endpoint": address,
                    "instance_id": instance_id,
                    "reason": transition.reason,
                },
            )
            if self._publisher is not None:
                self._publisher.publish(
                    BreakerRecord(
                        service=self.service,
                        endpoint=address,
                        instance_id=instance_id,
                        state=transition.to_state.value,
                        previous=transition.from_state.value,
                        reason=transition.reason,
                        at=transition.at + wall_offset,
                        client=self._client_id,
                    )
                )

    def _connection_verdict(self, address: str, code: grpc.StatusCode, details: str | None) -> None:
        """Take the endpoint out of rotation if the failure shows it cannot be connected to."""
        if is_connect_failure(code, details):
            self._mark_failed(address)
        elif is_connection_lost(code, details) and address not in self._reconnecting:
            # The connection dropped under the call: a process killed with -9 looks like this first. One
            # reconnect attempt tells a dead endpoint (refused at once) from a network blip.
            self._reconnecting.add(address)
            self._spawn(self._check_reconnect(address))

    async def _check_reconnect(self, address: str) -> None:
        try:
            endpoint = self._pool.existing(address)
            if endpoint is None:
                return
            channel = endpoint.channel
            async with asyncio.timeout(_RECONNECT_CHECK_S):
                state = channel.get_state(try_to_connect=True)
                while state is not grpc.ChannelConnectivity.READY:
                    if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                        self._mark_failed(address)
                        return
                    if state is grpc.ChannelConnectivity.SHUTDOWN:
                        return
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            return  # still connecting: no verdict, the breaker and the next calls decide
        finally:
            self._reconnecting.discard(address)

    def _mark_failed(self, address: str) -> None:
        instance = self._instances.get(address)
        if instance is None:
            return
        log.warning(
            "endpoint refuses connections; taking it out of rotation",
            extra={"service": self.service, "endpoint": address, "instance_id": instance.instance_id},
        )
        self._source.mark_failed(self.service, instance.instance_id)

    def _observe(
        self, method: str, address: str, number: int, code: str, started: float, ended: float, retrying: bool
    ) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(
                Attempt(self.service, method, address, number, code, started, ended - started, retrying)
            )
        except Exception:
            log.exception("on_attempt hook failed", extra={"service": self.service, "method": method})

    # -- calls -------------------------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise ClientClosedError(f"the mesh client is closed; cannot call {self.service!r}")

    async def run_unary(self, call: _UnaryUnaryCall) -> Any:
        """The attempt loop of one unary-unary call: pick, send, settle, maybe retry elsewhere."""
        clock = self.clock
        method = call.method
        deadline = call.deadline
        observer = self._observer
        self._retrier.budget.deposit(clock())
        avoid: list[str] = []
        last_error: grpc.aio.AioRpcError | None = None
        number = 0
        while True:
            number += 1
            if call.cancel_requested:
                raise asyncio.CancelledError
            now = clock()
            if deadline is not None and now >= deadline:
                raise last_error or MeshDeadlineExceeded(self.service, method.path)
            address = self._pick(now, avoid)
            if address is None:
                raise last_error or self._unusable(now)
            endpoint = self._pool.get(address)
            send = endpoint.unary_unary(method.path, method.serializer, method.deserializer)
            metadata = call.metadata
            finish: Finish | None = None
            if observer is not None:
                # Tracing and metrics of each attempt, here rather than in a grpc.aio interceptor (which
                # would cost every call an intercepted call object and a task of its own).
                metadata = _outgoing(metadata)
                finish = observer.observe(method.info, metadata)
            try:
                attempt = send(
                    call.request,
                    timeout=None if deadline is None else deadline - now,
                    metadata=metadata,
                    credentials=call.credentials,
                    wait_for_ready=call.wait_for_ready,
                    compression=call.compression,
                )
            except BaseException as exc:
                if finish is not None:
                    finish(client_code(exc))
                raise
            call.attempt = attempt
            stats = self._stats(address)
            token = stats.start(now)
            endpoint.call_started()
            try:
                response = await attempt
            except grpc.aio.AioRpcError as exc:
                ended = clock()
                stats.finish(token, ended, ok=False)
                code = exc.code()
                if finish is not None:
                    finish(code)
                self._settle(address, code.name, ended)
                self._connection_verdict(address, code, exc.details())
                delay = self._retry_delay(call, number, exc, ended) if method.idempotent else None
                self._observe(method.path, address, number, code.name, now, ended, delay is not None)
                if delay is None:
                    raise
                last_error = exc
                avoid.append(address)
                if delay > 0.0:
                    await call.sleep(delay)
            except BaseException as exc:  # cancelled, or a failure in this process (serializing...)
                ended = clock()
                stats.finish(token, ended, ok=False)
                if finish is not None:
                    finish(client_code(exc))
                self._settle(address, "CANCELLED", ended)  # says nothing about the endpoint
                raise
            else:
                ended = clock()
                stats.finish(token, ended, ok=True)
                if finish is not None:
                    finish(grpc.StatusCode.OK)
                self._settle(address, "OK", ended)
                self._observe(method.path, address, number, "OK", now, ended, False)
                return response
            finally:
                endpoint.call_ended()

    def _retry_delay(
        self, call: _UnaryUnaryCall, number: int, exc: grpc.aio.AioRpcError, now: float
    ) -> float | None:
        """Seconds to wait before retrying after attempt ``number`` failed with ``exc``; None: do not."""
        if call.cancel_requested:
            return None
        code = retry_code(exc.code().name)
        if code not in self.policy.retry.retryable_codes:
            return None
        pushback = retry_pushback(exc.trailing_metadata())
        if pushback is not None and pushback > self.policy.retry.max_backoff_seconds:
            return None
        decision = self._retrier.decide(number, code, now, call.deadline, pushback=pushback)
        if not decision.retry:
            log.debug(
                "not retrying",
                extra={"service": self.service, "method": call.method.path, "reason": decision.reason},
            )
            return None
        return decision.delay

    def start_stream(
        self,
        kind: Literal["unary_stream", "stream_unary", "stream_stream"],
        method: _Method,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> Any:
        """Open a streaming call on one endpoint, chosen now; its outcome is settled when it ends."""
        self.check_open()
        now = self.clock()
        deadline = effective_deadline(now, timeout, current_deadline())
        if deadline is not None and now >= deadline:
            raise MeshDeadlineExceeded(self.service, method.path)
        address = self._pick(now, ())
        if address is None:
            raise self._unusable(now)
        endpoint = self._pool.get(address)
        if kind == "unary_stream":
            send: Any = endpoint.unary_stream(method.path, method.serializer, method.deserializer)
        elif kind == "stream_unary":
            send = endpoint.stream_unary(method.path, method.serializer, method.deserializer)
        else:
            send = endpoint.stream_stream(method.path, method.serializer, method.deserializer)
        finish: Finish | None = None
        if self._observer is not None:
            metadata = _outgoing(metadata)
            finish = self._observer.observe(method.info, metadata)
        try:
            call = send(
                request,
                timeout=None if deadline is None else deadline - now,
                metadata=metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        except BaseException as exc:
            if finish is not None:
                finish(client_code(exc))
            raise
        endpoint.call_started()
        call.add_done_callback(partial(self._stream_done, method.path, endpoint, now, finish))
        return call

    def _stream_done(
        self, method: str, endpoint: EndpointChannel, started: float, finish: Finish | None, call: Any
    ) -> None:
        endpoint.call_ended()
        # Done callbacks are synchronous and the status accessors are coroutines (already resolved).
        spawned = self._spawn(self._settle_stream(method, endpoint.address, started, finish, call))
        if not spawned and finish is not None:
            finish(grpc.StatusCode.CANCELLED)  # the client closed, cancelling its streams

    async def _settle_stream(
        self, method: str, address: str, started: float, finish: Finish | None, call: Any
    ) -> None:
        try:
            code: grpc.StatusCode = await call.code()
        except BaseException:
            if finish is not None:
                finish(grpc.StatusCode.CANCELLED)
            raise
        if finish is not None:
            finish(code)
        ended = self.clock()
        self._settle(address, code.name, ended)
        self._connection_verdict(address, code, await call.details())
        self._observe(method, address, 1, code.name, started, ended, False)

    async def close(self, grace: float | None) -> None:
        self.closed = True
        await self._pool.close(grace)


# --- the calls and multicallables handed to generated stubs ----------------------------------------------

_PENDING: Final = 0
_RUNNING: Final = 1
_DONE: Final = 2


class _UnaryUnaryCall(grpc.aio.UnaryUnaryCall[Any, Any]):
    """A unary call through the mesh: awaiting it runs the attempt loop (in the awaiting task, no extra one).

    Like a grpc.aio call it can be cancelled and asked for its code, details and metadata (those of the
    last attempt). Unlike one, nothing is sent until it is first awaited or asked for its outcome.
    """

    def __init__(
        self,
        route: _Route,
        method: _Method,
        request: Any,
        deadline: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        self.method = method
        self.request = request
        self.deadline = deadline
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
        self.attempt: grpc.aio.UnaryUnaryCall[Any, Any] | None = None
        self.cancel_requested = False
        self._route = route
        self._state = _PENDING
        self._response: Any = None
        self._error: BaseException | None = None
        self._finished: asyncio.Event | None = None
        self._sleeper: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[Any], None]] = []

    def __await__(self) -> Generator[Any, None, Any]:
        return self._outcome().__await__()

    async def _outcome(self) -> Any:
        if self._state != _PENDING:
            await self._wait_done()
            if self._error is not None:
                raise self._error
            return self._response
        self._state = _RUNNING
        try:
            self._response = await self._route.run_unary(self)
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._finish()
        return self._response

    async def _wait_done(self) -> None:
        if self._state != _DONE:
            if self._finished is None:
                self._finished = asyncio.Event()
            await self._finished.wait()

    async def _settled(self) -> None:
        """Wait for the outcome without raising it (but a cancellation of the waiter still propagates)."""
        if self._state == _PENDING:
            try:
                await self._outcome()
            except asyncio.CancelledError:
                if not self.cancel_requested:
                    raise
            except Exception:  # noqa: S110 - the outcome is read from self._error by the caller
                pass
        else:
            await self._wait_done()

    def _finish(self) -> None:
        self._state = _DONE
        if self._finished is not None:
            self._finished.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("call done callback failed")

    async def sleep(self, delay: float) -> None:
        """Back off before a retry; ``cancel()`` cuts the wait short."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(delay, _resolve, waiter)
        self._sleeper = waiter
        try:
            await waiter
        finally:
            handle.cancel()
            self._sleeper = None

    # -- grpc.aio.Call ---------------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._state == _DONE and isinstance(self._error, asyncio.CancelledError)

    def done(self) -> bool:
        return self._state == _DONE

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(self.deadline - self._route.clock(), 0.0)

    def cancel(self) -> bool:
        if self._state == _DONE:
            return False
        self.cancel_requested = True
        if self._state == _PENDING:
            self._error = asyncio.CancelledError()
            self._finish()
            return True
        if self.attempt is not None:
            self.attempt.cancel()
        if self._sleeper is not None:
            self._sleeper.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._state == _DONE:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._settled()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.initial_metadata() or grpc.aio.Metadata()
        if self.attempt is not None and self._error is None:
            return await self.attempt.initial_metadata()
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._settled()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.trailing_metadata() or grpc.aio.Metadata()
        if self.attempt is not None and self._error is None:
            return await self.attempt.trailing_metadata()
        return grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        await self._settled()
        if self._error is None:
            return grpc.StatusCode.OK
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.code()
        if isinstance(self._error, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN

    async def details(self) -> str:
        await self._settled()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.details() or ""
        if self._error is not None:
            return repr(self._error)
        return ""

    async def wait_for_connection(self) -> None:
        await self._settled()
        if self._error is not None:
            raise self._error


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _UnaryUnaryMultiCallable(grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    def __init__(self, route: _Route, method: _Method) -> None:
        self._route = route
        self._method = method

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> _UnaryUnaryCall:
        route = self._route
        route.check_open()
        # The deadline is fixed now, in the caller's context, where an inherited deadline is visible.
        deadline = effective_deadline(route.clock(), timeout, current_deadline())
        return _UnaryUnaryCall(
            route, self._method, request, deadline, metadata, credentials, wait_for_ready, compression
        )


class _UnaryStreamMultiCallable(grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    def __init__(self, route: _Route, method: _Method) -> None:
        self._route = route
        self._method = method

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryStreamCall[Any, Any]:
        call: grpc.aio.UnaryStreamCall[Any, Any] = self._route.start_stream(
            "unary_stream",
            self._method,
            request,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )
        return call


class _StreamUnaryMultiCallable(grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    def __init__(self, route: _Route, method: _Method) -> None:
        self._route = route
        self._method = method

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.StreamUnaryCall[Any, Any]:
        call: grpc.aio.StreamUnaryCall[Any, Any] = self._route.start_stream(
            "stream_unary",
            self._method,
            request_iterator,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )
        return call


class _StreamStreamMultiCallable(grpc.aio.StreamStreamMultiCallable[Any, Any]):
    def __init__(self, route: _Route, method: _Method) -> None:
        self._route = route
        self._method = method

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.StreamStreamCall[Any, Any]:
        call: grpc.aio.StreamStreamCall[Any, Any] = self._route.start_stream(
            "stream_stream",
            self._method,
            request_iterator,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )
        return call


class _ServiceChannel(grpc.aio.Channel):
    """What a generated stub is given: a channel to a whole service, balancing each call over endpoints.

    It owns nothing: ``close()`` does nothing and the ``MeshClient`` closes the real channels. There is no
    single connectivity state to wait for, so the state-watching methods are not supported.
    """

    def __init__(self, route: _Route) -> None:
        self._route = route

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        return _UnaryUnaryMultiCallable(
            self._route, _method(method, request_serializer, response_deserializer)
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        return _UnaryStreamMultiCallable(
            self._route, _method(method, request_serializer, response_deserializer)
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]:
        return _StreamUnaryMultiCallable(
            self._route, _method(method, request_serializer, response_deserializer)
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        return _StreamStreamMultiCallable(
            self._route, _method(method, request_serializer, response_deserializer)
        )

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while the service has a routable endpoint, TRANSIENT_FAILURE otherwise."""
        if self._route.has_endpoints:
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("a mesh channel spans many endpoints and has no single state to watch")

    async def channel_ready(self) -> None:
        raise NotImplementedError("a mesh channel spans many endpoints and has no single state to watch")

    async def close(self, grace: float | None = None) -> None:
        """Nothing to close here: the ``MeshClient`` owns the endpoint channels."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        return None


def _method(path: str, serializer: Any, deserializer: Any) -> _Method:
    return _Method(path, serializer, deserializer, is_idempotent(path), rpc_info(path))


def _outgoing(metadata: Any) -> grpc.aio.Metadata:
    """A fresh copy of a call's metadata for one attempt, which observers may add to."""
    if not metadata:
        return grpc.aio.Metadata()
    return grpc.aio.Metadata(*metadata)


# --- the client -------------------------------------------------------------------------------------------


class MeshClient:
    """Calls services through the mesh; one per process, shared by everything that calls out.

    ``endpoints`` is where instances come from (a started ``Watcher``, or ``StaticEndpoints``); ``redis``
    (client or URL) receives breaker transitions for the console, or nothing when None; ``interceptors``
    are grpc.aio client interceptors: the observers at their front (tracing and metrics of
    ``mesh.interceptors.client_interceptors``) run around every attempt inside the client, the rest (a
    token interceptor) go on every endpoint channel. ``on_attempt`` is called after every attempt (for
    tests and benchmarks); ``rng`` seeds endpoint picking and backoff jitter. Use ``async with`` or call
    ``close()``.

    Telemetry: every attempt (a retry too) gets a CLIENT span, child of the current span, whose W3C
    ``traceparent`` goes in its metadata, and ``itsmesh_grpc_client_*`` metrics labelled with the service
    called; endpoint breaker states are exported as ``itsmesh_breaker_state``. Unless ``interceptors``
    bring observers of their own, they go to OpenTelemetry's global tracer provider and prometheus_client's
    global registry; ``telemetry=False`` turns them off.
    """

    def __init__(
        self,
        endpoints: EndpointSource,
        *,
        config: ClientConfig | None = None,
        redis: Redis | str | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        on_attempt: AttemptHook | None = None,
        rng: random.Random | None = None,
        telemetry: bool = True,
    ) -> None:
        self._source = endpoints
        self._config = config if config is not None else ClientConfig()
        # Observers at the front of the chain (client_interceptors' tracing and metrics) run in the
        # attempt path itself; the rest stays on the endpoint channels.
        self._observer, rest = take_observers(interceptors)
        self._interceptors = tuple(rest)
        # Observers left in the channel chain (behind a token interceptor) already trace: none of ours.
        self._telemetry = telemetry and not contains_observer(rest)
        self._on_attempt = on_attempt
        # The clock of deadlines (mesh.deadline measures on it too), breakers and latency estimates.
        self._clock: Clock = time.monotonic
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - balancing, not security
        self._redis = open_redis(redis) if isinstance(redis, str) else redis
        self._owns_redis = isinstance(redis, str)
        self._publisher = (
            _BreakerPublisher(self._redis, BreakerKeys(self._config.breaker_namespace))
            if self._redis is not None
            else None
        )
        self._routes: dict[str, _Route] = {}
        self._channels: dict[str, _ServiceChannel] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._owned_watcher: Watcher | None = None
        self._closed = False
        self._remove_listener = endpoints.add_listener(self._on_change)

    @classmethod
    def static(
        cls,
        addresses: Mapping[str, Sequence[str]],
        *,
        config: ClientConfig | None = None,
        redis: Redis | str | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        on_attempt: AttemptHook | None = None,
        telemetry: bool = True,
    ) -> MeshClient:
        """A client for fixed ``host:port`` lists per service (``StaticEndpoints``); no Redis needed."""
        return cls(
            StaticEndpoints(addresses),
            config=config,
            redis=redis,
            interceptors=interceptors,
            on_attempt=on_attempt,
            telemetry=telemetry,
        )

    @classmethod
    async def from_registry(
        cls,
        redis: Redis | str,
        services: Iterable[str] | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        config: ClientConfig | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        on_attempt: AttemptHook | None = None,
        telemetry: bool = True,
    ) -> MeshClient:
        """A client on its own registry ``Watcher`` of ``services`` (None: all), stopped on ``close()``.

        Waits briefly for a first listing; if Redis is down it starts empty and fills in when Redis
        answers. Breaker transitions go to the same Redis.
        """
        client_redis = open_redis(redis) if isinstance(redis, str) else redis
        watcher = Watcher(client_redis, services, namespace=namespace)
        await watcher.start()
        client = cls(
            watcher,
            config=config,
            redis=client_redis,
            interceptors=interceptors,
            on_attempt=on_attempt,
            telemetry=telemetry,
        )
        client._owned_watcher = watcher
        client._owns_redis = isinstance(redis, str)
        return client

    @property
    def config(self) -> ClientConfig:
        """The configuration the client was built with."""
        return self._config

    def stub(self, service: str, stub_class: Callable[[grpc.aio.Channel], _S]) -> _S:
        """A generated stub (``AlertServiceStub``...) whose calls go to ``service`` through the mesh."""
        return stub_class(self.channel(service))

    def client(self, service: str, stub_class: Callable[[grpc.aio.Channel], _S]) -> _S:
        """Another name of ``stub``: ``mesh.client("alert", AlertServiceStub)``."""
        return self.stub(service, stub_class)

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel-like object stubs of ``service`` are built on; calls on it are balanced."""
        channel = self._channels.get(service)
        if channel is None:
            channel = self._channels[service] = _ServiceChannel(self._route(service))
        return channel

    def endpoint_status(self, service: str) -> list[EndpointStatus]:
        """Each routable endpoint of ``service`` with its breaker state, error window and load."""
        return self._route(service).status()

    async def close(self, grace: float | None = None) -> None:
        """Refuse new calls, close the channels (running calls get ``grace`` seconds), then the rest."""
        if self._closed:
            return
        self._closed = True
        self._remove_listener()
        for route in self._routes.values():
            route.closed = True
        await asyncio.gather(*(route.close(grace) for route in self._routes.values()))
        await asyncio.gather(*(stop_task(task) for task in list(self._tasks)))
        if self._publisher is not None:
            await self._publisher.close()
        if self._owned_watcher is not None:
            await self._owned_watcher.stop()
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _route(self, service: str) -> _Route:
        route = self._routes.get(service)
        if route is None:
            if self._closed:
                raise ClientClosedError(f"the mesh client is closed; cannot call {service!r}")
            config = self._config
            observer = self._observer
            if observer is None and self._telemetry:
                observer = client_observer(service)
            route = self._routes[service] = _Route(
                service,
                config.policy_for(service),
                source=self._source,
                pool=ChannelPool(
                    options=config.channel_options,
                    interceptors=self._interceptors,
                    close_grace_s=config.channel_close_grace_s,
                    tls=config.tls,
                ),
                publisher=self._publisher,
                client_id=config.client_id,
                clock=self._clock,
                rng=random.Random(self._rng.getrandbits(64)),  # noqa: S311 - balancing, not security
                on_attempt=self._on_attempt,
                observer=observer,
                metrics=_metrics_of(observer),
                spawn=self._spawn,
            )
        return route

    def _on_change(self, change: EndpointsChange) -> None:
        route = self._routes.get(change.service)
        if route is not None and not self._closed:
            route.refresh(change.endpoints)

    def _spawn(self, coroutine: Any) -> bool:
        """Run ``coroutine`` as a task the client stops on close; False (and it never runs) once closed."""
        if self._closed:
            coroutine.close()
            return False
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        _log_failure(task)


def _metrics_of(observer: ObservingClientInterceptor | None) -> MeshMetrics | None:
    """Where the calls' metrics go, so the breaker states go there too (None: no metrics)."""
    if isinstance(observer, MetricsClientInterceptor):
        return observer.metrics
    if isinstance(observer, ObserverChain):
        for inner in observer.observers:
            found = _metrics_of(inner)
            if found is not None:
                return found
    return None
