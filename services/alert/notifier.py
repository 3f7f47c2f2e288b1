"""Turns an alert change into stored deliveries: plan (pure, ``dispatch``) → payloads → rows."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from itsmesh.v1 import alert_pb2, common_pb2
from services.alert.dispatch import plan
from services.alert.inhibition import FiringAlert
from services.alert.routing_source import RoutingSource
from services.alert.store import AlertStore, DeliveryStore

SEVERITY_NAMES = {1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical"}


def alert_payload(alert: alert_pb2.Alert) -> dict[str, Any]:
    """The alert as it appears in a notification (NotifiedAlert's JSON field names)."""
    return {
        "alert_id": alert.alert_id,
        "fingerprint": alert.fingerprint,
        "status": common_pb2.AlertStatus.Name(alert.status),
        "severity": common_pb2.Severity.Name(alert.severity),
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "first_seen_time": json_format.MessageToJson(alert.first_seen_time).strip('"'),
        "last_seen_time": json_format.MessageToJson(alert.last_seen_time).strip('"'),
        "occurrence_count": str(alert.occurrence_count),
        "acknowledged_by": alert.acknowledged_by,
    }


class Notifier:
    """Creates the deliveries an alert change calls for; the delivery worker sends them."""

    def __init__(self, alerts: AlertStore, deliveries: DeliveryStore, routing: RoutingSource) -> None:
        self._alerts = alerts
        self._deliveries = deliveries
        self._routing = routing

    async def on_change(self, alert: alert_pb2.Alert, *, resolved: bool, now: datetime) -> int:
        """Plan and store deliveries for a newly firing or newly resolved alert; how many were created."""
        loaded = self._routing.loaded
        if loaded is None:
            return 0
        config = loaded.config
        labels = {**alert.labels, "severity": SEVERITY_NAMES.get(alert.severity, "")}
        firing = (
            [FiringAlert(fp, lbls) for fp, lbls in await self._alerts.firing_labels()]
            if config.inhibit_rules
            else []
        )
        decided = plan(
            config,
            {"fingerprint": alert.fingerprint, "labels": labels},
            silenced=alert.silenced,
            firing=firing,
            resolved=resolved,
            now=now,
        )
        if (decided.inhibited_by or decided.muted) and not resolved:
            await self._alerts.set_suppression(uuid.UUID(alert.alert_id), decided.inhibited_by, decided.muted)
            alert.inhibited_by[:] = decided.inhibited_by
            alert.inhibited = bool(decided.inhibited_by)
            alert.muted = decided.muted
        if not decided.deliveries:
            return 0
        payloads = [
            {
                "receiver": p.receiver,
                "notification_type": "resolved" if resolved else "firing",
                "group_key": p.group_key,
                "group_labels": dict(p.group_labels),
                "alerts": [alert_payload(alert)],
            }
            for p in decided.deliveries
        ]
        await self._deliveries.create(
            uuid.UUID(alert.alert_id),
            decided.group_key,
            decided.deliveries,
            payloads,
            now,
            escalation_policy=decided.escalation_policy or None,
            next_escalation=decided.next_escalation,
        )
        return len(decided.deliveries)
