"""Which receivers an alert change notifies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.alert.dispatch import NOTIFY_FIRING, NOTIFY_RESOLVED, plan
from services.alert.inhibition import FiringAlert
from services.alert.routing import parse

NOW = datetime(2026, 1, 4, 12, tzinfo=UTC)  # a Sunday
CONFIG = parse(
    json.dumps(
        {
            "receivers": [
                {"name": "ops", "webhook": {"url": "http://ops/hook"}},
                {"name": "lead", "webhook": {"url": "http://lead/hook"}},
                {"name": "bus", "kafka": {}},
            ],
            "escalation_policies": [
                {
                    "name": "p",
                    "tiers": [{"after": 0, "receivers": ["lead"]}, {"after": "10m", "receivers": ["ops"]}],
                }
            ],
            "route": {
                "receiver": "ops",
                "group_wait": "30s",
                "routes": [
                    {"matchers": ['kind="camera_offline"'], "receiver": "bus", "continue": True},
                    {"matchers": ['kind="camera_offline"'], "escalation_policy": "p"},
                    {"matchers": ['kind="speeding"'], "mute_time_intervals": ["sundays"]},
                ],
            },
            "inhibit_rules": [
                {
                    "source_matchers": ['kind="camera_offline"'],
                    "target_matchers": ['kind="x"'],
                    "equal": ["camera_id"],
                }
            ],
            "mute_time_intervals": [{"name": "sundays", "time_intervals": [{"weekdays": ["sunday"]}]}],
        }
    )
)


def _alert(kind: str) -> dict:
    return {"fingerprint": f"fp-{kind}", "labels": {"kind": kind, "camera_id": "c1"}}


def test_firing_waits_group_wait_and_tier_zero_of_the_policy_joins_in():
    decided = plan(CONFIG, _alert("camera_offline"), silenced=False, firing=[], resolved=False, now=NOW)
    assert [(d.receiver, d.due) for d in decided.deliveries] == [
        ("bus", NOW + timedelta(seconds=30)),
        ("ops", NOW + timedelta(seconds=30)),
        ("lead", NOW),
    ]
    assert all(d.notification_type == NOTIFY_FIRING for d in decided.deliveries)
    assert (decided.escalation_policy, decided.next_escalation) == ("p", NOW + timedelta(minutes=10))


def test_resolution_goes_out_at_once_without_escalation():
    decided = plan(CONFIG, _alert("camera_offline"), silenced=False, firing=[], resolved=True, now=NOW)
    assert {d.due for d in decided.deliveries} == {NOW}
    assert {d.notification_type for d in decided.deliveries} == {NOTIFY_RESOLVED}
    assert decided.escalation_policy == ""


def test_silenced_inhibited_and_muted_alerts_notify_nobody():
    assert (
        plan(CONFIG, _alert("wrong_way"), silenced=True, firing=[], resolved=False, now=NOW).deliveries == []
    )
    source = FiringAlert("fp-off", {"kind": "camera_offline", "camera_id": "c1"})
    inhibited = plan(CONFIG, _alert("x"), silenced=False, firing=[source], resolved=False, now=NOW)
    assert (inhibited.deliveries, inhibited.inhibited_by) == ([], ["fp-off"])
    muted = plan(CONFIG, _alert("speeding"), silenced=False, firing=[], resolved=False, now=NOW)
    assert (muted.deliveries, muted.muted) == ([], True)
    monday = plan(
        CONFIG, _alert("speeding"), silenced=False, firing=[], resolved=False, now=NOW + timedelta(days=1)
    )
    assert [d.receiver for d in monday.deliveries] == ["ops"]


def test_without_a_configuration_nothing_is_planned():
    assert plan(None, _alert("x"), silenced=False, firing=[], resolved=False, now=NOW).deliveries == []
