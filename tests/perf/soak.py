"""`make soak`: the fault suite for a long while, checking delivery each round and the processes' growth.

Every service runs as its own process (tests/e2e/fault_system.py). Rounds of load follow one another
until ITSMESH_SOAK_DURATION_S (default 600) has passed; every round freezes the broker or restarts Redis
(the faults that leave the service processes alive, so each process is sampled for the whole run) and
then checks that every acknowledged frame and reading is in its topic under one event id and stored once.
Meanwhile each service's resident memory and open file descriptors are sampled (psutil); the run fails
when a delivery check fails or a process grows without bound: the median RSS of its last tenth exceeds
that of its second tenth (after warm-up), or the floor of its open descriptors rises, by more than the
allowances below.

Run: `python -m tests.perf.soak` (exit code 1 on any failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infrastructure.embedded import EmbeddedInfra, free_ports
from tests.e2e.fault_system import FaultSystem, acknowledged, delivery, fault_system

DEFAULT_DURATION_S = 600.0
ROUND_LOAD_S = 20.0
SAMPLE_EVERY_S = 2.0
RSS_ALLOWANCE = (0.25, 64 * 2**20)
"""RSS may grow by 25 % or 64 MiB, whichever is larger (allocator arenas and caches settle late)."""
FD_ALLOWANCE = 32
"""Open descriptors may grow by this many (pooled connections to PostgreSQL, Redis, the broker)."""


@dataclass
class Samples:
    """RSS (bytes) and open file descriptors of one service process over the run."""

    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)


def growth(values: list[int], level: Callable[[list[int]], float] = statistics.median) -> tuple[float, float]:
    """`level` of the second tenth (after warm-up) and of the last tenth of `values`."""
    tenth = max(1, len(values) // 10)
    early = values[tenth : 2 * tenth] or values[:1]
    return level(early), level(values[-tenth:])


def floor(values: list[int]) -> float:
    """The lowest value: descriptors rise and fall with open streams, a leak raises the floor."""
    return float(min(values))


def leaks(name: str, samples: Samples) -> list[str]:
    """What grew beyond its allowance, as readable lines (empty = bounded)."""
    found = []
    rss_early, rss_late = growth(samples.rss)
    allowed = max(rss_early * RSS_ALLOWANCE[0], RSS_ALLOWANCE[1])
    if rss_late - rss_early > allowed:
        found.append(f"{name}: RSS {rss_early / 2**20:.0f} → {rss_late / 2**20:.0f} MiB")
    fd_early, fd_late = growth(samples.fds, floor)
    if fd_late - fd_early > FD_ALLOWANCE:
        found.append(f"{name}: open files {fd_early:.0f} → {fd_late:.0f}")
    return found


async def sample(system: FaultSystem, into: dict[str, Samples], stop: asyncio.Event) -> None:
    """Every SAMPLE_EVERY_S, each service's RSS and descriptor count (by pid, so restarts would show)."""
    while not stop.is_set():
        for name, service in system.services.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(service.pid)
                into[name].rss.append(process.memory_info().rss)
                into[name].fds.append(process.num_fds())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


def faults(system: FaultSystem) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    async def freeze() -> None:
        async with system.kafka_frozen():
            await asyncio.sleep(5.0)

    async def redis() -> None:
        await system.restart_redis(down_s=3.0)

    async def nothing() -> None:
        return None

    return [("broker frozen 5 s", freeze), ("Redis restarted", redis), ("no fault", nothing)]


async def soak(duration_s: float, data_dir: Path) -> int:
    async with (
        EmbeddedInfra(data_dir / "base", ports=free_ports()) as urls,
        fault_system(data_dir / "system", urls.database_url) as system,
    ):
        samples = {name: Samples() for name in system.services}
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(system, samples, stop))
        started = time.monotonic()
        failures: list[str] = []
        rounds = 0
        try:
            while time.monotonic() - started < duration_s and not failures:
                label, fault = faults(system)[rounds % 3]
                plan = system.plan(ROUND_LOAD_S, seed=1000 + rounds, cameras=2, devices=4)
                progress = await system.run_load(plan, fault, fault_after_s=3.0)
                try:
                    expected = acknowledged(plan, progress)
                except AssertionError as exc:
                    failures.append(f"round {rounds} ({label}): {exc}")
                    break
                outcome = await delivery(system, plan, expected)
                lost = outcome.missing_in_topic + outcome.missing_rows + outcome.two_event_ids
                if lost or outcome.duplicate_rows or outcome.unprocessed_frames:
                    failures.append(f"round {rounds} ({label}): {outcome}")
                print(
                    f"round {rounds:3d} {label:18s} {len(expected.frames)} frames "
                    f"{len(expected.readings)} readings, {outcome.redelivered_records} redelivered, "
                    f"{time.monotonic() - started:.0f} s",
                    flush=True,
                )
                rounds += 1
        finally:
            stop.set()
            await sampler
        for name, taken in samples.items():
            rss_early, rss_late = growth(taken.rss)
            fd_early, fd_late = growth(taken.fds, floor)
            print(
                f"{name:10s} RSS {rss_early / 2**20:6.1f} → {rss_late / 2**20:6.1f} MiB, "
                f"open files (floor) {fd_early:.0f} → {fd_late:.0f} ({len(taken.rss)} samples)"
            )
            failures.extend(leaks(name, taken))
        restarted = [n for n, s in system.services.items() if s.proc is None or s.proc.returncode is not None]
        failures.extend(f"{name} exited during the soak" for name in restarted)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{rounds} rounds in {time.monotonic() - started:.0f} s: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


def main() -> None:
    duration_s = float(os.environ.get("ITSMESH_SOAK_DURATION_S", DEFAULT_DURATION_S))
    with tempfile.TemporaryDirectory(prefix="itsmesh-soak-") as data_dir:
        sys.exit(asyncio.run(soak(duration_s, Path(data_dir))))


if __name__ == "__main__":
    main()
