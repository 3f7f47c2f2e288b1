"""Which alert a camera event raises or resolves (camera.events.v1), decided without I/O."""

from __future__ import annotations

from datetime import datetime

from itsmesh.v1 import alert_pb2, common_pb2, events_pb2
from services.alert.store import RaiseInput

OFFLINE = "camera_offline"
DEGRADED = "camera_quality_degraded"


def raise_for_event(event: events_pb2.CameraEvent, now: datetime) -> RaiseInput | None:
    """The raise an event stands for: offline/degraded fire, online/restored resolve; others are None.

    The event id is the client_alert_id, so a redelivered event is a replay and changes nothing.
    """
    kind = event.WhichOneof("kind")
    event_time = event.event_time.ToDatetime(tzinfo=now.tzinfo) if event.HasField("event_time") else now
    if kind == "offline":
        reason = events_pb2.CameraOfflineReason.Name(event.offline.reason)
        annotations = {"summary": f"camera {event.camera_id} is offline", "reason": reason}
        if event.offline.detail:
            annotations["detail"] = event.offline.detail
        return _raise(event, OFFLINE, common_pb2.SEVERITY_HIGH, annotations, event_time, None)
    if kind == "quality_degraded":
        issues = ", ".join(common_pb2.QualityIssue.Name(i) for i in event.quality_degraded.issues)
        annotations = {"summary": f"camera {event.camera_id} image quality degraded", "issues": issues}
        return _raise(event, DEGRADED, common_pb2.SEVERITY_MEDIUM, annotations, event_time, None)
    if kind == "online":
        return _raise(event, OFFLINE, common_pb2.SEVERITY_HIGH, {}, None, min(event_time, now))
    if kind == "quality_restored":
        return _raise(event, DEGRADED, common_pb2.SEVERITY_MEDIUM, {}, None, min(event_time, now))
    return None


def _raise(
    event: events_pb2.CameraEvent,
    kind: str,
    severity: int,
    annotations: dict[str, str],
    start: datetime | None,
    end: datetime | None,
) -> RaiseInput:
    evidence = alert_pb2.AlertEvidence()
    evidence.camera_event.CopyFrom(event)
    return RaiseInput(
        client_alert_id=f"camera-event:{event.event_id}",
        labels={"kind": kind, "camera_id": event.camera_id},
        annotations=annotations,
        severity=severity,
        source="streaming",
        start_time=start,
        end_time=end,
        evidence=evidence.SerializeToString(deterministic=True),
    )
