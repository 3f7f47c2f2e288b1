"""`make soak`: the fault suite for a long while under mixed load, checking delivery each round, the
latencies and the processes' growth.

Every service runs as its own process, the console included (tests/e2e/fault_system.py). Rounds of
load (cameras and devices) follow one another until the duration has passed; every round freezes the
broker, restarts Redis, restarts PostgreSQL or does nothing (faults that leave the service processes
alive, so each process is sampled for the whole run), then checks that every acknowledged frame and
reading is in its topic under one event id and stored once, and that the passages match the simulator's
ground truth per (camera, lane, direction). All the while analysts query (GetTrafficMetrics,
ListPassages), alerts are raised (RaiseAlert) and an operator polls the console's /api/status
(tests/e2e/fault_traffic.py), each kind's latency kept per minute.

The run fails when a delivery or ground-truth check fails; when a process grows without bound: the
median RSS of its last tenth exceeds that of its second tenth (after warm-up), or the floor of its open
descriptors rises, by more than the allowances below; when a kind's p99 in the last full minute exceeds
P99_FACTOR times that of the first (or P99_FLOOR_S, if larger); when a call fails with anything but a
transient code; or when the console's status answers slower than STATUS_WITHIN_S or not at all.

Run: `python -m tests.perf.soak [--duration-s S]` (default ITSMESH_SOAK_DURATION_S, else 600; exit code 1
on any failure).
"""

from __future__ import annotations

import argparse
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

from tests.e2e.fault_checks import TruthComparison, settled_truth_comparison
from tests.e2e.fault_system import FaultSystem, acknowledged, delivery, fault_system
from tests.e2e.fault_traffic import KINDS, STATUS, TRANSIENT, Latencies, MixedTraffic, unstable

DEFAULT_DURATION_S = 600.0
ROUND_LOAD_S = 20.0
ROUND_FPS = 10.0
"""At 5 fps the tracker misses some vehicles occluded at the counting line, fault or no fault."""
SAMPLE_EVERY_S = 2.0
RSS_ALLOWANCE = (0.25, 64 * 2**20)
"""RSS may grow by 25 % or 64 MiB, whichever is larger (allocator arenas and caches settle late)."""
FD_ALLOWANCE = 32
"""Open descriptors may grow by this many (pooled connections to PostgreSQL, Redis, the broker)."""
P99_FACTOR = 3.0
P99_FLOOR_S = 0.05
"""A p99 below 50 ms counts as 50 ms: at that level a scheduling hiccup on a shared machine is a factor."""
STATUS_WITHIN_S = 1.0
TRUTH_SETTLE_S = 20.0
"""Analytics emits the passages of vehicles still in view at the end after 15 s idle (idle_flush_s)."""


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

    async def postgres() -> None:
        await system.restart_postgres(down_s=3.0)

    async def nothing() -> None:
        return None

    return [
        ("broker frozen 5 s", freeze),
        ("Redis restarted", redis),
        ("PostgreSQL restarted", postgres),
        ("no fault", nothing),
    ]


