"""Turns an alert change into notifications: plan (pure, ``dispatch``) → group membership, or deliveries.

A firing alert joins the group of each route it matches (``grouping`` decides when the group notifies;
``flusher`` sends one notification per group with all its alerts); an escalation policy's tier 0 is a
direct delivery. An alert held back by a silence, an inhibition or a mute interval is marked pending and
rechecked (``recheck``) until that ends, then notified.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from itsmesh.v1 import alert_pb2, common_pb2
from services.alert.dispatch import Plan, plan
from services.alert.group_store import GroupStore
from services.alert.grouping import on_alert
from services.alert.inhibition import FiringAlert
from services.alert.routing import RoutingConfig
from services.alert.routing_source import RoutingSource
from services.alert.store import AlertStore, DeliveryStore

SEVERITY_NAMES = {1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical"}
RECHECK_BATCH = 500


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


def group_payload(notification: str, alerts: Sequence[alert_pb2.Alert]) -> dict[str, Any]:
    """The alerts of one group notification, with the labels and annotations they all share."""
    common_labels = dict(alerts[0].labels) if alerts else {}
    common_annotations = dict(alerts[0].annotations) if alerts else {}
    for alert in alerts[1:]:
        common_labels = {k: v for k, v in common_labels.items() if alert.labels.get(k) == v}
        common_annotations = {k: v for k, v in common_annotations.items() if alert.annotations.get(k) == v}
    return {
        "alerts": [alert_payload(a) for a in alerts],
        "common_labels": common_labels,
        "common_annotations": common_annotations,
    }


def _matcher_labels(alert: alert_pb2.Alert) -> dict[str, str]:
    return {**alert.labels, "severity": SEVERITY_NAMES.get(alert.severity, "")}


class Notifier:
    """Joins alerts to their groups and creates direct deliveries; ``wake_*`` nudge the workers."""

    def __init__(
        self,
        alerts: AlertStore,
        deliveries: DeliveryStore,
        groups: GroupStore,
        routing: RoutingSource,
        *,
        wake_groups: Callable[[], None] = lambda: None,
        wake_deliveries: Callable[[], None] = lambda: None,
    ) -> None:
        self._alerts = alerts
        self._deliveries = deliveries
        self._groups = groups
        self._routing = routing
        self._wake_groups = wake_groups
        self._wake_deliveries = wake_deliveries

    async def on_change(self, alert: alert_pb2.Alert, *, resolved: bool, now: datetime) -> None:
        """A new alert fired, or an alert resolved (its groups tell the resolution in their next batch)."""
        if resolved:
            soonest = await self._groups.changed(
                uuid.UUID(alert.alert_id), now, lambda state, timing: on_alert(state, timing, now)
            )
            if soonest is not None and soonest <= now:
                self._wake_groups()
            return
        loaded = self._routing.loaded
        if loaded is None:
            return
        firing = await self._firing(loaded.config)
        decided = self._plan(loaded.config, alert, firing, now, escalate=True)
        if decided.suppressed:
            updated = await self._alerts.set_suppression(
                uuid.UUID(alert.alert_id), decided.inhibited_by, decided.muted, pending=True
            )
            _show_suppression(alert, decided, updated)
        await self._notify(alert, decided, now)

    async def recheck(self, now: datetime) -> list[alert_pb2.Alert]:
        """Notify the held-back firing alerts whose silence, inhibition or mute interval has ended.

        Returns the alerts whose suppression changed (for watchers).
        """
        loaded = self._routing.loaded
        if loaded is None:
            return []
        pending = await self._alerts.pending_notification(now, RECHECK_BATCH)
        if not pending:
            return []
        firing = await self._firing(loaded.config)
        changed: list[alert_pb2.Alert] = []
        for alert in pending:
            # Escalation starts with the first notification, unless it already has.
            escalate = alert.escalation_level == 0 and not alert.HasField("next_escalation_time")
            decided = self._plan(loaded.config, alert, firing, now, escalate=escalate)
            before = (list(alert.inhibited_by), alert.muted)
            if decided.suppressed and before == (decided.inhibited_by, decided.muted):
                continue  # still held back, for the same reasons
            # The flags first (the group flush reads them); owed until notified, so that a failure here
            # leaves the alert pending and the next round tries again.
            alert_id = uuid.UUID(alert.alert_id)
            updated = await self._alerts.set_suppression(
                alert_id, decided.inhibited_by, decided.muted, pending=True
            )
            await self._notify(alert, decided, now)
            if not decided.suppressed:
                updated = await self._alerts.set_suppression(alert_id, [], False, pending=False)
            _show_suppression(alert, decided, updated)
            changed.append(alert)
        return changed

    async def _firing(self, config: RoutingConfig) -> list[FiringAlert]:
        if not config.inhibit_rules:
            return []
        return [FiringAlert(fp, labels) for fp, labels in await self._alerts.firing_labels()]

    @staticmethod
    def _plan(
        config: RoutingConfig,
        alert: alert_pb2.Alert,
        firing: list[FiringAlert],
        now: datetime,
        *,
        escalate: bool,
    ) -> Plan:
        return plan(
            config,
            {"fingerprint": alert.fingerprint, "labels": _matcher_labels(alert)},
            silenced=alert.silenced,
            firing=firing,
            now=now,
            escalate=escalate,
        )

    async def _notify(self, alert: alert_pb2.Alert, decided: Plan, now: datetime) -> None:
        alert_id = uuid.UUID(alert.alert_id)
        if decided.groups:
            soonest = await self._groups.join(
                decided.groups,
                alert_id,
                now,
                lambda state, timing: on_alert(state, timing, now),
                decided.group_key,
            )
            if soonest is not None and soonest <= now:
                self._wake_groups()
        if decided.deliveries or decided.escalation_policy:
            payloads = [
                {
                    "receiver": p.receiver,
                    "notification_type": "firing",
                    "group_key": p.group_key,
                    "group_labels": dict(p.group_labels),
                    **group_payload("firing", [alert]),
                }
                for p in decided.deliveries
            ]
            await self._deliveries.create(
                alert_id,
                "",
                decided.deliveries,
                payloads,
                now,
                escalation_policy=decided.escalation_policy or None,
                next_escalation=decided.next_escalation,
            )
            if any(p.due <= now for p in decided.deliveries):
                self._wake_deliveries()


def _show_suppression(alert: alert_pb2.Alert, decided: Plan, updated: datetime | None) -> None:
    alert.inhibited_by[:] = decided.inhibited_by
    alert.inhibited = bool(decided.inhibited_by)
    alert.muted = decided.muted
    if updated is not None:
        alert.update_time.FromDatetime(updated)
