"""`itsmesh simulate` as a process against a real streaming service: flags, truth file, exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest

from services.simulator.truth import read_truth
from tests.integration.streaming_host import streaming_host

pytestmark = pytest.mark.integration


async def _simulate(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "simulate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_run_streams_writes_the_truth_and_reports_a_summary(infra, tmp_path):
    env = {**os.environ, "COLUMNS": "200", "ITSMESH_DATA_DIR": str(tmp_path / "data")}
    truth = tmp_path / "truth.jsonl"
    prefix = f"c{uuid.uuid4().hex[:8]}"
    async with streaming_host(infra) as host:
        code, out, err = await _simulate(
            f"--streaming=127.0.0.1:{host.grpc_port}",
            "--no-authenticate",
            "--cameras=1",
            "--devices=0",
            "--fps=5",
            "--duration=3",
            "--seed=4",
            "--jitter=2",
            "--no-edge-detections",
            "--no-progress",
            f"--prefix={prefix}",
            f"--truth={truth}",
            env=env,
        )
    assert code == 0, err
    assert "rejected 0" in out
    records = read_truth(truth)
    assert records[0]["options"]["edge_detections"] is False
    assert records[0]["options"]["jitter_px"] == 2.0
    assert [r["camera_id"] for r in records if r["type"] == "camera"] == [f"{prefix}-cam-01"]


async def test_without_credentials_it_fails_with_one_line_saying_what_to_set(infra, tmp_path):
    env = {
        **os.environ,
        "COLUMNS": "200",
        "ITSMESH_DATA_DIR": str(tmp_path / "empty"),
        "REDIS_URL": infra.redis_url,
    }
    env.pop("ITSMESH_ADMIN_PASSWORD", None)
    env.pop("ITSMESH_SIMULATOR_PASSWORD", None)
    async with streaming_host(infra) as host:
        code, _, err = await _simulate(
            f"--streaming=127.0.0.1:{host.grpc_port}",
            f"--auth=127.0.0.1:{host.grpc_port}",  # never asked: no password to log in with
            "--duration=2",
            "--no-progress",
            f"--truth={tmp_path / 't.jsonl'}",
            env=env,
        )
    assert code == 1
    assert "ITSMESH_SIMULATOR_PASSWORD" in err
    assert len(err.strip().splitlines()) == 1
