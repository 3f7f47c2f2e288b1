"""The alert service behind real auth: the token's subject is who acknowledges, resolves and silences."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from itsmesh.v1 import alert_pb2, alert_pb2_grpc
from tests.integration.alert_host import camera_matcher, new_camera, raise_request
from tests.integration.auth_stack import bearer, expect_rpc_error, running_stack, user_token

pytestmark = pytest.mark.integration


def _subject(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


async def test_acknowledge_resolve_and_silence_record_the_token_subject(infra):
    async with running_stack(infra) as stack:
        operator = await user_token(stack, "operator")
        viewer = await user_token(stack, "viewer")
        async with grpc.aio.insecure_channel(stack.address("alert")) as channel:
            stub = alert_pb2_grpc.AlertServiceStub(channel)
            camera = new_camera()
            raised = await stub.RaiseAlert(raise_request(camera), metadata=bearer(operator))
            alert_id = raised.alert.alert_id
            denied = await expect_rpc_error(
                stub.AcknowledgeAlert(
                    alert_pb2.AcknowledgeAlertRequest(alert_id=alert_id), metadata=bearer(viewer)
                )
            )
            assert denied.code == grpc.StatusCode.PERMISSION_DENIED
            acked = await stub.AcknowledgeAlert(
                alert_pb2.AcknowledgeAlertRequest(alert_id=alert_id, comment="on it"),
                metadata=bearer(operator),
            )
            assert acked.acknowledged_by == _subject(operator)
            resolved = await stub.ResolveAlert(
                alert_pb2.ResolveAlertRequest(alert_id=alert_id), metadata=bearer(operator)
            )
            assert resolved.resolved_by == _subject(operator)
            silence = alert_pb2.Silence(matchers=[camera_matcher(camera)], comment="maintenance")
            silence.end_time.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
            created = await stub.CreateSilence(
                alert_pb2.CreateSilenceRequest(silence=silence), metadata=bearer(operator)
            )
            assert created.created_by == _subject(operator)
            seen = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert_id), metadata=bearer(viewer))
            assert seen.alert_id == alert_id
