"""The `itsmesh` command as a user meets it: whole processes, real embedded servers, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

SERVICES = ("STREAMING", "ANALYTICS", "ALERT", "AUTH")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _itsmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Env for a whole `itsmesh up`: every port free and private, data under tmp_path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    env.update(
        ITSMESH_DATA_DIR=str(tmp_path / "data"),
        ITSMESH_PG_PORT=str(_free_port()),
        ITSMESH_REDIS_PORT=str(_free_port()),
        ITSMESH_KAFKA_PORT=str(_free_port()),
        ITSMESH_AUTH_HTTP_PORT=str(_free_port()),
        ITSMESH_CONSOLE_HTTP_PORT=str(_free_port()),
        COLUMNS="200",
    )
    for name in SERVICES:
        env[f"ITSMESH_{name}_GRPC_PORT"] = str(_free_port())
    return env


def test_help_explains_every_command():
    result = subprocess.run(_itsmesh("--help"), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    for command in ("up", "serve", "infra", "migrate", "status"):
        assert command in result.stdout


def test_infra_on_a_taken_port_exits_nonzero_with_one_line_naming_the_component(isolated_env):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        isolated_env["ITSMESH_PG_PORT"] = str(holder.getsockname()[1])
        result = subprocess.run(
            _itsmesh("infra"), env=isolated_env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert "postgres" in error_lines[0]
    assert isolated_env["ITSMESH_PG_PORT"] in error_lines[0]


class _Up:
    """A running `itsmesh up` whose output a reader thread collects line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            _itsmesh("up"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not seen; output so far:\n" + "\n".join(self.lines))

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


@pytest.fixture
def running_up(isolated_env) -> Iterator[_Up]:
    up = _Up(isolated_env)
    try:
        up.wait_for("all services serving", timeout_s=120)
        yield up
    finally:
        if up.proc.poll() is None:
            for child in up.descendants():
                child.kill()
            up.proc.kill()
            up.proc.wait()


def _gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return alive


def test_up_serves_everything_restarts_a_killed_service_and_ctrl_c_leaves_nothing(running_up):
    up = running_up
    for name in ("streaming", "analytics", "alert", "auth", "console"):
        assert any(name in line and "SERVING" in line for line in up.lines), name

    # `itsmesh status` shows the infrastructure and every registered instance from discovery, all SERVING
    env = {
        **up.env,
        "REDIS_URL": f"redis://127.0.0.1:{up.env['ITSMESH_REDIS_PORT']}/0",
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{up.env['ITSMESH_PG_PORT']}/itsmesh",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{up.env['ITSMESH_KAFKA_PORT']}",
    }
    status = subprocess.run(
        _itsmesh("status"), env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("postgresql", "redis", "kafka"):
        assert any(line.count(name) and "healthy" in line for line in status.stdout.splitlines()), (
            status.stdout
        )
    for name in ("streaming", "analytics", "alert", "auth"):
        assert any(line.count(name) and "SERVING" in line for line in status.stdout.splitlines()), (
            status.stdout
        )

    # a service that dies is reported and comes back
    streaming = next(p for p in up.descendants() if p.cmdline()[-2:] == ["serve", "streaming"])
    streaming.kill()
    up.wait_for("streaming exited with code -9; restarting", timeout_s=20)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replacement = [p for p in up.descendants() if p.cmdline()[-2:] == ["serve", "streaming"]]
        if replacement and replacement[0].pid != streaming.pid:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("streaming was not restarted")

    family = up.descendants()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    assert _gone(family, timeout_s=10) == [], "Ctrl-C left processes behind"


def test_kill_9_of_up_leaves_no_orphan(running_up):
    family = running_up.descendants()
    assert len(family) >= 8  # 3 servers (+ postgres workers) and 5 services
    running_up.proc.kill()
    running_up.proc.wait()
    assert _gone(family, timeout_s=15) == [], "children outlived a killed parent"


def test_status_without_discovery_says_so_in_one_line(isolated_env):
    isolated_env["REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    result = subprocess.run(
        _itsmesh("status"), env=isolated_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "Redis" in lines[0]
