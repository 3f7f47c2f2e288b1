"""The `itsmesh` command: run the whole system, one service, the embedded infrastructure, or migrations."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # heavy imports stay lazy so `itsmesh --help` answers at once
    from infrastructure.embedded import InfraPorts
    from mesh.inventory import InstanceReport
    from mesh.probe import ProbeResult

app = typer.Typer(
    help="itsmesh — gRPC streaming service mesh for traffic-camera networks and IoT fleets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


class ServiceName(StrEnum):
    """Processes `itsmesh serve` can run."""

    streaming = "streaming"
    analytics = "analytics"
    alert = "alert"
    auth = "auth"
    console = "console"


def service_endpoints() -> dict[str, tuple[str, int]]:
    """name → (probe kind, port) for every service, from each service's own settings (env-aware)."""
    endpoints: dict[str, tuple[str, int]] = {}
    for name in ServiceName:
        settings = importlib.import_module(f"services.{name.value}.service").build().settings
        if settings.grpc_port and name is not ServiceName.console:
            endpoints[name.value] = ("grpc", settings.grpc_port)
        else:
            endpoints[name.value] = ("http", settings.http_port or 0)
    return endpoints


DataDir = Annotated[
    Path, typer.Option(help="Where embedded servers keep data and logs.", envvar="ITSMESH_DATA_DIR")
]