async def soak(duration_s: float, data_dir: Path) -> int:
    async with fault_system(data_dir / "system") as system:
        samples = {name: Samples() for name in system.services}
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(system, samples, stop))
        cameras: list[str] = []
        latencies = Latencies()
        traffic = asyncio.create_task(MixedTraffic(system, lambda: cameras, latencies).run(stop))
        started = time.monotonic()
        failures: list[str] = []
        rounds = 0
        truth_mismatches: list[str] = []
        try:
            while time.monotonic() - started < duration_s and not failures and not traffic.done():
                label, fault = faults(system)[rounds % len(faults(system))]
                plan = system.plan(ROUND_LOAD_S, seed=1000 + rounds, cameras=2, devices=4, fps=ROUND_FPS)
                cameras[:] = [c.camera_id for c in plan.cameras]
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
                truth = await settled_truth_comparison(
                    system.database_url, plan, progress.start_time, timeout_s=TRUTH_SETTLE_S
                )
                if not truth.exact:
                    truth_mismatches.append(f"round {rounds} ({label}): {_differences(truth)}")
                print(
                    f"round {rounds:3d} {label:20s} {len(expected.frames)} frames "
                    f"{len(expected.readings)} readings, {outcome.redelivered_records} redelivered, "
                    f"passages {truth.stored.total()} (truth {truth.truth.total()}"
                    f"{'' if truth.exact else '; ' + _differences(truth)}), "
                    f"{time.monotonic() - started:.0f} s",
                    flush=True,
                )
                rounds += 1
        finally:
            ended = time.monotonic()
            stop.set()
            await sampler
            await traffic
        for name, taken in samples.items():
            rss_early, rss_late = growth(taken.rss)
            fd_early, fd_late = growth(taken.fds, floor)
            print(
                f"{name:10s} RSS {rss_early / 2**20:6.1f} → {rss_late / 2**20:6.1f} MiB, "
                f"open files (floor) {fd_early:.0f} → {fd_late:.0f} ({len(taken.rss)} samples)"
            )
            failures.extend(leaks(name, taken))
        failures.extend(_latency_failures(latencies, ended))
        failures.extend(truth_mismatches)
        restarted = [n for n, s in system.services.items() if s.proc is None or s.proc.returncode is not None]
        failures.extend(f"{name} exited during the soak" for name in restarted)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(
        f"{rounds} rounds in {time.monotonic() - started:.0f} s, passages differing from the truth in "
        f"{len(truth_mismatches)}: {'FAILED' if failures else 'ok'}"
    )
    return 1 if failures else 0


def _differences(truth: TruthComparison) -> str:
    keys = sorted(truth.truth.keys() | truth.stored.keys())
    lanes = ", ".join(
        f"{c}/{lane}/{d}: {truth.stored[(c, lane, d)]} of {truth.truth[(c, lane, d)]}" for c, lane, d in keys
    )
    return f"per lane {lanes}; no passage: {truth.missing}; no vehicle: {truth.extra}"


def _latency_failures(latencies: Latencies, ended: float) -> list[str]:
    """Print each kind's p99 per minute; what broke the latency rules."""
    for kind in KINDS:
        minutes = latencies.minutes(kind, ended)
        every = latencies.everything(kind)
        worst = max(every, default=0.0)
        line = " ".join(f"{p * 1000:.0f}" for _, p, _ in minutes)
        print(
            f"{kind:18s} {len(every)} calls, p99 per minute (ms): {line or '-'}; max {worst * 1000:.0f} ms; "
            f"failed: {dict(latencies.failures[kind]) or 'none'}"
        )
    failures = unstable(latencies, ended, P99_FACTOR, P99_FLOOR_S)
    for kind in KINDS:
        hard = {code: n for code, n in latencies.failures[kind].items() if code not in _TRANSIENT_NAMES}
        if kind == STATUS and latencies.failures[kind]:
            hard = dict(latencies.failures[kind])
        if hard:
            failures.append(f"{kind} failed: {hard}")
        if not latencies.everything(kind):
            failures.append(f"{kind}: no call answered")
    slowest = max(latencies.everything(STATUS), default=0.0)
    if slowest > STATUS_WITHIN_S:
        failures.append(f"console status took {slowest:.2f} s (allowed {STATUS_WITHIN_S} s)")
    return failures


_TRANSIENT_NAMES = frozenset(code.name for code in TRANSIENT)


def main() -> None:
    parser = argparse.ArgumentParser(description="The fault suite for a long while under mixed load.")
    parser.add_argument(
        "--duration-s",
        type=float,
        default=float(os.environ.get("ITSMESH_SOAK_DURATION_S", DEFAULT_DURATION_S)),
        help="how long rounds keep starting (default ITSMESH_SOAK_DURATION_S, else 600)",
    )
    duration_s = parser.parse_args().duration_s
    with tempfile.TemporaryDirectory(prefix="itsmesh-soak-") as data_dir:
        sys.exit(asyncio.run(soak(duration_s, Path(data_dir))))


if __name__ == "__main__":
    main()
