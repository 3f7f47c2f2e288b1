"""Alert groups in PostgreSQL (schema `alert`): membership, timing state, and the batched notification of
a due group, each change in one transaction. The decisions are passed in (``grouping``).

A group that is due the moment an alert joins it (``group_wait`` 0) notifies in the same transaction as
the join; a new group is created, joined and notified in a single statement. With ``Flush.lease_s`` the
notification is created leased to the caller, who sends it at once instead of waiting for a claim.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from itsmesh.v1 import alert_pb2
from services.alert.dispatch import GroupJoin
from services.alert.grouping import Flush, GroupState, Member
from services.alert.routing import Timing
from services.alert.store import MATCH_LABELS, Conn, DueDelivery, NewGroup, alert_columns, alert_from_row

NOTIFICATION_TYPES = {"firing": 1, "repeat": 2, "resolved": 4}  # itsmesh.v1.NotificationType numbers
MAX_RETRIES = 3  # a group that ends between our insert and our lock is created again

Join = Callable[[GroupState | None, Timing], GroupState]
Decide = Callable[[GroupState, Timing, Sequence[Member]], Flush]
Build = Callable[[str, Sequence[alert_pb2.Alert]], dict[str, Any]]

_NEW_GROUP = (
    # Create the group with its state after this join (and its notification, when one goes out at once),
    # its membership and the alert's group key, in one statement; nothing when the group exists already.
    "WITH g AS (INSERT INTO alert.groups (group_key, receiver, receiver_type, group_labels,"
    " last_notify_time, next_notify_time, changed, group_wait_s, group_interval_s, repeat_interval_s,"
    " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    " ON CONFLICT (group_key) DO NOTHING RETURNING group_key),"
    " m AS (INSERT INTO alert.group_members (group_key, alert_id, joined_at, notified)"
    " SELECT g.group_key, $12, $11, $14 FROM g),"
    " d AS (INSERT INTO alert.deliveries (delivery_id, alert_id, group_key, receiver, receiver_type,"
    " notification_type, escalation_level, state, payload, next_attempt_time, created_at)"
    " SELECT $15, $12, $1, $2, $3, $16, 0, 1, $17, $18, $11 FROM g WHERE $15::uuid IS NOT NULL),"
    " da AS (INSERT INTO alert.delivery_alerts (delivery_id, alert_id)"
    " SELECT $15, $12 FROM g WHERE $15::uuid IS NOT NULL),"
    " a AS (UPDATE alert.alerts SET group_key = $13 WHERE alert_id = $12 AND group_key <> $13"
    " AND EXISTS (SELECT FROM g))"
    " SELECT count(*) FROM g"
)

_JOIN_EXISTING = (
    # group, membership and the alert's group key in one statement (one round trip)
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
    " UPDATE alert.alerts SET group_key = $13 WHERE alert_id = $12 AND group_key <> $13"
)

_FLUSH_WRITE = (
    # every write of the flush in one statement (one round trip): the delivery and the alerts it carries,
    # what the group told each member, who leaves, and the group's next time (or its end)
    "WITH d AS (INSERT INTO alert.deliveries (delivery_id, alert_id, group_key, receiver,"
    " receiver_type, notification_type, escalation_level, state, payload, next_attempt_time,"
    " created_at) SELECT $2, $3, $1, $4, $5, $6, 0, 1, $7, $15, $8 WHERE $2::uuid IS NOT NULL),"
    " da AS (INSERT INTO alert.delivery_alerts (delivery_id, alert_id)"
    " SELECT $2, x FROM unnest($9::uuid[]) AS x WHERE $2::uuid IS NOT NULL),"
    " told AS (UPDATE alert.group_members SET notified = 1 WHERE group_key = $1"
    " AND alert_id = ANY($10::uuid[])),"
    " gone AS (DELETE FROM alert.group_members WHERE group_key = $1"
    " AND alert_id = ANY($11::uuid[])),"
    " ended AS (DELETE FROM alert.groups WHERE group_key = $1 AND $12::timestamptz IS NULL)"
    " UPDATE alert.groups SET next_notify_time = $12, last_notify_time = $13, changed = $14,"
    " updated_at = $8 WHERE group_key = $1 AND $12::timestamptz IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class FlushNow:
    """How a group due at once is flushed where it became due: ``decide`` and ``build`` as for the
    flusher; ``lease_s`` = create the notification leased to the caller (None = due for any worker)."""

    decide: Decide
    build: Build
    lease_s: float | None = None


@dataclass(frozen=True, slots=True)
class Flushed:
    """A flushed group: its next notification (None = it ended), whether a notification was created, and
    that notification when it is leased to the caller."""

    next_notify: datetime | None
    notified: bool
    delivery: DueDelivery | None = None


@dataclass(slots=True)
class Joined:
    """The soonest next notification of the groups (None = no group), the notifications created leased to
    the caller, and whether one was created due for any worker instead (``unclaimed``)."""

    soonest: datetime | None = None
    deliveries: list[DueDelivery] = field(default_factory=list)
    unclaimed: bool = False

    def add(
        self, next_notify: datetime | None, notified: bool = False, delivery: DueDelivery | None = None
    ) -> None:
        if next_notify is not None:
            self.soonest = next_notify if self.soonest is None else min(self.soonest, next_notify)
        if delivery is not None:
            self.deliveries.append(delivery)
        elif notified:
            self.unclaimed = True


def new_group(
    join: GroupJoin, alert: alert_pb2.Alert, now: datetime, decide: Join, flush_now: FlushNow | None
) -> NewGroup | None:
    """The group ``join`` would be as a new group with ``alert`` its only member: its state, and its first
    notification when it is due at once (with ``flush_now``). None when the flush would end it at once."""
    state = decide(None, join.timing)
    notified, delivery_id, notification, payload = 0, None, "", None
    if flush_now is not None and state.next_notify <= now:
        member = Member(alert_id=alert.alert_id, status=alert.status, suppressed=False)
        decision = flush_now.decide(state, join.timing, [member])
        if decision.state is None:  # nothing would stay in it: leave it to the general path
            return None
        state, notified = decision.state, decision.notified.get(alert.alert_id, 0)
        if decision.notification:
            notification, delivery_id = decision.notification, uuid.uuid4()
            payload = {
                "receiver": join.receiver,
                "notification_type": notification,
                "group_key": join.group_key,
                "group_labels": dict(join.group_labels),
                **flush_now.build(notification, [alert]),
                "notification_id": str(delivery_id),
            }
    lease_s = flush_now.lease_s if flush_now is not None else None
    handed = None
    if lease_s is not None and delivery_id is not None and payload is not None:
        handed = DueDelivery(delivery_id, join.receiver, payload, 0)
    return NewGroup(
        group_columns(join, state),
        state.next_notify,
        notified,
        delivery_id,
        NOTIFICATION_TYPES.get(notification, 0),
        json.dumps(payload) if payload is not None else None,
        _due_at(now, lease_s),
        handed,
    )


def group_columns(join: GroupJoin, state: GroupState) -> tuple[Any, ...]:
    """A group's columns as the statements here take them ($1 to $10)."""
    timing = join.timing
    return (
        join.group_key,
        join.receiver,
        join.receiver_type,
        json.dumps(dict(join.group_labels)),
        state.last_notify,
        state.next_notify,
        state.changed,
        timing.group_wait_s,
        timing.group_interval_s,
        timing.repeat_interval_s,
    )


