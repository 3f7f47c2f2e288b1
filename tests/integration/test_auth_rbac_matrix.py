"""Every RPC of every service against every role: PERMISSION_DENIED naming the permission, or let through.

Tokens are real (users log in, a device and a service account use the client-credentials grant); the
four services run on loopback and enforce ``mesh.permissions`` through their auth interceptors. Each call
sends an empty request: a call that passes the interceptor ends in the handler (UNIMPLEMENTED for the
skeleton services, a validation error or an answer for auth), which is all this test needs to know.
"""

from __future__ import annotations

import grpc
import pytest

from itsmesh.v1 import alert_pb2, analytics_pb2, auth_pb2, auth_pb2_grpc, streaming_pb2
from mesh.permissions import ANONYMOUS_PERMISSIONS, GRPC_METHOD_PERMISSIONS, ROLE_PERMISSIONS, ROLES
from mesh.status import StatusDetails, status_details
from services.auth.authority import SYSTEM
from tests.integration.auth_stack import bearer, running_stack, unique, user_token

pytestmark = pytest.mark.integration

SERVICES = {
    "streaming": streaming_pb2.DESCRIPTOR.services_by_name["StreamingService"],
    "analytics": analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
    "alert": alert_pb2.DESCRIPTOR.services_by_name["AlertService"],
    "auth": auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
}
_IDENTITY = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
# Allowed calls with an empty request that would change shared state in a way later tests notice.
SKIP_ALLOWED = {"/itsmesh.v1.AuthService/RotateSigningKey"}


@pytest.fixture(scope="module")
async def stack(infra):
    async with running_stack(infra) as running:
        yield running


@pytest.fixture(scope="module")
async def tokens(stack) -> dict[str, str]:
    """An access token for each of the six roles."""
    found = {role: await user_token(stack, role) for role in ("admin", "operator", "analyst", "viewer")}
    authority = stack.authority
    device, credentials = await authority.register_device(
        SYSTEM, device_id=unique("cam"), kind="camera", name="matrix camera", labels={}
    )
    account, secret = await authority.create_service_account(
        SYSTEM, service_account_id=unique("svc"), description="matrix", roles=("service",)
    )
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for role, client_id, client_secret in (
            ("device", device.device_id, credentials.api_key),
            ("service", account.service_account_id, secret),
        ):
            reply = await stub.ExchangeClientCredentials(
                auth_pb2.ExchangeClientCredentialsRequest(client_id=client_id, client_secret=client_secret),
                timeout=5,
            )
            found[role] = reply.access_token
    assert set(found) == set(ROLES)
    return found


async def _invoke(channel: grpc.aio.Channel, path: str, method, metadata) -> StatusDetails | None:
    """Call ``path`` with an empty request in whatever shape it has; its error, or None on success."""
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(path, **_IDENTITY)(iter(()), metadata=metadata, timeout=5)
            async for _ in call:
                pass
        elif method.client_streaming:
            await channel.stream_unary(path, **_IDENTITY)(iter(()), metadata=metadata, timeout=5)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, **_IDENTITY)(b"", metadata=metadata, timeout=5):
                pass
        else:
            await channel.unary_unary(path, **_IDENTITY)(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return status_details(exc)
    return None


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_each_role_is_let_through_exactly_the_rpcs_its_permissions_allow(stack, tokens, service):
    descriptor = SERVICES[service]
    wrong: list[str] = []
    checked = 0
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:
        for method in descriptor.methods:
            path = f"/{descriptor.full_name}/{method.name}"
            permission = GRPC_METHOD_PERMISSIONS[path]
            for role in ROLES:
                allowed = permission in ROLE_PERMISSIONS[role] or permission in ANONYMOUS_PERMISSIONS
                if allowed and path in SKIP_ALLOWED:
                    continue
                error = await _invoke(channel, path, method, bearer(tokens[role]))
                checked += 1
                if allowed:
                    if (
                        error is not None
                        and error.code
                        in (
                            grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.PERMISSION_DENIED,
                        )
                        and error.reason in ("MISSING_PERMISSION", "METHOD_NOT_MAPPED", "MISSING_CREDENTIALS")
                    ):
                        wrong.append(f"{role} refused {path}: {error.code.name} {error.reason}")
                elif (
                    error is None
                    or error.code != grpc.StatusCode.PERMISSION_DENIED
                    or error.metadata.get("permission") != permission
                    or permission not in error.message
                ):
                    wrong.append(f"{role} not denied {path} ({permission}): {error}")
    assert wrong == []
    assert checked >= len(descriptor.methods) * 5


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_without_a_token_every_non_public_rpc_is_unauthenticated(stack, service):
    descriptor = SERVICES[service]
    wrong = []
    async with grpc.aio.insecure_channel(stack.address(service)) as channel:
        for method in descriptor.methods:
            path = f"/{descriptor.full_name}/{method.name}"
            if GRPC_METHOD_PERMISSIONS[path] in ANONYMOUS_PERMISSIONS:
                continue
            error = await _invoke(channel, path, method, ())
            if error is None or error.code != grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(path)
    assert wrong == []


async def test_public_auth_rpcs_answer_without_a_token(stack):
    async with grpc.aio.insecure_channel(stack.auth_grpc) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        jwks = await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
        assert jwks.keys
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.Login(auth_pb2.LoginRequest(), timeout=5)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert status_details(invalid.value).field_violations[0][0] == "username"
