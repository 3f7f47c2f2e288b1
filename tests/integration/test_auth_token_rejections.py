"""Every service refuses forged, mis-addressed, expired and missing tokens with UNAUTHENTICATED."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.status import status_details
from tests.integration.auth_stack import bearer, running_stack, user_token

pytestmark = pytest.mark.integration

# One read-only method per service, and the permission an admin holds for it.
PROBES = {
    "streaming": "/itsmesh.v1.StreamingService/ListCameras",
    "analytics": "/itsmesh.v1.AnalyticsService/GetPipelineStatus",
    "alert": "/itsmesh.v1.AlertService/ListAlerts",
    "auth": "/itsmesh.v1.AuthService/ListRoles",
}


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra) as running:
        yield running


async def _call(stack, service: str, metadata) -> tuple[grpc.StatusCode, str | None]:
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:
        call = channel.unary_unary(
            PROBES[service], request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            await call(b"", metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as exc:
            details = status_details(exc)
            return details.code, details.reason
    return grpc.StatusCode.OK, None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(stack, **overrides):
    settings = stack.authority.settings
    now = int(time.time())
    claims = {
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "sub": "mallory",
        "sub_type": "user",
        "roles": ["admin"],
        "scope": "*",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": f"forged-{now}",
    }
    claims.update(overrides)
    return claims


@pytest.fixture(scope="module")
async def forgeries(stack):
    """Tokens that must all be refused, by the reason each should be refused for."""
    signer = await stack.authority.current_signer()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = _b64(json.dumps(_claims(stack)).encode())
    none_header = _b64(json.dumps({"alg": "none", "kid": signer.kid}).encode())
    hs_header = _b64(json.dumps({"alg": "HS256", "kid": signer.kid, "typ": "JWT"}).encode())
    hs_mac = hmac.new(public_pem, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    return {
        "forged signature": (
            jwt.encode(_claims(stack), attacker, algorithm="RS256", headers={"kid": signer.kid}),
            "TOKEN_BAD_SIGNATURE",
        ),
        "alg none": (f"{none_header}.{payload}.", "TOKEN_ALGORITHM_NOT_ALLOWED"),
        "HS256 with the public key": (f"{hs_header}.{payload}.{_b64(hs_mac)}", "TOKEN_ALGORITHM_NOT_ALLOWED"),
        "wrong audience": (
            jwt.encode(
                _claims(stack, aud="another-system"),
                signer.key,
                algorithm="RS256",
                headers={"kid": signer.kid},
            ),
            "TOKEN_WRONG_AUDIENCE",
        ),
        "wrong issuer": (
            jwt.encode(
                _claims(stack, iss="https://idp.example"),
                signer.key,
                algorithm="RS256",
                headers={"kid": signer.kid},
            ),
            "TOKEN_WRONG_ISSUER",
        ),
        "expired": (
            jwt.encode(
                _claims(stack, iat=1_000_000, nbf=1_000_000, exp=1_000_600),
                signer.key,
                algorithm="RS256",
                headers={"kid": signer.kid},
            ),
            "TOKEN_EXPIRED",
        ),
        "garbage": ("not-a-jwt", "TOKEN_MALFORMED"),
    }


@pytest.mark.parametrize("service", sorted(PROBES))
async def test_every_service_refuses_every_forgery_with_unauthenticated(stack, forgeries, service):
    found = {name: await _call(stack, service, bearer(token)) for name, (token, _) in forgeries.items()}
    expected = {name: (grpc.StatusCode.UNAUTHENTICATED, reason) for name, (_, reason) in forgeries.items()}
    assert found == expected


@pytest.mark.parametrize("service", sorted(PROBES))
async def test_a_missing_token_is_unauthenticated_and_a_real_one_passes(stack, service):
    assert await _call(stack, service, ()) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    assert await _call(stack, service, (("authorization", "Basic YWRtaW46eA=="),)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_CREDENTIALS",
    )
    admin = await user_token(stack, "admin")
    code, _ = await _call(stack, service, bearer(admin))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED)


async def test_health_stays_open_without_a_token(stack):
    for service in PROBES:
        async with grpc.aio.insecure_channel(stack.address(service)) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
