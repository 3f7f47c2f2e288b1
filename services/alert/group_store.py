"""Alert groups in PostgreSQL (schema `alert`): membership, timing state, and the batched notification of
a due group, each change in one transaction. The decisions are passed in (``grouping``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from itsmesh.v1 import alert_pb2
from services.alert.dispatch import GroupJoin
from services.alert.grouping import Flush, GroupState, Member
from services.alert.routing import Timing
from services.alert.store import MATCH_LABELS, alert_columns, alert_from_row

NOTIFICATION_TYPES = {"firing": 1, "repeat": 2, "resolved": 4}  # itsmesh.v1.NotificationType numbers

Join = Callable[[GroupState | None, Timing], GroupState]
Decide = Callable[[GroupState, Timing, Sequence[Member]], Flush]
Build = Callable[[str, Sequence[alert_pb2.Alert]], dict[str, Any]]


def _state(row: asyncpg.Record) -> GroupState:
    return GroupState(row["next_notify_time"], row["last_notify_time"], row["changed"])


def _timing(row: asyncpg.Record) -> Timing:
    return Timing(row["group_wait_s"], row["group_interval_s"], row["repeat_interval_s"])


class GroupStore:
    """Groups, their members and their notifications."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def join(
        self,
        joins: Sequence[GroupJoin],
        alert_id: uuid.UUID,
        now: datetime,
        decide: Join,
        primary_key: str,
    ) -> datetime | None:
        """Add the alert to each group (created on first use) and move the group's next notification as
        ``decide`` says; ``primary_key`` becomes the alert's group key. The soonest next notification."""
        soonest: datetime | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            for join in sorted(joins, key=lambda j: j.group_key):  # one lock order: no deadlocks
                row = await conn.fetchrow(
                    "SELECT next_notify_time, last_notify_time, changed FROM alert.groups"
                    " WHERE group_key = $1 FOR UPDATE",
                    join.group_key,
                )
                state = decide(_state(row) if row is not None else None, join.timing)
                # group, membership and the alert's group key in one statement (one round trip)
                await conn.execute(
                    "WITH g AS (INSERT INTO alert.groups (group_key, receiver, receiver_type, group_labels,"
                    " last_notify_time, next_notify_time, changed, group_wait_s, group_interval_s,"
                    " repeat_interval_s, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                    " ON CONFLICT (group_key) DO UPDATE SET receiver = EXCLUDED.receiver,"
                    " receiver_type = EXCLUDED.receiver_type, next_notify_time = EXCLUDED.next_notify_time,"
                    " changed = EXCLUDED.changed, group_wait_s = EXCLUDED.group_wait_s,"
                    " group_interval_s = EXCLUDED.group_interval_s,"
                    " repeat_interval_s = EXCLUDED.repeat_interval_s, updated_at = EXCLUDED.updated_at"
                    " RETURNING group_key),"
                    " m AS (INSERT INTO alert.group_members (group_key, alert_id, joined_at)"
                    " SELECT g.group_key, $12, $11 FROM g ON CONFLICT DO NOTHING)"
                    " UPDATE alert.alerts SET group_key = $13 WHERE alert_id = $12 AND group_key <> $13",
                    join.group_key,
                    join.receiver,
                    join.receiver_type,
                    json.dumps(dict(join.group_labels)),
                    state.last_notify,
                    state.next_notify,
                    state.changed,
                    join.timing.group_wait_s,
                    join.timing.group_interval_s,
                    join.timing.repeat_interval_s,
                    now,
                    alert_id,
                    primary_key,
                )
                soonest = state.next_notify if soonest is None else min(soonest, state.next_notify)
        return soonest

    async def changed(self, alert_id: uuid.UUID, now: datetime, decide: Join) -> datetime | None:
        """The alert changed (it resolved): move the next notification of every group it is in."""
        soonest: datetime | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT g.* FROM alert.groups g WHERE g.group_key IN"
                " (SELECT m.group_key FROM alert.group_members m WHERE m.alert_id = $1)"
                " ORDER BY g.group_key FOR UPDATE",
                alert_id,
            )
            for row in rows:
                state = decide(_state(row), _timing(row))
                await conn.execute(
                    "UPDATE alert.groups SET next_notify_time = $2, changed = $3, updated_at = $4"
                    " WHERE group_key = $1",
                    row["group_key"],
                    state.next_notify,
                    state.changed,
                    now,
                )
                soonest = state.next_notify if soonest is None else min(soonest, state.next_notify)
        return soonest

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Keys of the groups whose next notification is due at ``now``, most overdue first."""
        rows = await self._pool.fetch(
            "SELECT group_key FROM alert.groups WHERE next_notify_time <= $1"
            " ORDER BY next_notify_time LIMIT $2",
            now,
            limit,
        )
        return [r["group_key"] for r in rows]

    async def next_due(self) -> datetime | None:
        """When the next group is due (None when there is no group)."""
        value: datetime | None = await self._pool.fetchval("SELECT min(next_notify_time) FROM alert.groups")
        return value

    async def flush(self, group_key: str, now: datetime, decide: Decide, build: Build) -> uuid.UUID | None:
        """Notify a due group: one delivery with all its alerts (as ``decide`` says), in one transaction.

        A group another instance is flushing right now is skipped; the id of the delivery, if any.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            group = await conn.fetchrow(
                "SELECT * FROM alert.groups WHERE group_key = $1 AND next_notify_time <= $2"
                " FOR UPDATE SKIP LOCKED",
                group_key,
                now,
            )
            if group is None:
                return None
            rows = await conn.fetch(
                f"SELECT {alert_columns('$2')}, m.notified FROM alert.group_members m"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                " JOIN alert.alerts a USING (alert_id) WHERE m.group_key = $1"
                " ORDER BY a.first_seen_time, a.alert_id",
                group_key,
                now,
            )
            alerts = {str(r["alert_id"]): alert_from_row(r) for r in rows}
            members = [
                Member(
                    alert_id=str(r["alert_id"]),
                    status=r["status"],
                    suppressed=bool(r["silenced_by"]) or bool(r["inhibited_by"]),
                    notified=r["notified"],
                )
                for r in rows
            ]
            decision = decide(_state(group), _timing(group), members)
            delivery_id: uuid.UUID | None = None
            payload: dict[str, Any] | None = None
            if decision.notification:
                delivery_id = uuid.uuid4()
                payload = {
                    "receiver": group["receiver"],
                    "notification_type": decision.notification,
                    "group_key": group_key,
                    "group_labels": json.loads(group["group_labels"]),
                    **build(decision.notification, [alerts[i] for i in decision.send]),
                    "notification_id": str(delivery_id),
                }
            state = decision.state
            # every write of the flush in one statement (one round trip): the delivery and the alerts it
            # carries, what the group told each member, who leaves, and the group's next time (or its end)
            await conn.execute(
                "WITH d AS (INSERT INTO alert.deliveries (delivery_id, alert_id, group_key, receiver,"
                " receiver_type, notification_type, escalation_level, state, payload, next_attempt_time,"
                " created_at) SELECT $2, $3, $1, $4, $5, $6, 0, 1, $7, $8, $8 WHERE $2::uuid IS NOT NULL),"
                " da AS (INSERT INTO alert.delivery_alerts (delivery_id, alert_id)"
                " SELECT $2, x FROM unnest($9::uuid[]) AS x WHERE $2::uuid IS NOT NULL),"
                " told AS (UPDATE alert.group_members SET notified = 1 WHERE group_key = $1"
                " AND alert_id = ANY($10::uuid[])),"
                " gone AS (DELETE FROM alert.group_members WHERE group_key = $1"
                " AND alert_id = ANY($11::uuid[])),"
                " ended AS (DELETE FROM alert.groups WHERE group_key = $1 AND $12::timestamptz IS NULL)"
                " UPDATE alert.groups SET next_notify_time = $12, last_notify_time = $13, changed = $14,"
                " updated_at = $8 WHERE group_key = $1 AND $12::timestamptz IS NOT NULL",
                group_key,
                delivery_id,
                uuid.UUID(decision.send[0]) if decision.send else None,
                group["receiver"],
                group["receiver_type"],
                NOTIFICATION_TYPES.get(decision.notification, 0),
                json.dumps(payload) if payload is not None else None,
                now,
                [uuid.UUID(i) for i in decision.send],
                [uuid.UUID(i) for i in decision.notified],
                [uuid.UUID(i) for i in decision.leave],
                state.next_notify if state is not None else None,
                state.last_notify if state is not None else None,
                state.changed if state is not None else False,
            )
            return delivery_id

    async def list_groups(
        self, receiver: str, matchers_json: str, now: datetime, limit: int, offset: int
    ) -> list[alert_pb2.AlertGroup]:
        """Groups (optionally of one receiver) with an alert matching the matchers, with their open alerts."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT g.* FROM alert.groups g WHERE ($1 = '' OR g.receiver = $1) AND EXISTS"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                " (SELECT 1 FROM alert.group_members m JOIN alert.alerts a USING (alert_id)"
                f" WHERE m.group_key = g.group_key AND alert.labels_match($2::jsonb, {MATCH_LABELS}))"
                " ORDER BY g.group_key LIMIT $3 OFFSET $4",
                receiver,
                matchers_json,
                limit,
                offset,
            )
            groups: list[alert_pb2.AlertGroup] = []
            for row in rows:
                group = alert_pb2.AlertGroup(
                    group_key=row["group_key"],
                    receiver=row["receiver"],
                    group_labels=json.loads(row["group_labels"]),
                )
                members = await conn.fetch(
                    f"SELECT {alert_columns('$2')} FROM alert.group_members m"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                    " JOIN alert.alerts a USING (alert_id) WHERE m.group_key = $1 AND a.status <> 3"
                    " ORDER BY a.last_seen_time DESC",
                    row["group_key"],
                    now,
                )
                group.alerts.extend(alert_from_row(m) for m in members)
                if row["last_notify_time"] is not None:
                    group.last_notify_time.FromDatetime(row["last_notify_time"])
                if row["next_notify_time"] is not None:
                    group.next_notify_time.FromDatetime(row["next_notify_time"])
                groups.append(group)
            return groups
