"""Which receivers an alert change notifies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.alert.dispatch import NOTIFY_FIRING, plan
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


def test_firing_joins_each_matched_route_group_and_tier_zero_of_the_policy_is_direct():
    decided = plan(CONFIG, _alert("camera_offline"), silenced=False, firing=[], now=NOW)
    assert [(g.receiver, g.timing.group_wait_s) for g in decided.groups] == [("bus", 30.0), ("ops", 30.0)]
    assert decided.groups[0].group_key != decided.groups[1].group_key  # one group per route
    assert [(d.receiver, d.due, d.notification_type) for d in decided.deliveries] == [
        ("lead", NOW, NOTIFY_FIRING)
    ]
    assert (decided.escalation_policy, decided.next_escalation) == ("p", NOW + timedelta(minutes=10))
    assert not decided.suppressed


def test_without_escalation_only_the_groups_are_planned():
    decided = plan(CONFIG, _alert("camera_offline"), silenced=False, firing=[], now=NOW, escalate=False)
    assert [g.receiver for g in decided.groups] == ["bus", "ops"]
    assert (decided.deliveries, decided.escalation_policy) == ([], "")


def test_silenced_inhibited_and_muted_alerts_join_no_group_and_are_marked_suppressed():
    silenced = plan(CONFIG, _alert("wrong_way"), silenced=True, firing=[], now=NOW)
    assert (silenced.groups, silenced.deliveries, silenced.suppressed) == ([], [], True)
    source = FiringAlert("fp-off", {"kind": "camera_offline", "camera_id": "c1"})
    inhibited = plan(CONFIG, _alert("x"), silenced=False, firing=[source], now=NOW)
    assert (inhibited.groups, inhibited.inhibited_by, inhibited.suppressed) == ([], ["fp-off"], True)
    muted = plan(CONFIG, _alert("speeding"), silenced=False, firing=[], now=NOW)
    assert (muted.groups, muted.muted, muted.suppressed) == ([], True, True)
    monday = plan(CONFIG, _alert("speeding"), silenced=False, firing=[], now=NOW + timedelta(days=1))
    assert [g.receiver for g in monday.groups] == ["ops"]
    assert not monday.suppressed


def test_without_a_configuration_nothing_is_planned():
    assert plan(None, _alert("x"), silenced=False, firing=[], now=NOW).groups == []
