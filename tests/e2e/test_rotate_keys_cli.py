"""`itsmesh rotate-keys`: a new signing key signs from now on; earlier ones stay published."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from mesh.migrations import apply_migrations

pytestmark = pytest.mark.e2e

SECRET_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
async def fresh_db(infra):
    name = f"rot_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(infra.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(infra.database_url)._replace(path=f"/{name}"))
    await apply_migrations(url)
    yield url
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


def _rotate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "rotate-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_each_rotation_adds_an_active_key_and_keeps_the_previous_ones(fresh_db, infra, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": fresh_db,
        "REDIS_URL": infra.redis_url,
        "ITSMESH_AUTH_SECRET_KEY": SECRET_KEY,
        "ITSMESH_ADMIN_PASSWORD": "correct horse battery staple",
        "ITSMESH_DATA_DIR": str(tmp_path),
    }
    first, second = _rotate(env), _rotate(env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    conn = await asyncpg.connect(fresh_db)
    try:
        keys = await conn.fetch("SELECT kid FROM auth.signing_keys")
    finally:
        await conn.close()
    kids = {r["kid"] for r in keys}
    assert len(kids) == 3, "the start-up key and two rotations"
    assert first.stdout.split()[3] in kids
    assert second.stdout.split()[3] in kids

    env["ITSMESH_AUTH_SECRET_KEY"] = base64.b64encode(bytes(32)).decode()
    refused = _rotate(env)
    assert refused.returncode == 1
    assert len([line for line in refused.stderr.splitlines() if line.strip()]) == 1
