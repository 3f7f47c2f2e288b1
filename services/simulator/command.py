"""`itsmesh simulate`: runs simulations (once, or again and again with ``loop``) with live progress.

The ground truth of a run goes to the JSON-lines file ``truth``; each repetition of a loop (with the
seed plus its number) replaces it with its own, so the file always describes the current run. Stops at
the end of the run (a loop: never) or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from mesh.errors import MeshError
from mesh.logs import configure_logging
from mesh.settings import InfraSettings
from services.simulator.access import SimulatorAuthError
from services.simulator.config import SimulatorSettings
from services.simulator.driver import RunProgress, RunTarget, Simulation
from services.simulator.plan import SimulationOptions, build_plan


class SimulationFailed(Exception):
    """A run could not start or went wrong; the message is one line for the terminal."""


def progress_table(progress: RunProgress) -> Table:
    """The live view: one row per camera and device."""
    elapsed = min(progress.elapsed_s, progress.duration_s)
    caption = f"ground truth: {progress.truth_path}" if progress.truth_path else ""
    if progress.geofence:
        caption += " · fleet geofence set at analytics"
    table = Table(
        title=f"itsmesh simulate — run {progress.run_id} — {elapsed:.0f}/{progress.duration_s:.0f} s "
        f"via {progress.transport or '…'}",
        caption=caption or None,
    )
    table.add_column("source", no_wrap=True)
    table.add_column("kind")
    table.add_column("state")
    for column in ("made", "sent", "acked", "dup", "rej", "buf"):
        table.add_column(column, justify="right")
    for source in progress.sources:
        c = source.counters
        if source.error:
            state = f"[red]{source.error[:50]}[/]"
        else:
            state = "[green]done[/]" if source.done else "streaming"
        table.add_row(
            source.source_id,
            source.kind,
            state,
            f"{source.generated}/{source.planned}",
            str(c.sent),
            str(c.acked),
            str(c.duplicate),
            str(c.rejected),
            str(c.buffered),
        )
    return table


@contextmanager
def _live(console: Console, enabled: bool) -> Iterator[Live | None]:
    if not enabled:
        yield None
        return
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        yield live


async def _run_all(
    options: SimulationOptions,
    target: RunTarget,
    truth: Path | None,
    loop: bool,
    console: Console,
    show_progress: bool,
) -> list[RunProgress]:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, stop.set)
    finished: list[RunProgress] = []
    iteration = 0
    with _live(console, show_progress) as live:
        while not stop.is_set():
            run_options = dataclasses.replace(options, seed=options.seed + iteration)
            plan = build_plan(run_options)

            def show(progress: RunProgress) -> None:
                if live is not None:
                    live.update(progress_table(progress))

            simulation = Simulation(plan, target, truth_path=truth, on_progress=show)
            finished.append(await simulation.run(stop))
            if not show_progress:
                console.print(_summary(finished[-1]), highlight=False, soft_wrap=True)
            iteration += 1
            if not loop:
                break
    return finished


def _summary(progress: RunProgress) -> str:
    sent = sum(s.counters.sent for s in progress.sources)
    acked = sum(s.counters.acked for s in progress.sources)
    rejected = sum(s.counters.rejected for s in progress.sources)
    errors = [f"{s.source_id}: {s.error}" for s in progress.sources if s.error]
    line = f"run {progress.run_id}: sent {sent}, acked {acked}, rejected {rejected}"
    line += f"; truth {progress.truth_path}"
    return line + ("; " + "; ".join(errors) if errors else "")


def run_simulations(
    options: SimulationOptions,
    settings: SimulatorSettings,
    *,
    truth: Path | None,
    authenticate: bool = True,
    loop: bool = False,
    show_progress: bool = True,
    console: Console | None = None,
) -> list[RunProgress]:
    """Run until done (or stopped); raises SimulationFailed with a one-line reason."""
    if authenticate and (settings.streaming_address is None) != (settings.auth_address is None):
        raise SimulationFailed("give both --streaming and --auth addresses, or neither (discovery)")
    target = RunTarget(settings, authenticate=authenticate)
    console = console or Console()
    if not show_progress:  # under `itsmesh up` stderr is a log file: JSON lines like every service
        configure_logging("simulator", f"{socket.gethostname()}-{os.getpid()}", InfraSettings().log_level)
    try:
        return asyncio.run(_run_all(options, target, truth, loop, console, show_progress))
    except SimulatorAuthError as exc:
        raise SimulationFailed(str(exc)) from exc
    except grpc.aio.AioRpcError as exc:
        raise SimulationFailed(f"{exc.code().name}: {exc.details()}") from exc
    except (MeshError, OSError) as exc:
        raise SimulationFailed(str(exc)) from exc
