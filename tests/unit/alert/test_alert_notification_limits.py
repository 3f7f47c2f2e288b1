"""A receiver's max_alerts (the rest counted in truncated_alerts) and the console link, in every format."""

from __future__ import annotations

import json

import pytest

from services.alert.mailer import message, subject
from services.alert.routing import RoutingConfigError, parse
from services.alert.senders import console_link, notification_message, prepared, slack_text


def _alert(i: int) -> dict:
    return {
        "alert_id": f"00000000-0000-0000-0000-00000000000{i}",
        "status": "ALERT_STATUS_FIRING",
        "severity": "SEVERITY_HIGH",
        "labels": {"kind": "camera_offline", "camera_id": f"cam-{i}"},
        "annotations": {"summary": f"cam-{i} is offline"},
    }


def _stored(count: int) -> dict:
    return {
        "receiver": "ops",
        "notification_type": "firing",
        "group_key": "route:[]",
        "notification_id": "5b0c7a4e-6a34-4c52-9f5e-3f1f3b2b9d10",
        "alerts": [_alert(i) for i in range(count)],
        "common_labels": {"kind": "camera_offline"},
    }


def test_max_alerts_keeps_the_first_ones_and_counts_the_rest():
    payload = prepared(_stored(5), 2, "")
    assert [a["labels"]["camera_id"] for a in payload["alerts"]] == ["cam-0", "cam-1"]
    assert payload["truncated_alerts"] == 3
    assert payload["common_labels"] == {"kind": "camera_offline"}  # describes the whole group still


@pytest.mark.parametrize(("max_alerts", "count"), [(0, 5), (5, 5), (9, 5), (3, 0)])
def test_nothing_is_left_out_within_the_limit_or_without_one(max_alerts, count):
    payload = prepared(_stored(count), max_alerts, "")
    assert len(payload["alerts"]) == count
    assert payload["truncated_alerts"] == 0


def test_the_stored_notification_is_not_changed():
    stored = _stored(3)
    prepared(stored, 1, "http://console:8080")
    assert len(stored["alerts"]) == 3
    assert "truncated_alerts" not in stored


def test_the_console_link_points_at_the_alert_feed():
    assert console_link("http://localhost:8080") == "http://localhost:8080/#alerts"
    assert console_link("https://ops.example.org/console/") == "https://ops.example.org/console/#alerts"
    assert console_link("") == ""
    assert prepared(_stored(1), 0, "http://localhost:8080")["console_url"] == "http://localhost:8080/#alerts"
    assert prepared(_stored(1), 0, "")["console_url"] == ""


def test_slack_text_says_how_many_were_left_out_and_links_the_console():
    text = slack_text(prepared(_stored(4), 1, "http://localhost:8080"))
    assert "cam-0" in text
    assert "cam-1" not in text
    assert "… and 3 more" in text
    assert text.endswith("Console: http://localhost:8080/#alerts")
    assert "more" not in slack_text(prepared(_stored(1), 1, ""))
    assert "Console" not in slack_text(prepared(_stored(1), 1, ""))


def test_the_email_counts_every_alert_and_links_the_console():
    payload = prepared(_stored(6), 2, "http://localhost:8080")
    assert subject(payload) == "[FIRING:6] camera_offline cam-0, camera_offline cam-1 and 4 more"
    mail = message({"from": "a@example.org", "to": "b@example.org"}, payload)
    text = mail.get_content()
    assert "Console: http://localhost:8080/#alerts" in text
    assert "cam-1" in text
    assert "cam-2" not in text
    assert "4 more alerts, not listed" in text


def test_the_kafka_notification_carries_the_count_and_the_link():
    notification = notification_message(prepared(_stored(3), 1, "http://localhost:8080"))
    assert len(notification.alerts) == 1
    assert notification.truncated_alerts == 2
    assert notification.console_url == "http://localhost:8080/#alerts"


def _config(receiver: dict) -> str:
    return json.dumps({"receivers": [{"name": "ops", **receiver}], "route": {"receiver": "ops"}})


@pytest.mark.parametrize(
    "receiver",
    [
        {"webhook": {"url": "http://127.0.0.1:1/hook", "max_alerts": 10}},
        {"slack": {"url": "https://hooks.example.org/x", "max_alerts": 0}},
        {"kafka": {"max_alerts": 3}},
        {"email": {"host": "127.0.0.1", "from": "a@example.org", "to": "b@example.org", "max_alerts": 5}},
    ],
)
def test_every_receiver_type_takes_max_alerts(receiver):
    config = parse(_config(receiver))
    assert config.receivers["ops"].max_alerts == next(iter(receiver.values()))["max_alerts"]


@pytest.mark.parametrize("value", [-1, 2.5, "10", True])
def test_a_bad_max_alerts_is_rejected_with_its_path(value):
    with pytest.raises(RoutingConfigError) as caught:
        parse(_config({"webhook": {"url": "http://127.0.0.1:1/hook", "max_alerts": value}}))
    assert [where for where, _ in caught.value.problems] == ["receivers[0].webhook.max_alerts"]


def test_max_alerts_defaults_to_no_limit():
    assert parse(_config({"webhook": {"url": "http://127.0.0.1:1/hook"}})).receivers["ops"].max_alerts == 0
