"""The email receiver's message and its settings' validation (no SMTP here: see the integration test)."""

from __future__ import annotations

import json

import pytest

from services.alert.mailer import default_port, message, recipients, subject
from services.alert.routing import RoutingConfigError, parse


def _alert(kind: str, camera: str, status: str = "ALERT_STATUS_FIRING") -> dict:
    return {
        "alert_id": f"id-{camera}",
        "status": status,
        "severity": "SEVERITY_HIGH",
        "labels": {"kind": kind, "camera_id": camera},
        "annotations": {"summary": f"{kind} on {camera}"},
    }


def test_the_subject_names_the_status_the_count_and_the_alerts():
    payload = {
        "notification_type": "firing",
        "alerts": [_alert("camera_offline", f"cam-{i}") for i in range(5)],
    }
    assert subject(payload) == (
        "[FIRING:5] camera_offline cam-0, camera_offline cam-1, camera_offline cam-2 and 2 more"
    )


def test_the_message_carries_every_alert_and_its_summary():
    payload = {
        "notification_type": "resolved",
        "notification_id": "n-1",
        "group_key": "g",
        "alerts": [_alert("speeding", "cam-9", "ALERT_STATUS_RESOLVED")],
    }
    mail = message({"from": "a@example.org", "to": ["b@example.org", "c@example.org"]}, payload)
    assert mail["Subject"] == "[RESOLVED:1] speeding cam-9"
    assert mail["To"] == "b@example.org, c@example.org"
    assert mail["X-Itsmesh-Notification-Id"] == "n-1"
    text = mail.get_content()
    assert "camera_id=cam-9" in text
    assert "speeding on cam-9" in text


def test_ports_and_recipients_have_sensible_defaults():
    assert default_port({"tls": True}) == 465
    assert default_port({"starttls": True}) == 587
    assert default_port({}) == 25
    assert default_port({"port": 2525, "tls": True}) == 2525
    assert recipients({"to": "a@x, b@x"}) == ["a@x", "b@x"]


def _config(email: dict) -> str:
    return json.dumps({"receivers": [{"name": "mail", "email": email}], "route": {"receiver": "mail"}})


def test_email_settings_are_validated_with_the_field_named():
    with pytest.raises(RoutingConfigError) as caught:
        parse(
            _config({"host": "h", "to": "x@y", "password": "p", "port": 70000, "tls": True, "starttls": True})
        )
    where = {w for w, _ in caught.value.problems}
    assert {
        "receivers[0].email.password",
        "receivers[0].email.port",
        "receivers[0].email.tls",
        "receivers[0].email.from",
    } <= where


def test_a_password_is_referenced_by_environment_variable_name_and_needs_a_user():
    with pytest.raises(RoutingConfigError) as caught:
        parse(_config({"host": "h", "from": "a@x", "to": "x@y", "password_env": "SMTP_PASSWORD"}))
    assert [w for w, _ in caught.value.problems] == ["receivers[0].email.username"]
    config = parse(_config({"host": "h", "from": "a@x", "to": "x@y", "username": "u", "password_env": "P"}))
    assert config.receivers["mail"].target == "x@y"
