"""Camera events raise and resolve camera alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from itsmesh.v1 import common_pb2, events_pb2
from services.alert.camera_events import raise_for_event

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _event(**kind) -> events_pb2.CameraEvent:
    event = events_pb2.CameraEvent(event_id="e-1", camera_id="cam-7", **kind)
    event.event_time.FromDatetime(NOW - timedelta(seconds=5))
    return event


def test_offline_raises_a_camera_offline_alert_keyed_by_the_event_id():
    offline = events_pb2.CameraOffline(
        reason=events_pb2.CAMERA_OFFLINE_REASON_NO_FRAMES, detail="no frames 30 s"
    )
    raised = raise_for_event(_event(offline=offline), NOW)
    assert raised is not None
    assert raised.labels == {"kind": "camera_offline", "camera_id": "cam-7"}
    assert raised.client_alert_id == "camera-event:e-1"
    assert raised.severity == common_pb2.SEVERITY_HIGH
    assert raised.start_time == NOW - timedelta(seconds=5)
    assert raised.end_time is None
    assert raised.annotations["reason"] == "CAMERA_OFFLINE_REASON_NO_FRAMES"


def test_online_resolves_the_offline_alert_and_restored_resolves_degraded():
    online = raise_for_event(_event(online=events_pb2.CameraOnline()), NOW)
    assert online is not None
    assert online.labels["kind"] == "camera_offline"
    assert online.end_time == NOW - timedelta(seconds=5)
    restored = raise_for_event(_event(quality_restored=events_pb2.CameraQualityRestored()), NOW)
    assert restored is not None
    assert restored.labels["kind"] == "camera_quality_degraded"
    assert restored.end_time is not None


def test_a_future_event_time_resolves_now_not_later():
    event = _event(online=events_pb2.CameraOnline())
    event.event_time.FromDatetime(NOW + timedelta(minutes=5))
    raised = raise_for_event(event, NOW)
    assert raised is not None
    assert raised.end_time == NOW


def test_degraded_lists_the_issues_and_config_changes_raise_nothing():
    degraded = events_pb2.CameraQualityDegraded(issues=[common_pb2.QUALITY_ISSUE_TOO_DARK])
    raised = raise_for_event(_event(quality_degraded=degraded), NOW)
    assert raised is not None
    assert raised.annotations["issues"] == "QUALITY_ISSUE_TOO_DARK"
    assert raise_for_event(_event(config_changed=events_pb2.CameraConfigChanged()), NOW) is None
