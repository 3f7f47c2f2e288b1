"""Builds the status vector every second from concurrent, time-bounded checks and publishes it.

The loop: run every check at once, each under ``timeout_s`` (a check that overruns is shown as down with
the reason, never with its last good answer), assemble the vector, compare it with the previous one and
publish. A component found down in the middle of a tick is published at once (within the
``urgent_push_s`` budget) instead of waiting for the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

from mesh.endpoints import EndpointsChange
from mesh.host import VERSION
from mesh.registry import DEFAULT_NAMESPACE, Watcher
from services.console.broadcast import Broadcaster
from services.console.checks import InstanceChecks, KafkaCheck, PostgresCheck, RedisCheck, default_redis
from services.console.status import (
    ComponentStatus,
    GoneInstances,
    Status,
    Transition,
    down,
    is_urgent,
    overview,
    service_summaries,
    traffic_mode,
    transitions,
    unchecked,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S: Final = 1.0
"""Seconds between status vectors."""
DEFAULT_TIMEOUT_S: Final = 0.8
"""Longest one check may take; it ends before the next tick so ticks never pile up."""
INSTANCE_TIMEOUT_SHARE: Final = 0.75
"""Share of ``timeout_s`` one instance's probe and scrape may take."""
HISTORY_SIZE: Final = 200
"""Up/down transitions kept for the dashboard."""

TICKS = Counter("itsmesh_console_status_ticks", "Status vectors generated.")
TICK_SECONDS = Histogram(
    "itsmesh_console_status_tick_seconds",
    "Time to run every check and assemble one status vector.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0),
)
CHECK_FAILURES = Counter(
    "itsmesh_console_check_failures", "Checks that failed or timed out, by component type.", ["component"]
)
WS_CLIENTS = Gauge("itsmesh_console_status_clients", "Clients receiving the live status push.")
DROPPED_CLIENTS = Counter("itsmesh_console_dropped_clients", "Live clients dropped for falling behind.")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class StatusVector:
    """One generation of the status vector and when it was made."""

    generation: int
    generated_at: float
    body: dict[str, Any]
    transitions: list[Transition] = field(default_factory=list)

    def to_json(self) -> str:
        """The vector as compact JSON."""
        return json.dumps(self.body, separators=(",", ":"))