def fail(message: str) -> NoReturn:
    """One clear line on stderr and a non-zero exit: how every CLI mistake ends."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, never wrapped
    raise typer.Exit(code=1)


async def _wait_for_stop_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@app.command()
def serve(name: Annotated[ServiceName, typer.Argument(help="Which service process to run.")]) -> None:
    """Run one service in the foreground until SIGTERM/Ctrl-C (configured by env vars, see README)."""
    from mesh.host import ServiceHost

    module = importlib.import_module(f"services.{name.value}.service")
    try:
        asyncio.run(ServiceHost(module.build()).run())
    except OSError as exc:
        fail(f"{name.value}: {exc}")


@app.command()
def infra(data_dir: DataDir = Path(".itsmesh")) -> None:
    """Start embedded PostgreSQL, Redis-compatible server and Kafka-protocol broker; print their URLs.

    A component whose DATABASE_URL, REDIS_URL or KAFKA_BOOTSTRAP_SERVERS is set is not started.
    Ports: ITSMESH_PG_PORT (15432), ITSMESH_REDIS_PORT (16379), ITSMESH_KAFKA_PORT (19092). Ctrl-C stops all.
    """
    from infrastructure.embedded import EmbeddedInfra, InfraError

    async def main() -> None:
        stop = await _wait_for_stop_signal()
        async with EmbeddedInfra(data_dir, ports=_ports_from_env(), on_status=_progress) as urls:
            out.print(f"DATABASE_URL={urls.database_url}", highlight=False)
            out.print(f"REDIS_URL={urls.redis_url}", highlight=False)
            out.print(f"KAFKA_BOOTSTRAP_SERVERS={urls.kafka_bootstrap_servers}", highlight=False)
            out.print("[green]infrastructure ready[/] — Ctrl-C stops it")
            await stop.wait()
            out.print("stopping…")

    try:
        asyncio.run(main())
    except InfraError as exc:
        fail(str(exc))


@app.command()
def migrate() -> None:
    """Apply pending SQL migrations to DATABASE_URL (TimescaleDB flavour when the extension exists)."""
    from mesh.migrations import MigrationError, apply_migrations
    from mesh.settings import InfraSettings

    settings = InfraSettings()
    try:
        applied = asyncio.run(apply_migrations(settings.database_url))
    except (MigrationError, OSError) as exc:
        fail(f"migrate: {exc}")
    if applied:
        for migration in applied:
            out.print(f"applied {migration.version:04d}_{migration.name}", highlight=False)
    else:
        out.print("database is up to date")


@app.command("rotate-keys")
def rotate_keys() -> None:
    """Rotate the auth signing key now (it also rotates on a schedule).

    New tokens are signed with a new key; the old key stays in the JWKS until the tokens it signed expire.
    Uses DATABASE_URL and ITSMESH_AUTH_SECRET_KEY like the auth service; running auth instances pick the
    new key up within a minute.
    """
    from services.auth.authority import SYSTEM, Authority
    from services.auth.config import AuthSettings
    from services.auth.encryption import SecretKeyError
    from services.auth.errors import AuthServiceError

    settings = AuthSettings()

    async def main() -> str:
        async with Authority(settings).running() as authority:
            record = await authority.rotate_signing_key(SYSTEM, settings.signing_key_bits)
            return record.kid

    try:
        kid = asyncio.run(main())
    except (AuthServiceError, SecretKeyError, OSError) as exc:
        fail(f"rotate-keys: {exc}")
    out.print(
        f"new signing key {kid} signs from now on; previous keys stay published until their tokens expire"
    )


@app.command()
def up(
    data_dir: DataDir = Path(".itsmesh"),
    simulate: Annotated[
        bool, typer.Option(help="Once all serve, also run `itsmesh simulate --loop` (`make run` does).")
    ] = False,
) -> None:
    """Start everything on this machine: embedded infra, migrations, every service and the console.

    Prints the console URL and a status table once all serve; a service that dies is restarted with
    backoff; Ctrl-C stops everything and leaves no process behind. Service logs: DATA_DIR/logs/.
    With --simulate the simulator streams too (log: DATA_DIR/logs/simulator.log).
    """
    from infrastructure.embedded import EmbeddedInfra, InfraError
    from infrastructure.supervisor import Supervisor, service_children
    from mesh.migrations import MigrationError, apply_migrations

    endpoints = service_endpoints()
    auth_http_port = importlib.import_module("services.auth.config").AuthSettings().http_port
    services_ready = asyncio.Event()

    def on_serving(results: dict[str, ProbeResult]) -> None:
        out.print(_status_table(results, endpoints))
        if all(r.serving for r in results.values()):
            services_ready.set()
            console_port = endpoints["console"][1]
            out.print(f"[bold green]all services serving[/] — console: http://127.0.0.1:{console_port}/")
            first_password = data_dir / "auth" / "initial-admin-password"
            if first_password.exists():
                out.print(f"first admin created; its one-time password is in {first_password} (mode 0600)")
        else:
            out.print(
                "[yellow]not every service is serving yet; see the logs in[/] " + str(data_dir / "logs")
            )

    async def main() -> None:
        stop = await _wait_for_stop_signal()
        async with EmbeddedInfra(data_dir, ports=_ports_from_env(), on_status=_progress) as urls:
            _progress("migrations", "applying")
            applied = await apply_migrations(urls.database_url)
            _progress("migrations", f"{len(applied)} applied")
            env = {
                "DATABASE_URL": urls.database_url,
                "REDIS_URL": urls.redis_url,
                "KAFKA_BOOTSTRAP_SERVERS": urls.kafka_bootstrap_servers,
                "ITSMESH_DATA_DIR": str(data_dir),
                **{f"ITSMESH_{name.upper()}_MIGRATE_ON_START": "false" for name in endpoints},
                # Each service's own account for its outgoing calls (mesh.credentials reads the file).
                "ITSMESH_AUTH_PROVISION_SERVICE_ACCOUNTS": ",".join(n for n in endpoints if n != "auth"),
            }
            if "ITSMESH_AUTH_URL" not in os.environ:  # services read the JWKS from wherever auth listens
                env["ITSMESH_AUTH_URL"] = f"http://127.0.0.1:{auth_http_port}"
            supervisor = Supervisor(service_children(endpoints), env, data_dir / "logs", _warn)
            async with asyncio.TaskGroup() as group:
                group.create_task(supervisor.run(stop, on_serving))
                if simulate:
                    group.create_task(_run_simulator(stop, services_ready, env, data_dir))
            out.print("all services stopped; stopping infrastructure…")

    try:
        asyncio.run(main())
    except (InfraError, MigrationError) as exc:
        fail(str(exc))


@app.command()
def health(
    target: Annotated[str, typer.Argument(help="host:port of a gRPC server, or an http(s):// URL.")],
    service: Annotated[str, typer.Option(help="grpc.health.v1 service name ('' = the whole server).")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 2.0,
) -> None:
    """Exit 0 when TARGET answers SERVING (grpc.health.v1, or HTTP 2xx); container health checks use it."""
    from mesh.probe import probe_grpc, probe_http
    from mesh.tls import TlsSettings

    if target.startswith(("http://", "https://")):
        result = asyncio.run(probe_http(target, timeout_s=timeout))
    else:  # with ITSMESH_TLS_ENABLED the probe presents this container's own certificate
        result = asyncio.run(probe_grpc(target, service, timeout_s=timeout, tls=TlsSettings()))
    if not result.serving:
        fail(f"{target}: {result.status} {result.error}".strip())
    out.print(f"{target}: SERVING ({result.latency_ms:.1f} ms)", highlight=False)


@app.command()
def certs(
    directory: Annotated[
        Path, typer.Option("--out", help="Directory for ca.pem/ca.key and one <name>.pem/.key each.")
    ] = Path(".itsmesh/tls"),
    host: Annotated[
        list[str] | None,
        typer.Option(help="Extra DNS name or IP every certificate is valid for (repeatable)."),
    ] = None,
) -> None:
    """Generate a development CA and a certificate per service (plus `client`) for mTLS between services.

    Then set ITSMESH_TLS_ENABLED=true, ITSMESH_TLS_CA_FILE=DIR/ca.pem and each process's
    ITSMESH_TLS_CERT_FILE/ITSMESH_TLS_KEY_FILE. Keys are written mode 0600. Not for production CAs.
    """
    from mesh.tls import create_ca, issue_certificate

    hosts = ["localhost", "127.0.0.1", "::1", *(host or [])]
    try:
        ca = create_ca(directory)
        for name in [*(service.value for service in ServiceName), "client"]:
            issued = issue_certificate(ca, directory, name, hosts)
            out.print(f"{name}: {issued.cert_file} {issued.key_file}", highlight=False)
    except OSError as exc:
        fail(f"certs: {exc}")
    out.print(f"CA: {ca.cert_file} (its key {ca.key_file} signs nothing else; keep it private)")


@app.command()
def simulate(
    cameras: Annotated[int, typer.Option(min=0, help="Synthetic cameras.")] = 2,
    devices: Annotated[int, typer.Option(min=0, help="GPS devices.")] = 3,
    fps: Annotated[float, typer.Option(min=0.5, max=60, help="Frames per second per camera.")] = 10.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of (real) time per run.")] = 120.0,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same scene and truth.")] = 1,
    vehicles_per_minute: Annotated[float, typer.Option(min=0, help="Ordinary traffic per camera.")] = 40.0,
    drop_rate: Annotated[float, typer.Option(min=0, max=0.9, help="Share of frames dropped.")] = 0.1,
    irregular: Annotated[float, typer.Option(min=0, max=0.45, help="Frame time jitter (periods).")] = 0.25,
    duplicate_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of frames resent.")] = 0.0,
    out_of_order_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of frames sent late.")] = 0.0,
    jitter: Annotated[float, typer.Option(min=0, max=10, help="Box jitter in pixels.")] = 1.5,
    edge_detections: Annotated[bool, typer.Option(help="Send the cameras' own detections.")] = True,
    two_way: Annotated[bool, typer.Option(help="The outer lane runs away from the camera.")] = False,
    readings_per_second: Annotated[float, typer.Option(min=0.1, max=10, help="GPS fixes per second.")] = 1.0,
    width: Annotated[int, typer.Option(min=320, max=1920, help="Frame width in pixels (16:9).")] = 960,
    truth: Annotated[Path, typer.Option(help="Ground-truth file (JSON lines).")] = Path(
        ".itsmesh/simulator/truth.jsonl"
    ),
    streaming: Annotated[str | None, typer.Option(help="host:port of streaming (else discovery).")] = None,
    auth: Annotated[str | None, typer.Option(help="host:port of auth's gRPC (else discovery).")] = None,
    authenticate: Annotated[bool, typer.Option(help="Log in and stream with device credentials.")] = True,
    loop: Annotated[bool, typer.Option(help="Run again (next seed) after each run, until Ctrl-C.")] = False,
    progress: Annotated[bool, typer.Option(help="Live progress table (else one line per run).")] = True,
    prefix: Annotated[str, typer.Option(help="Prefix of camera and device ids.")] = "sim",
) -> None:
    """Synthetic cameras (rendered JPEGs with known vehicles) and GPS devices, streamed in real time.

    Registers the cameras with the streaming service and the devices with auth, streams frames and
    telemetry, and writes the ground truth (vehicles: lane, direction, crossing time, speed; devices:
    overspeed and geofence exits) before the first frame. Authentication: see README "Simulator".
    """
    from services.simulator.command import SimulationFailed, run_simulations
    from services.simulator.config import SimulatorSettings
    from services.simulator.plan import SimulationOptions

    options = SimulationOptions(
        cameras=cameras,
        devices=devices,
        fps=fps,
        duration_s=duration,
        seed=seed,
        vehicles_per_minute=vehicles_per_minute,
        drop_rate=drop_rate,
        irregular=irregular,
        duplicate_rate=duplicate_rate,
        out_of_order_rate=out_of_order_rate,
        jitter_px=jitter,
        edge_detections=edge_detections,
        two_way=two_way,
        readings_per_second=readings_per_second,
        width_px=width,
        height_px=round(width * 9 / 16),
        prefix=prefix,
    )
    overrides = {k: v for k, v in (("streaming_address", streaming), ("auth_address", auth)) if v}
    settings = SimulatorSettings().model_copy(update=overrides)
    try:
        run_simulations(
            options, settings, truth=truth, authenticate=authenticate, loop=loop, show_progress=progress
        )
    except SimulationFailed as exc:
        fail(f"simulate: {exc}")


@app.command()
def status(
    window: Annotated[
        float, typer.Option(help="Seconds over which recent rps and error rate are measured.")
    ] = 1.0,
) -> None:
    """The console's status vector as tables: infrastructure and every instance, then each instance's
    breaker states (as its clients report them), rps and error rate.

    Reads DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS; exits 1 when a component is down, an
    instance is not SERVING, or nothing is registered.
    """
    from mesh.inventory import collect_inventory
    from mesh.registry import RegistryUnavailableError, open_redis
    from mesh.settings import InfraSettings
    from services.console.aggregator import StatusAggregator

    settings = InfraSettings()
    # An unreachable broker is a row of the table; the client library's own error logs would only repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def main() -> tuple[dict[str, Any], list[InstanceReport]]:
        aggregator = StatusAggregator(
            database_url=settings.database_url,
            redis_url=settings.redis_url,
            kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        )
        try:
            vector = await aggregator.tick("itsmesh status")
        finally:
            await aggregator.__aexit__(None, None, None)
        redis = open_redis(settings.redis_url)
        try:
            return vector.body, await collect_inventory(redis, window_s=window)
        finally:
            await redis.aclose()

    try:
        body, reports = asyncio.run(main())
    except RegistryUnavailableError as exc:
        fail(f"status: discovery (Redis) is unreachable — {exc}")
    out.print(_vector_table(body))
    if not reports:
        fail("status: no instance is registered — is `itsmesh up` running, and REDIS_URL the same?")
    out.print(_inventory_table(reports))
    down = [c["name"] for c in body["components"] if c["status"] == "down"]
    if down or not all(r.health.serving for r in reports):
        raise typer.Exit(code=1)


_STATUS_STYLE: Final = {"healthy": "green", "degraded": "yellow", "down": "bold red", "unknown": "dim"}


def _vector_table(body: dict[str, Any]) -> Table:
    traffic = body.get("traffic", {})
    rps, errors = traffic.get("rps"), traffic.get("error_rate")
    title = (
        f"itsmesh status — traffic {traffic.get('mode', '?')}, "
        f"{'-' if rps is None else f'{rps:.1f}'} rps, "
        f"{'-' if errors is None else f'{errors:.1%}'} errors"
    )
    table = Table(title=title)
    for column in ("component", "type", "status", "latency", "details"):
        table.add_column(column, overflow="fold")
    for component in body["components"]:
        latency = component.get("latency_ms")
        details = component.get("error") or ", ".join(
            f"{k}={v}"
            for k, v in list(component.get("details", {}).items())[:4]
            if not isinstance(v, dict | list)
        )
        style = _STATUS_STYLE.get(component["status"], "")
        table.add_row(
            component["name"],
            component["type"],
            f"[{style}]{component['status']}[/]",
            "-" if latency is None else f"{latency:.1f} ms",
            details,
        )
    return table


def _inventory_table(reports: list[InstanceReport]) -> Table:
    table = Table(title="itsmesh instances")
    for column in (
        "service",
        "instance",
        "address",
        "health",
        "latency",
        "breaker",
        "rps",
        "errors (recent)",
    ):
        table.add_column(column)
    for r in sorted(reports, key=lambda r: (r.instance.service, r.instance.instance_id)):
        colour = "green" if r.health.serving else "red"
        breaker = ", ".join(b.state for b in r.breakers) or "—"
        rps = f"{r.recent.total / r.recent_window_s:.1f}" if r.recent and r.recent_window_s else "—"
        rate = r.recent.error_rate if r.recent else None
        table.add_row(
            r.instance.service,
            r.instance.instance_id,
            r.instance.address,
            f"[{colour}]{r.health.status}[/]",
            f"{r.health.latency_ms:.1f} ms",
            breaker,
            rps,
            "—" if rate is None else f"{rate:.1%}",
        )
    return table


def _status_table(results: dict[str, ProbeResult], endpoints: dict[str, tuple[str, int]]) -> Table:
    table = Table(title="itsmesh services")
    for column in ("service", "endpoint", "status", "latency"):
        table.add_column(column)
    for name, result in results.items():
        kind, port = endpoints[name]
        colour = "green" if result.serving else "red"
        table.add_row(
            name,
            f"{kind}://127.0.0.1:{port}",
            f"[{colour}]{result.status}[/]",
            f"{result.latency_ms:.1f} ms" if result.serving else result.error[:60],
        )
    return table


async def _run_simulator(
    stop: asyncio.Event, ready: asyncio.Event, env: dict[str, str], data_dir: Path
) -> None:
    """`itsmesh simulate --loop` as a supervised child, started once every service serves."""
    import sys

    from infrastructure.supervisor import ChildSpec, Supervisor
    from mesh.probe import ProbeResult

    waiting = {asyncio.create_task(stop.wait()), asyncio.create_task(ready.wait())}
    _, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if stop.is_set():
        return
    truth = data_dir / "simulator" / "truth.jsonl"
    argv = [sys.executable, "-m", "services.cli", "simulate", "--loop", "--no-progress"]
    argv += ["--truth", str(truth)]

    async def running() -> ProbeResult:  # a client has no health endpoint; it runs or is restarted
        return ProbeResult("SERVING", 0.0)

    def started(_: dict[str, ProbeResult]) -> None:
        out.print(f"[cyan] simulator[/] streaming; ground truth in {truth}, log in {data_dir / 'logs'}")

    await Supervisor([ChildSpec("simulator", argv, "client", running)], env, data_dir / "logs", _warn).run(
        stop, started
    )


def _ports_from_env() -> InfraPorts:
    from infrastructure.embedded import InfraPorts
    from mesh.settings import EmbeddedPortSettings

    ports = EmbeddedPortSettings()
    return InfraPorts(postgres=ports.pg_port, redis=ports.redis_port, kafka=ports.kafka_port)


def _progress(component: str, message: str) -> None:
    out.print(f"[cyan]{component:>10}[/] {message}", highlight=False)


def _warn(message: str) -> None:
    err.print(f"[yellow]{message}[/]", highlight=False)


def main() -> None:
    """Entry point of the `itsmesh` console script."""
    app()


if __name__ == "__main__":
    main()
