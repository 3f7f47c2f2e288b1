"""`pip install .` must produce a wheel whose generated stubs import (they are never committed)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_importable_stubs_and_migrations(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            # The build's own dependencies pinned by the lock: an unpinned build takes the newest
            # grpcio-tools, whose stubs refuse to import with the older grpcio the lock pins.
            "--build-constraint",
            str(ROOT / "requirements.lock"),
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("itsmesh-*.whl"))
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(unpacked)
    assert "itsmesh/v1/streaming_pb2_grpc.py" in names
    assert "itsmesh/v1/events_pb2.pyi" in names
    assert "infrastructure/sql/0001_schemas.sql" in names
    probe = (
        "from itsmesh.v1 import common_pb2, events_pb2, streaming_pb2_grpc, analytics_pb2_grpc, "
        "alert_pb2_grpc, auth_pb2_grpc; print(streaming_pb2_grpc.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(unpacked)!r}); {probe}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith(str(unpacked))
