"""Turns an alert change into notifications: plan (pure, ``dispatch``) → group membership, or deliveries.

A firing alert joins the group of each route it matches (``grouping`` decides when the group notifies;
``flusher`` sends one notification per group with all its alerts); an escalation policy's tier 0 is a
direct delivery. An alert held back by a silence, an inhibition or a mute interval is marked pending and
rechecked (``recheck``) until that ends, then notified.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format

from itsmesh.v1 import alert_pb2, common_pb2
from services.alert.delivery import DeliverySink
from services.alert.dispatch import Plan, plan
from services.alert.fingerprint import fingerprint
from services.alert.group_store import FlushNow, GroupStore, Joined, new_group
from services.alert.grouping import flush, on_alert
from services.alert.inhibition import FiringAlert
from services.alert.routing import RoutingConfig
from services.alert.routing_source import RoutingSource
from services.alert.store import AlertStore, DeliveryStore, NewGroup, RaiseInput

SEVERITY_NAMES = {1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical"}
RECHECK_BATCH = 500
OPEN_HINTS = 10_000


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
    """Joins alerts to their groups and creates direct deliveries; ``wake_*`` nudge the workers.

    A group due at once notifies as the alert joins; with a ``sink`` (the running delivery worker) that
    notification is handed to it directly, leased to this instance, instead of waiting for a claim round.
    """

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
        self.sink: DeliverySink | None = None
        # Fingerprints this instance saw open lately: a raise of one is most likely a repeat, so planning
        # its first group would be wasted work. Only a hint: a wrong guess costs a round trip, not a notice.
        self._open: OrderedDict[str, None] = OrderedDict()

    def seen_open(self, alert: alert_pb2.Alert) -> None:
        """``alert`` was raised and is open: its next raise is most likely a repeat."""
        self._open[alert.fingerprint] = None
        self._open.move_to_end(alert.fingerprint)
        if len(self._open) > OPEN_HINTS:
            self._open.popitem(last=False)

    def seen_resolved(self, alert: alert_pb2.Alert) -> None:
        """``alert`` resolved: a raise of its fingerprint opens a new alert."""
        self._open.pop(alert.fingerprint, None)

    def _flush_now(self, now: datetime) -> FlushNow:
        return FlushNow(
            lambda state, timing, members: flush(state, timing, members, now),
            group_payload,
            self.sink.lease_s if self.sink is not None else None,
        )

    def first_group(self, raised: RaiseInput, alert_id: uuid.UUID, now: datetime) -> NewGroup | None:
        """The group a raise would create and notify if it creates a new alert that no silence holds back,
        planned before the raise so that one statement does both. None when the plan needs the database
        first (inhibition rules, more than one route, an escalation policy, a mute, an ended condition)."""
        loaded = self._routing.loaded
        if loaded is None or loaded.config.inhibit_rules:
            return None
        if raised.end_time is not None and raised.end_time <= now:
            return None
        fingerprinted = fingerprint(raised.labels)
        if fingerprinted in self._open:
            return None
        alert = alert_pb2.Alert(
            alert_id=str(alert_id),
            fingerprint=fingerprinted,
            labels=raised.labels,
            annotations=raised.annotations,
            severity=raised.severity,  # type: ignore[arg-type]
            status=common_pb2.ALERT_STATUS_FIRING,
            occurrence_count=1,
        )
        alert.first_seen_time.FromDatetime(raised.start_time or now)
        alert.last_seen_time.FromDatetime(now)
        decided = self._plan(loaded.config, alert, [], now, escalate=True)
        if decided.suppressed or len(decided.groups) != 1 or decided.deliveries or decided.escalation_policy:
            return None
        return new_group(
            decided.groups[0],
            alert,
            now,
            lambda state, timing: on_alert(state, timing, now),
            self._flush_now(now),
        )

    def first_group_created(self, group: NewGroup, now: datetime) -> None:
        """The raise created ``group`` (from ``first_group``): send its notification."""
        joined = Joined()
        joined.add(group.next_notify, group.delivery_id is not None, group.handed)
        self._joined(joined, now)

    def _joined(self, joined: Joined, now: datetime) -> None:
        """Send what the groups notified at once; wake the workers for what is left to them."""
        if joined.deliveries and self.sink is not None:
            self.sink.submit(joined.deliveries)
        if joined.unclaimed:
            self._wake_deliveries()
        if joined.soonest is not None and joined.soonest <= now:
            self._wake_groups()

    async def on_change(
        self, alert: alert_pb2.Alert, *, resolved: bool, now: datetime, group_exists: bool = False
    ) -> None:
        """A new alert fired, or an alert resolved (its groups tell the resolution in their next batch)."""
        if resolved:
            joined = await self._groups.changed(
                uuid.UUID(alert.alert_id),
                now,
                lambda state, timing: on_alert(state, timing, now),
                self._flush_now(now),
            )
            self._joined(joined, now)
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
        await self._notify(alert, decided, now, likely_new=not group_exists)

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

    async def _notify(
        self, alert: alert_pb2.Alert, decided: Plan, now: datetime, *, likely_new: bool = True
    ) -> None:
        alert_id = uuid.UUID(alert.alert_id)
        if decided.groups:
            joined = await self._groups.join(
                decided.groups,
                alert,
                now,
                lambda state, timing: on_alert(state, timing, now),
                decided.group_key,
                self._flush_now(now),
                likely_new=likely_new,
            )
            self._joined(joined, now)
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
