"""Inhibition: a camera that is offline inhibits its own quality alerts, and only those."""

from __future__ import annotations

from services.alert.inhibition import FiringAlert, inhibited_by
from services.alert.routing import InhibitRule, parse_matcher

RULE = InhibitRule(
    source=(parse_matcher('kind="camera_offline"'),),
    target=(parse_matcher('kind=~"camera_quality_.*"'),),
    equal=("camera_id",),
)
OFFLINE_C1 = FiringAlert("fp-offline-c1", {"kind": "camera_offline", "camera_id": "c1"})


def test_offline_camera_inhibits_its_quality_alert():
    labels = {"kind": "camera_quality_degraded", "camera_id": "c1"}
    assert inhibited_by("fp-q", labels, [OFFLINE_C1], [RULE]) == ["fp-offline-c1"]


def test_another_cameras_outage_does_not_inhibit():
    labels = {"kind": "camera_quality_degraded", "camera_id": "c2"}
    assert inhibited_by("fp-q", labels, [OFFLINE_C1], [RULE]) == []


def test_alerts_that_are_no_target_are_never_inhibited():
    labels = {"kind": "speeding", "camera_id": "c1"}
    assert inhibited_by("fp-s", labels, [OFFLINE_C1], [RULE]) == []


def test_an_alert_does_not_inhibit_itself():
    everything = InhibitRule((parse_matcher('kind=~".+"'),), (parse_matcher('kind=~".+"'),), ())
    assert inhibited_by("fp-offline-c1", OFFLINE_C1.labels, [OFFLINE_C1], [everything]) == []
