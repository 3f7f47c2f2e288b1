"""The email receiver against a real SMTP server (aiosmtpd) on loopback: STARTTLS, AUTH with a password
named by an environment variable, subject and body naming the alerts, retries with recorded attempts."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import grpc
import pytest

from itsmesh.v1 import alert_pb2
from tests.integration.alert_host import (
    MovableClock,
    alert_host,
    alert_stub,
    new_camera,
    raise_request,
    until,
)
from tests.integration.alert_receiver import smtp_receiver

pytestmark = pytest.mark.integration

PASSWORD_ENV = "ITSMESH_TEST_SMTP_PASSWORD"
PASSWORD = "smtp-password-never-logged"
FAST = {
    "delivery_poll_interval_s": 0.02,
    "delivery_backoff_base_s": 2.0,
    "delivery_backoff_max_s": 4.0,
    "delivery_max_attempts": 4,
}


def _routing(email: dict, **route: object) -> str:
    return json.dumps(
        {
            "receivers": [{"name": "mail", "email": email}],
            "route": {"receiver": "mail", "group_wait": 0, "group_by": ["camera_id"], **route},
        }
    )


async def _deliveries(stub, alert_id):
    return list((await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert_id))).deliveries)


async def test_an_alert_is_mailed_over_starttls_with_auth_and_the_password_is_never_shown(
    infra, monkeypatch, caplog
):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    caplog.set_level(logging.DEBUG, logger="services")
    async with (
        smtp_receiver(starttls=True, users={"alerts": PASSWORD}) as smtp,
        alert_host(infra, MovableClock(), **FAST) as host,
        alert_stub(host) as stub,
    ):
        config = _routing(
            {
                "host": "127.0.0.1",
                "port": smtp.port,
                "starttls": True,
                "verify_certs": False,  # the test server's certificate is self-signed
                "from": "itsmesh@example.org",
                "to": ["oncall@example.org", "ops@example.org"],
                "username": "alerts",
                "password_env": PASSWORD_ENV,
            }
        )
        shown = await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        assert PASSWORD not in shown.yaml
        [info] = shown.receivers
        assert (info.type, info.target) == (
            alert_pb2.RECEIVER_TYPE_EMAIL,
            "oncall@example.org, ops@example.org",
        )
        camera = new_camera()
        raised = (await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))).alert

        async def delivered():
            found = await _deliveries(stub, raised.alert_id)
            return found if found and found[0].state == alert_pb2.DELIVERY_STATE_SUCCEEDED else None

        [delivery] = await until(delivered)
        assert delivery.receiver_type == alert_pb2.RECEIVER_TYPE_EMAIL
        [attempt] = delivery.attempts
        assert attempt.outcome == alert_pb2.DELIVERY_OUTCOME_SUCCESS
        [mail] = smtp.mails
        assert mail.login == "alerts"
        assert mail.sender == "itsmesh@example.org"
        assert mail.recipients == ["oncall@example.org", "ops@example.org"]
        assert mail.subject == f"[FIRING:1] camera_offline {camera}"
        assert f"camera_id={camera}" in mail.text
        assert f"camera_offline on {camera}" in mail.text  # the summary annotation
        assert raised.alert_id in mail.text
        assert mail.message["X-Itsmesh-Notification-Id"] == delivery.delivery_id
    assert PASSWORD not in caplog.text


async def test_an_smtp_server_that_refuses_then_accepts_is_retried_with_backoff(infra):
    clock = MovableClock()
    async with (
        smtp_receiver(script=["451 4.3.0 try again later"]) as smtp,
        alert_host(infra, clock, **FAST) as host,
        alert_stub(host) as stub,
    ):
        config = _routing(
            {"host": "127.0.0.1", "port": smtp.port, "from": "a@example.org", "to": "b@example.org"}
        )
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        raised = (await stub.RaiseAlert(raise_request(new_camera()))).alert

        async def attempted(n, state):
            async def check():
                found = await _deliveries(stub, raised.alert_id)
                return found[0] if found and len(found[0].attempts) >= n and found[0].state == state else None

            return await until(check)

        first = await attempted(1, alert_pb2.DELIVERY_STATE_RETRYING)
        assert first.attempts[0].outcome == alert_pb2.DELIVERY_OUTCOME_ERROR
        assert first.attempts[0].error.startswith("SMTP 451")
        due = first.next_attempt_time.ToDatetime().replace(tzinfo=clock.now.tzinfo)
        assert clock.now <= due <= clock.now + timedelta(seconds=FAST["delivery_backoff_base_s"])
        assert smtp.mails == []
        clock.advance(FAST["delivery_backoff_base_s"])
        done = await attempted(2, alert_pb2.DELIVERY_STATE_SUCCEEDED)
        assert [a.outcome for a in done.attempts] == [
            alert_pb2.DELIVERY_OUTCOME_ERROR,
            alert_pb2.DELIVERY_OUTCOME_SUCCESS,
        ]
        assert len(smtp.mails) == 1
        assert smtp.attempts == 2


async def test_an_unreachable_smtp_server_is_recorded_as_unreachable_and_retried(infra):
    clock = MovableClock()
    async with smtp_receiver() as closed:
        port = closed.port  # free once the block ends
    async with alert_host(infra, clock, **FAST) as host, alert_stub(host) as stub:
        config = _routing({"host": "127.0.0.1", "port": port, "from": "a@example.org", "to": "b@example.org"})
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        raised = (await stub.RaiseAlert(raise_request(new_camera()))).alert

        async def retrying():
            found = await _deliveries(stub, raised.alert_id)
            ok = found and found[0].state == alert_pb2.DELIVERY_STATE_RETRYING
            return found[0] if ok else None

        first = await until(retrying)
        assert first.attempts[0].outcome == alert_pb2.DELIVERY_OUTCOME_UNREACHABLE
        async with smtp_receiver(port=port) as smtp:
            clock.advance(FAST["delivery_backoff_base_s"])

            async def succeeded():
                found = await _deliveries(stub, raised.alert_id)
                return found[0] if found[0].state == alert_pb2.DELIVERY_STATE_SUCCEEDED else None

            await until(succeeded)
            assert len(smtp.mails) == 1


async def test_a_password_in_the_file_is_refused_naming_the_field(infra):
    async with alert_host(infra, MovableClock()) as host, alert_stub(host) as stub:
        config = _routing({"host": "h", "from": "a@example.org", "to": "b@example.org", "password": "x"})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=config))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "receivers[0].email.password" in (caught.value.details() or "")