class StatusAggregator:
    """Owns the checkers, the tick loop and the broadcaster; ``async with`` starts and stops the loop."""

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        kafka_bootstrap_servers: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        broadcaster: Broadcaster | None = None,
        registry_namespace: str | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        counts: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.broadcaster = broadcaster or Broadcaster()
        self._clock = clock
        self._wall = wall_clock
        self._redis = default_redis(redis_url)
        self._postgres = PostgresCheck(database_url)
        self._redis_check = RedisCheck(self._redis)
        self._kafka = KafkaCheck(kafka_bootstrap_servers)
        # Each instance gets less than the whole listing, so one slow instance is shown down on its own
        # instead of timing the listing out and losing every instance from the vector.
        self._instances = InstanceChecks(
            self._redis, timeout_s=timeout_s * INSTANCE_TIMEOUT_SHARE, namespace=registry_namespace
        )
        self._known_instances: list[ComponentStatus] = []
        self._counts = counts
        self._gone = GoneInstances()
        self._statuses: dict[str, Status] = {}
        self.history: list[Transition] = []
        self.latest: StatusVector | None = None
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._updated = asyncio.Condition()
        self._cpu_last: tuple[float, float] | None = None
        self._wake = asyncio.Event()
        # Registry announcements (an instance leaving or joining) trigger a check at once, between ticks.
        self._watcher = Watcher(
            self._redis,
            None,
            on_change=self._on_registry_change,
            sync_timeout_s=0.5,
            namespace=registry_namespace or DEFAULT_NAMESPACE,
        )

    async def __aenter__(self) -> StatusAggregator:
        await self._watcher.start()
        await self.tick()
        self._task = asyncio.create_task(self._run(), name="console-status")
        return self

    def _on_registry_change(self, change: EndpointsChange) -> None:
        self._wake.set()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._watcher.stop()
        self.broadcaster.close()
        await self._postgres.close()
        await self._kafka.close()
        await self._instances.close()
        await self._redis.aclose()

    async def wait_for_generation(self, after: int, timeout: float) -> StatusVector:  # noqa: ASYNC109
        """The first vector newer than generation ``after``; TimeoutError if none comes in time."""
        async with asyncio.timeout(timeout), self._updated:
            await self._updated.wait_for(lambda: self.latest is not None and self.latest.generation > after)
        assert self.latest is not None
        return self.latest

    async def _run(self) -> None:
        next_at = self._clock() + self.interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - self._clock())):
                    await self._wake.wait()
            trigger = "change" if self._wake.is_set() else "tick"
            self._wake.clear()
            if trigger == "tick":
                next_at += self.interval_s
                if next_at < self._clock():  # a tick overran: skip, never burst to catch up
                    next_at = self._clock() + self.interval_s
            try:
                await self.tick(trigger)
            except Exception:
                log.exception("status tick failed")

    async def tick(self, trigger: str = "tick") -> StatusVector:
        """Run every check once, publish the vector and return it; ``trigger`` says why (tick or change)."""
        started = self._clock()
        urgent_sent = asyncio.Event()

        # Checks come uncalled: a tick cancelled before a check starts leaves no coroutine unawaited.
        async def bounded(name: str, type_: str, check: Callable[[], Awaitable[Any]]) -> Any:
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await check()
            except TimeoutError:
                CHECK_FAILURES.labels(type_).inc()
                result = down(name, type_, f"no answer within {self.timeout_s:.2f} s")
            except Exception as exc:
                CHECK_FAILURES.labels(type_).inc()
                result = down(name, type_, f"{type(exc).__name__}: {exc}"[:300])
            # A component newly down is pushed at once, ahead of the slower checks of this tick.
            newly_down = isinstance(result, ComponentStatus) and result.status == "down"
            if newly_down and self._statuses.get(name) not in (None, "down") and not urgent_sent.is_set():
                urgent_sent.set()
                self._publish_partial(result)
            return result

        infra_results, counts = await asyncio.gather(
            asyncio.gather(
                bounded("postgresql", "postgresql", self._postgres),
                bounded("redis", "redis", self._redis_check),
                bounded("kafka", "kafka", self._kafka),
                bounded("discovery", "discovery", lambda: self._instances(started, self._wall())),
            ),
            self._bounded_counts(),
        )
        infra: list[ComponentStatus] = list(infra_results[:3])
        listed = infra_results[3]
        discovery_error = ""
        if isinstance(listed, ComponentStatus):  # discovery itself failed: instances are unknown
            discovery_error = listed.error
            instances: list[ComponentStatus] = unchecked(self._known_instances, listed.error)
        else:
            instances = list(listed)
            for component in instances:
                newly_down = component.status == "down" and self._statuses.get(component.name) not in (
                    None,
                    "down",
                )
                if newly_down and not urgent_sent.is_set():
                    urgent_sent.set()
                    self._publish_partial(component)
        if not discovery_error:
            self._known_instances = instances
        gone = self._gone.update(instances, started) if not discovery_error else []
        components = infra + sorted([*instances, *gone], key=lambda c: c.name)
        vector = self._assemble(components, discovery_error, started, trigger, counts)
        TICKS.inc()
        TICK_SECONDS.observe(self._clock() - started)
        await self._install(vector)
        return vector

    async def _bounded_counts(self) -> Mapping[str, Any]:
        """Cameras, frames and alerts from the services; empty (shown as n/a) when they do not answer."""
        if self._counts is None:
            return {}
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._counts()
        except Exception as exc:  # the services' own health is shown by their instance checks
            CHECK_FAILURES.labels("counts").inc()
            log.debug("service counts unavailable", extra={"error": str(exc)[:200]})
            return {}

    def _publish_partial(self, component: ComponentStatus) -> None:
        """Push a just-detected outage before the tick completes: the last vector with that component down."""
        if self.latest is None:
            return
        body = dict(self.latest.body)
        body["components"] = [
            component.to_dict() if c["name"] == component.name else c for c in body["components"]
        ]
        if not any(c["name"] == component.name for c in body["components"]):
            body["components"] = [*body["components"], component.to_dict()]
        body["meta"] = {**body["meta"], "generated_at": self._wall(), "partial": True, "trigger": "change"}
        self.broadcaster.publish(json.dumps(body, separators=(",", ":")))

    def _assemble(
        self,
        components: Sequence[ComponentStatus],
        discovery_error: str,
        started: float,
        trigger: str,
        counts: Mapping[str, Any],
    ) -> StatusVector:
        now_wall = self._wall()
        statuses = {c.name: c.status for c in components}
        changes = transitions(self._statuses, statuses, now_wall) if self.latest is not None else []
        instances = [c for c in components if c.type not in ("postgresql", "redis", "kafka")]
        rps_values: list[float] = [
            float(c.details["rps"]) for c in instances if c.details.get("rps") is not None
        ]
        total_rps = sum(rps_values)
        errors = sum(
            float(c.details.get("rps") or 0.0) * float(c.details.get("error_rate") or 0.0) for c in instances
        )
        error_rate = errors / total_rps if total_rps else None
        latencies = [c.latency_ms for c in instances if c.latency_ms is not None and c.status != "down"]
        up = sum(c.status in ("healthy", "degraded") for c in instances)
        self._generation += 1
        cards = overview(components)
        body: dict[str, Any] = {
            "components": [c.to_dict() for c in components],
            "overview": {
                **cards,
                "cameras_streaming": counts.get("cameras_streaming"),
                "cameras_registered": counts.get("cameras_registered"),
                "open_alerts": counts.get("open_alerts"),
                "firing_alerts": counts.get("firing_alerts"),
            },
            "services": service_summaries(components),
            "sessions": {
                "camera_streams": counts.get("cameras_streaming"),
                "device_streams": None,
                "websocket_clients": self.broadcaster.clients,
            },
            "traffic": {
                "rps": round(total_rps, 3) if rps_values else None,
                "error_rate": None if error_rate is None else round(error_rate, 4),
                "latency_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
                "mode": traffic_mode(error_rate, up, len(instances)),
                "frames_per_second": counts.get("frames_per_second"),
            },
            "resources": self._resources(),
            "transitions": [t.to_dict() for t in changes],
            "meta": {
                "version": VERSION,
                "generation": self._generation,
                "generated_at": now_wall,
                "interval_s": self.interval_s,
                "check_duration_ms": round((self._clock() - started) * 1000, 3),
                "discovery_error": discovery_error or None,
                "partial": False,
                "trigger": trigger,
            },
        }
        self._statuses = statuses
        return StatusVector(self._generation, now_wall, body, changes)

    def _resources(self) -> dict[str, Any]:
        """The console process's own CPU and memory."""
        times = os.times()
        cpu = times.user + times.system
        now = self._clock()
        percent = None
        if self._cpu_last is not None and now > self._cpu_last[0]:
            percent = round((cpu - self._cpu_last[1]) / (now - self._cpu_last[0]) * 100, 1)
        self._cpu_last = (now, cpu)
        return {
            "console": {
                "cpu_percent": percent,
                "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "pid": os.getpid(),
            }
        }

    async def _install(self, vector: StatusVector) -> None:
        if vector.transitions:
            self.history = [*self.history, *vector.transitions][-HISTORY_SIZE:]
            if is_urgent(vector.transitions):
                log.warning(
                    "component status changed",
                    extra={"changes": [t.to_dict() for t in vector.transitions]},
                )
        vector.body["history"] = [t.to_dict() for t in self.history[-50:]]
        self.latest = vector
        before = self.broadcaster.dropped_total
        self.broadcaster.publish(vector.to_json())
        DROPPED_CLIENTS.inc(self.broadcaster.dropped_total - before)
        WS_CLIENTS.set(self.broadcaster.clients)
        async with self._updated:
            self._updated.notify_all()
