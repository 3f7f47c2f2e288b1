"""Mutual TLS between services on loopback: the switch, and callers without a valid certificate refused."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.client import ClientConfig, MeshClient
from mesh.host import ServiceHost
from mesh.tls import TlsSettings, create_ca, issue_certificate, open_channel
from services.streaming.config import StreamingSettings
from services.streaming.service import build as build_streaming

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = create_ca(directory)
    server = issue_certificate(ca, directory, "streaming", ["localhost", "127.0.0.1"])
    client = issue_certificate(ca, directory, "client", ["localhost"])
    rogue_ca = create_ca(directory / "rogue")
    rogue = issue_certificate(rogue_ca, directory / "rogue", "client", ["localhost"])
    return {"ca": ca, "server": server, "client": client, "rogue_ca": rogue_ca, "rogue": rogue}


def _tls(ca, issued, **extra) -> TlsSettings:
    return TlsSettings(
        enabled=True, ca_file=ca.cert_file, cert_file=issued.cert_file, key_file=issued.key_file, **extra
    )


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


@pytest.fixture
async def mtls_host(infra, pki):
    settings = StreamingSettings(
        database_url=infra.database_url,
        redis_url=infra.redis_url,
        bind_host="127.0.0.1",
        grpc_port=0,
        register_in_discovery=False,
        metrics_port=None,
        drain_grace_s=1.0,
    )
    host = ServiceHost(build_streaming(settings), tls=_tls(pki["ca"], pki["server"]))
    await host.start()
    yield f"127.0.0.1:{host.grpc_port}"
    await host.stop()


async def test_client_with_a_certificate_from_the_ca_is_served(mtls_host, pki):
    async with open_channel(mtls_host, _tls(pki["ca"], pki["client"])) as channel:
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_client_is_refused(mtls_host):
    async with grpc.aio.insecure_channel(mtls_host) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_without_a_certificate_is_refused(mtls_host, pki):
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert_file.read_bytes())
    async with grpc.aio.secure_channel(mtls_host, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_certificate_from_another_ca_is_refused(mtls_host, pki):
    # The rogue client trusts the real CA (so it would accept the server) but its own cert is foreign.
    rogue = TlsSettings(
        enabled=True,
        ca_file=pki["ca"].cert_file,
        cert_file=pki["rogue"].cert_file,
        key_file=pki["rogue"].key_file,
    )
    async with open_channel(mtls_host, rogue) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_from_another_ca_is_not_trusted(mtls_host, pki):
    distrustful = _tls(pki["rogue_ca"], pki["rogue"])
    async with open_channel(mtls_host, distrustful) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_enabled_without_files_names_the_missing_variables():
    with pytest.raises(ValueError, match="ITSMESH_TLS_CA_FILE, ITSMESH_TLS_CERT_FILE, ITSMESH_TLS_KEY_FILE"):
        TlsSettings(enabled=True).server_credentials()


async def _health_command(address: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "health",
        address,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_health_command_presents_the_configured_certificate(mtls_host, pki):
    env = {
        "ITSMESH_TLS_ENABLED": "true",
        "ITSMESH_TLS_CA_FILE": str(pki["ca"].cert_file),
        "ITSMESH_TLS_CERT_FILE": str(pki["client"].cert_file),
        "ITSMESH_TLS_KEY_FILE": str(pki["client"].key_file),
    }
    code, output = await _health_command(mtls_host, env)
    assert code == 0, output
    assert "SERVING" in output

    code, output = await _health_command(mtls_host, {"ITSMESH_TLS_ENABLED": "false"})
    assert code == 1
    assert output.startswith("error:")
    assert "DOWN" in output


async def test_mesh_clients_call_through_mtls_and_without_a_certificate_get_no_endpoint(mtls_host, pki):
    secure = ClientConfig(tls=_tls(pki["ca"], pki["client"]))
    async with MeshClient.static({"streaming": [mtls_host]}, config=secure) as mesh:
        reply = await mesh.stub("streaming", health_pb2_grpc.HealthStub).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    plaintext = ClientConfig(tls=TlsSettings(enabled=False))
    async with MeshClient.static({"streaming": [mtls_host]}, config=plaintext) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.stub("streaming", health_pb2_grpc.HealthStub).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