def _state(row: asyncpg.Record) -> GroupState:
    return GroupState(row["next_notify_time"], row["last_notify_time"], row["changed"])


def _timing(row: asyncpg.Record) -> Timing:
    return Timing(row["group_wait_s"], row["group_interval_s"], row["repeat_interval_s"])


def _due_at(now: datetime, lease_s: float | None) -> datetime:
    return now if lease_s is None else now + timedelta(seconds=lease_s)


@dataclass(frozen=True, slots=True)
class _JoinCall:
    """What one ``join`` call brings to each group it joins."""

    alert: alert_pb2.Alert
    alert_id: uuid.UUID
    now: datetime
    decide: Join
    primary_key: str
    flush_now: FlushNow | None
    joined: Joined


class GroupStore:
    """Groups, their members and their notifications."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def join(
        self,
        joins: Sequence[GroupJoin],
        alert: alert_pb2.Alert,
        now: datetime,
        decide: Join,
        primary_key: str,
        flush_now: FlushNow | None = None,
        *,
        likely_new: bool = True,
    ) -> Joined:
        """Add the alert to each group (created on first use) and move the group's next notification as
        ``decide`` says; ``primary_key`` becomes the alert's group key. With ``flush_now`` a group due at
        once notifies right here. A single new group costs one statement; otherwise one transaction
        (``likely_new`` = False: the groups most likely exist, so they are locked first, not created)."""
        alert_id = uuid.UUID(alert.alert_id)
        joined = Joined()
        pending = sorted(joins, key=lambda j: j.group_key)  # one lock order: no deadlocks
        exists: set[str] = set()
        call = _JoinCall(alert, alert_id, now, decide, primary_key, flush_now, joined)
        async with self._pool.acquire() as conn:
            if len(pending) == 1 and likely_new:
                if await self._join_new(conn, pending[0], call):
                    return joined
                exists.add(pending[0].group_key)
            async with conn.transaction():
                for join in pending:
                    new_first = likely_new and join.group_key not in exists
                    for _ in range(MAX_RETRIES):
                        if new_first and await self._join_new(conn, join, call):
                            break
                        if await self._join_existing(conn, join, call):
                            break
                        new_first = True  # it ended meanwhile: create it again
                    else:
                        raise RuntimeError(f"group {join.group_key!r} kept ending while joining it")
        return joined

    async def _join_new(self, conn: Conn, join: GroupJoin, call: _JoinCall) -> bool:
        """Create the group with the alert as its only member; False when it exists already."""
        now = call.now
        group = new_group(join, call.alert, now, call.decide, call.flush_now)
        if group is None:
            return False
        created = await conn.fetchval(
            _NEW_GROUP, *group.args(), now, call.alert_id, call.primary_key, *group.outcome_args()
        )
        if not created:
            return False
        call.joined.add(group.next_notify, group.delivery_id is not None, group.handed)
        return True

    async def _join_existing(self, conn: Conn, join: GroupJoin, call: _JoinCall) -> bool:
        """Join a group that exists (locked until the transaction ends); False when it is gone."""
        now, decide, flush_now, joined = call.now, call.decide, call.flush_now, call.joined
        row = await conn.fetchrow(
            "SELECT next_notify_time, last_notify_time, changed FROM alert.groups"
            " WHERE group_key = $1 FOR UPDATE",
            join.group_key,
        )
        if row is None:
            return False
        state = decide(_state(row), join.timing)
        await conn.execute(
            _JOIN_EXISTING,
            *group_columns(join, state),
            now,
            call.alert_id,
            call.primary_key,
        )
        flushed = None
        if flush_now is not None and state.next_notify <= now:
            flushed = await self._flush(conn, join.group_key, now, flush_now)
        if flushed is not None:
            joined.add(flushed.next_notify, flushed.notified, flushed.delivery)
        else:
            joined.add(state.next_notify)
        return True

    async def changed(
        self, alert_id: uuid.UUID, now: datetime, decide: Join, flush_now: FlushNow | None = None
    ) -> Joined:
        """The alert changed (it resolved): move the next notification of every group it is in (with
        ``flush_now``, a group due at once notifies right here)."""
        joined = Joined()
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
                flushed = None
                if flush_now is not None and state.next_notify <= now:
                    flushed = await self._flush(conn, row["group_key"], now, flush_now)
                if flushed is not None:
                    joined.add(flushed.next_notify, flushed.notified, flushed.delivery)
                else:
                    joined.add(state.next_notify)
        return joined

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

    async def flush(self, group_key: str, now: datetime, flush_now: FlushNow) -> Flushed | None:
        """Notify a due group: one delivery with all its alerts (as ``decide`` says), in one transaction.

        None when the group is not due (any more) or another instance is flushing it right now.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._flush(conn, group_key, now, flush_now, skip_locked=True)

    async def _flush(
        self, conn: Conn, group_key: str, now: datetime, flush_now: FlushNow, *, skip_locked: bool = False
    ) -> Flushed | None:
        """Flush a due group inside the caller's transaction (which may hold its lock already)."""
        lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
        group = await conn.fetchrow(
            f"SELECT * FROM alert.groups WHERE group_key = $1 AND next_notify_time <= $2 {lock}",  # noqa: S608  # fixed SQL fragments; values are $n parameters
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
        decision = flush_now.decide(_state(group), _timing(group), members)
        delivery_id: uuid.UUID | None = None
        payload: dict[str, Any] | None = None
        if decision.notification:
            delivery_id = uuid.uuid4()
            payload = {
                "receiver": group["receiver"],
                "notification_type": decision.notification,
                "group_key": group_key,
                "group_labels": json.loads(group["group_labels"]),
                **flush_now.build(decision.notification, [alerts[i] for i in decision.send]),
                "notification_id": str(delivery_id),
            }
        state = decision.state
        await conn.execute(
            _FLUSH_WRITE,
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
            _due_at(now, flush_now.lease_s),
        )
        handed = None
        if flush_now.lease_s is not None and delivery_id is not None and payload is not None:
            handed = DueDelivery(delivery_id, group["receiver"], payload, 0)
        return Flushed(state.next_notify if state is not None else None, delivery_id is not None, handed)

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
