"""The alert service's SQL (schema `alert`): alerts, raises, silences and deliveries, parameterised."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from itsmesh.v1 import alert_pb2, common_pb2
from services.alert.errors import AlertAlreadyResolved, AlertNotFound, SilenceExpired, SilenceNotFound
from services.alert.fingerprint import fingerprint
from services.alert.matchers import Matcher, SilenceState

_RESOLVED = common_pb2.ALERT_STATUS_RESOLVED
_FIRING = common_pb2.ALERT_STATUS_FIRING
_ACKNOWLEDGED = common_pb2.ALERT_STATUS_ACKNOWLEDGED

# The labels matchers see: the alert's labels plus its typed severity as the label `severity`.
_MATCH_LABELS = "(a.labels || jsonb_build_object('severity', alert.severity_name(a.severity)))"
_ACTIVE_SILENCE = "s.start_time <= {now} AND s.end_time > {now}"
# The deliveries of one alert ({arg} = its id): its own and the grouped notifications that carried it.
_OF_ALERT = (
    "(d.alert_id = {arg} OR d.delivery_id IN"
    " (SELECT da.delivery_id FROM alert.delivery_alerts da WHERE da.alert_id = {arg}))"
)


def _alert_columns(now: str) -> str:
    """The select list of an alert row with its silences computed at ``now`` (a SQL parameter)."""
    active = _ACTIVE_SILENCE.format(now=now)
    return (
        "a.*, CASE WHEN a.status = 3 THEN ARRAY[]::text[] ELSE ARRAY("  # noqa: S608  # fixed SQL fragments; values are $n parameters
        f"SELECT s.silence_id::text FROM alert.silences s WHERE {active}"
        f" AND alert.labels_match(s.matchers, {_MATCH_LABELS}) ORDER BY s.silence_id) END AS silenced_by"
    )


MATCH_LABELS = _MATCH_LABELS


def alert_columns(now: str) -> str:
    """The select list of an alert row (alias ``a``) with its silences at ``now`` (a SQL parameter)."""
    return _alert_columns(now)


def alert_from_row(row: asyncpg.Record) -> alert_pb2.Alert:
    """The Alert message of a row selected with ``alert_columns``."""
    return _alert(row)


@dataclass(frozen=True, slots=True)
class RaiseInput:
    """A validated RaiseAlert request."""

    client_alert_id: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    severity: int
    source: str
    start_time: datetime | None
    end_time: datetime | None
    evidence: bytes


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Validated ListAlerts filters."""

    statuses: Sequence[int] = ()
    min_severity: int = 0
    matchers: Sequence[Matcher] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    include_suppressed: bool = False
    newest_first: bool = True


@dataclass(frozen=True, slots=True)
class SilenceInput:
    """A validated silence (matchers, window and comment)."""

    matchers: Sequence[Matcher]
    start_time: datetime
    end_time: datetime
    comment: str


Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, pooled or not."""


class _Replayed(Exception):
    """Another request with the same client_alert_id committed first; roll back and replay."""


def matchers_json(matchers: Sequence[Matcher]) -> str:
    """Matchers as the JSON array ``alert.labels_match`` reads."""
    return json.dumps([m.as_json() for m in matchers])


def _alert(row: asyncpg.Record) -> alert_pb2.Alert:
    alert = alert_pb2.Alert(
        alert_id=str(row["alert_id"]),
        fingerprint=row["fingerprint"],
        labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]),
        severity=row["severity"],
        status=row["status"],
        source=row["source"],
        last_client_alert_id=row["last_client_alert_id"],
        occurrence_count=row["occurrence_count"],
        acknowledged_by=row["acknowledged_by"],
        acknowledge_comment=row["acknowledge_comment"],
        resolved_by=row["resolved_by"],
        resolve_comment=row["resolve_comment"],
        group_key=row["group_key"],
        escalation_level=row["escalation_level"],
        silenced=bool(row["silenced_by"]),
        silenced_by=row["silenced_by"],
        inhibited=bool(row["inhibited_by"]),
        inhibited_by=row["inhibited_by"],
        muted=row["muted"],
    )
    for name in (
        "first_seen_time",
        "last_seen_time",
        "acknowledge_time",
        "resolve_time",
        "next_escalation_time",
    ):
        if row[name] is not None:
            getattr(alert, name).FromDatetime(row[name])
    alert.create_time.FromDatetime(row["created_at"])
    alert.update_time.FromDatetime(row["updated_at"])
    if row["evidence"]:
        alert.evidence.ParseFromString(row["evidence"])
    return alert


def _silence(row: asyncpg.Record, now: datetime) -> alert_pb2.Silence:
    silence = alert_pb2.Silence(
        silence_id=str(row["silence_id"]),
        matchers=[alert_pb2.LabelMatcher(**m) for m in json.loads(row["matchers"])],
        created_by=row["created_by"],
        comment=row["comment"],
        silenced_alert_count=row["silenced_alert_count"],
    )
    if now >= row["end_time"]:
        silence.state = alert_pb2.SILENCE_STATE_EXPIRED
    elif now < row["start_time"]:
        silence.state = alert_pb2.SILENCE_STATE_PENDING
    else:
        silence.state = alert_pb2.SILENCE_STATE_ACTIVE
    silence.start_time.FromDatetime(row["start_time"])
    silence.end_time.FromDatetime(row["end_time"])
    silence.create_time.FromDatetime(row["created_at"])
    silence.update_time.FromDatetime(row["updated_at"])
    return silence


def _delivery(row: asyncpg.Record, attempts: Sequence[asyncpg.Record]) -> alert_pb2.Delivery:
    delivery = alert_pb2.Delivery(
        delivery_id=str(row["delivery_id"]),
        alert_id=str(row["alert_id"]),
        group_key=row["group_key"],
        receiver=row["receiver"],
        receiver_type=row["receiver_type"],
        notification_type=row["notification_type"],
        escalation_level=row["escalation_level"],
        state=row["state"],
    )
    for attempt in attempts:
        item = delivery.attempts.add(
            attempt_number=attempt["attempt_number"],
            outcome=attempt["outcome"],
            latency_ms=attempt["latency_ms"],
            http_status_code=attempt["http_status_code"],
            error=attempt["error"],
        )
        item.attempt_time.FromDatetime(attempt["attempt_time"])
    for name, column in (("next_attempt_time", "next_attempt_time"), ("create_time", "created_at")):
        if row[column] is not None:
            getattr(delivery, name).FromDatetime(row[column])
    if row["finish_time"] is not None:
        delivery.finish_time.FromDatetime(row["finish_time"])
    return delivery


# Silence count: open alerts an active silence matches (pending and expired silences silence nothing).
_SILENCE_COLUMNS = (
    "s.*, CASE WHEN s.start_time <= $1 AND s.end_time > $1 THEN (SELECT count(*) FROM alert.alerts a"  # noqa: S608  # fixed SQL fragments; values are $n parameters
    f" WHERE a.status <> 3 AND alert.labels_match(s.matchers, {_MATCH_LABELS})) ELSE 0 END"
    " AS silenced_alert_count"
)

# Create or deduplicate, and record the client_alert_id, in one atomic statement. Outcome numbers:
# 1 = RAISE_ALERT_OUTCOME_CREATED, 2 = DEDUPLICATED.
_UPSERT = (
    "WITH up AS (INSERT INTO alert.alerts (alert_id, fingerprint, labels, annotations, severity, status,"
    " source, last_client_alert_id, first_seen_time, last_seen_time, ends_at, evidence,"
    " created_at, updated_at, group_key)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $10, $10, {group_key})"
    " ON CONFLICT (fingerprint) WHERE status <> 3 DO UPDATE SET"
    " occurrence_count = alerts.occurrence_count + 1,"
    " last_seen_time = greatest(alerts.last_seen_time, EXCLUDED.last_seen_time),"
    " annotations = EXCLUDED.annotations,"
    " severity = greatest(alerts.severity, EXCLUDED.severity),"
    " source = EXCLUDED.source, last_client_alert_id = EXCLUDED.last_client_alert_id,"
    " ends_at = EXCLUDED.ends_at, evidence = coalesce(EXCLUDED.evidence, alerts.evidence),"
    " updated_at = EXCLUDED.updated_at"
    " RETURNING alerts.*, (xmax = 0) AS created),"
    " rec AS (INSERT INTO alert.raises (client_alert_id, alert_id, outcome, raised_at)"
    " SELECT $8, up.alert_id, CASE WHEN up.created THEN 1 ELSE 2 END, $10 FROM up)"
)
_UPSERT_AND_RECORD = (
    _UPSERT.format(group_key="''") + f" SELECT {_alert_columns('$10')}, false AS joined FROM up a"  # noqa: S608  # fixed SQL fragments; values are $n parameters
)
# The same, and for a new alert that no silence holds back: its first group (which must not exist yet),
# membership and notification — the whole way from a raise to a notification in one round trip.
_UNSILENCED = (
    "CASE WHEN NOT EXISTS (SELECT FROM alert.silences s WHERE s.start_time <= $10 AND s.end_time > $10"
    " AND alert.labels_match(s.matchers, $3::jsonb || jsonb_build_object('severity',"
    " alert.severity_name($5::smallint)))) THEN $13::text ELSE '' END"
)
_UPSERT_RECORD_AND_GROUP = (
    _UPSERT.format(group_key=_UNSILENCED)  # noqa: S608  # fixed SQL fragments; values are $n parameters
    + ", g AS (INSERT INTO alert.groups (group_key, receiver, receiver_type, group_labels,"
    " last_notify_time, next_notify_time, changed, group_wait_s, group_interval_s, repeat_interval_s,"
    " updated_at) SELECT $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $10 FROM up"
    " WHERE up.created AND up.group_key = $13 ON CONFLICT (group_key) DO NOTHING RETURNING group_key),"
    " m AS (INSERT INTO alert.group_members (group_key, alert_id, joined_at, notified)"
    " SELECT g.group_key, $1, $10, $23 FROM g),"
    " d AS (INSERT INTO alert.deliveries (delivery_id, alert_id, group_key, receiver, receiver_type,"
    " notification_type, escalation_level, state, payload, next_attempt_time, created_at)"
    " SELECT $24, $1, $13, $14, $15, $25, 0, 1, $26, $27, $10 FROM g WHERE $24::uuid IS NOT NULL),"
    " da AS (INSERT INTO alert.delivery_alerts (delivery_id, alert_id)"
    " SELECT $24, $1 FROM g WHERE $24::uuid IS NOT NULL)"
    + f" SELECT {_alert_columns('$10')}, EXISTS (SELECT FROM g) AS joined FROM up a"  # noqa: S608  # fixed SQL fragments; values are $n parameters
)

_STATE_CONDITIONS = {
    SilenceState.PENDING: "s.start_time > $1",
    SilenceState.ACTIVE: "(s.start_time <= $1 AND s.end_time > $1)",
    SilenceState.EXPIRED: "s.end_time <= $1",
}


class AlertStore:
    """Alerts, silences and deliveries in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- alerts ------------------------------------------------------------------------------------------

    async def raise_alert(
        self,
        raised: RaiseInput,
        now: datetime,
        *,
        alert_id: uuid.UUID | None = None,
        first_group: NewGroup | None = None,
    ) -> tuple[alert_pb2.Alert, int, bool]:
        """Create, deduplicate, resolve or replay; returns the alert, the RaiseAlertOutcome number and
        whether ``first_group`` was created with it.

        Creating and deduplicating are one statement (upsert + record of the client_alert_id), so a raise
        costs one round trip; a replayed client_alert_id violates the raises key, which undoes the whole
        statement, and the alert it raised before is returned unchanged. ``first_group`` (planned for a
        new alert with id ``alert_id``) is created in the same statement when the raise creates the
        alert, no active silence matches it and the group does not exist yet; otherwise nothing of it is.
        """
        ends_now = raised.end_time is not None and raised.end_time <= now
        args = (
            alert_id or uuid.uuid4(),
            fingerprint(raised.labels),
            json.dumps(dict(raised.labels)),
            json.dumps(dict(raised.annotations)),
            raised.severity,
            _RESOLVED if ends_now else _FIRING,
            raised.source,
            raised.client_alert_id,
            raised.start_time or now,
            now,
            raised.end_time,
            raised.evidence or None,
        )
        async with self._pool.acquire() as conn:
            try:
                if ends_now:
                    async with conn.transaction():
                        ended_id = await self._raise_ended(conn, raised, now, args)
                    return (
                        await self._get(conn, ended_id, now),
                        alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED,
                        False,
                    )
                if first_group is None:
                    row = await conn.fetchrow(_UPSERT_AND_RECORD, *args)
                else:
                    row = await conn.fetchrow(
                        _UPSERT_RECORD_AND_GROUP, *args, *first_group.args(), *first_group.outcome_args()
                    )
                assert row is not None  # an upsert always returns its row
                created = row["created"]
                return (
                    _alert(row),
                    (
                        alert_pb2.RAISE_ALERT_OUTCOME_CREATED
                        if created
                        else alert_pb2.RAISE_ALERT_OUTCOME_DEDUPLICATED
                    ),
                    row["joined"],
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "raises_pkey":
                    raise
            except _Replayed:
                pass
            replayed = await conn.fetchval(
                "SELECT alert_id FROM alert.raises WHERE client_alert_id = $1", raised.client_alert_id
            )
            return await self._get(conn, replayed, now), alert_pb2.RAISE_ALERT_OUTCOME_REPLAYED, False

    async def _raise_ended(self, conn: Conn, raised: RaiseInput, now: datetime, args: tuple[Any, ...]) -> Any:
        """Resolve the open alert of the fingerprint (or record one that already ended); its id."""
        seen = await conn.fetchval(
            "SELECT alert_id FROM alert.raises WHERE client_alert_id = $1", raised.client_alert_id
        )
        if seen is not None:
            raise _Replayed
        alert_id = await conn.fetchval(
            "UPDATE alert.alerts SET status = 3, resolve_time = $2, resolved_by = 'auto',"
            " occurrence_count = occurrence_count + 1, last_seen_time = $3, last_client_alert_id = $4,"
            " next_escalation_time = NULL, ends_at = $2, updated_at = $3"
            " WHERE fingerprint = $1 AND status <> 3 RETURNING alert_id",
            args[1],
            raised.end_time,
            now,
            raised.client_alert_id,
        )
        if alert_id is None:  # nothing open: record the condition that already ended
            alert_id = await conn.fetchval(
                "INSERT INTO alert.alerts (alert_id, fingerprint, labels, annotations, severity, status,"
                " source, last_client_alert_id, first_seen_time, last_seen_time, ends_at, evidence,"
                " resolve_time, resolved_by, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $11, 'auto', $10, $10)"
                " RETURNING alert_id",
                *args,
            )
        await conn.execute(
            "INSERT INTO alert.raises (client_alert_id, alert_id, outcome, raised_at)"
            " VALUES ($1, $2, $3, $4)",
            raised.client_alert_id,
            alert_id,
            alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED,
            now,
        )
        return alert_id

    async def _get(self, conn: Conn, alert_id: Any, now: datetime) -> alert_pb2.Alert:
        row = await conn.fetchrow(
            f"SELECT {_alert_columns('$2')} FROM alert.alerts a WHERE a.alert_id = $1",  # noqa: S608  # fixed SQL fragments; values are $n parameters
            alert_id,
            now,
        )
        if row is None:
            raise AlertNotFound(str(alert_id))
        return _alert(row)

    async def get_alert(self, alert_id: uuid.UUID, now: datetime, *, deliveries: bool) -> alert_pb2.Alert:
        """One alert, with its delivery history (newest first) when ``deliveries``."""
        # one snapshot: deliveries and their attempts are read by two queries while the worker writes
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            alert = await self._get(conn, alert_id, now)
            if deliveries:
                alert.deliveries.extend(
                    await AlertStore._deliveries(conn, _OF_ALERT.format(arg="$1"), [alert_id], 1000, 0)
                )
            return alert

    async def list_alerts(
        self, where: AlertFilter, now: datetime, limit: int, offset: int, *, deliveries: bool
    ) -> tuple[list[alert_pb2.Alert], int]:
        """A page of alerts matching ``where`` and the total number that match."""
        # $1 is `now`; naming its type here keeps it valid when no filter below refers to it.
        conditions: list[str] = ["$1::timestamptz IS NOT NULL"]
        args: list[Any] = [now]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if where.statuses:
            conditions.append(f"a.status = ANY({arg(list(where.statuses))}::smallint[])")
        if where.min_severity:
            conditions.append(f"a.severity >= {arg(where.min_severity)}")
        if where.matchers:
            conditions.append(
                f"alert.labels_match({arg(matchers_json(where.matchers))}::jsonb, {_MATCH_LABELS})"
            )
        if where.start_time is not None:
            conditions.append(f"a.last_seen_time >= {arg(where.start_time)}")
        if where.end_time is not None:
            conditions.append(f"a.last_seen_time < {arg(where.end_time)}")
        if not where.include_suppressed:
            conditions.append("(a.status = 3 OR (cardinality(a.inhibited_by) = 0 AND NOT a.muted))")
            conditions.append(
                "(a.status = 3 OR NOT EXISTS (SELECT 1 FROM alert.silences s WHERE "  # noqa: S608  # fixed SQL fragments; values are $n parameters
                f"{_ACTIVE_SILENCE.format(now='$1')} AND alert.labels_match(s.matchers, {_MATCH_LABELS})))"
            )
        where_sql = " AND ".join(conditions)
        direction = "DESC" if where.newest_first else "ASC"
        async with self._pool.acquire() as conn:
            total = await conn.fetchval(f"SELECT count(*) FROM alert.alerts a WHERE {where_sql}", *args)  # noqa: S608  # fixed SQL fragments; values are $n parameters
            rows = await conn.fetch(
                f"SELECT {_alert_columns('$1')} FROM alert.alerts a WHERE {where_sql}"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                f" ORDER BY a.last_seen_time {direction}, a.alert_id {direction}"
                f" LIMIT {arg(limit)} OFFSET {arg(offset)}",
                *args,
            )
            alerts = [_alert(row) for row in rows]
            if deliveries:
                for alert in alerts:
                    alert_id = uuid.UUID(alert.alert_id)
                    alert.deliveries.extend(
                        await self._deliveries(conn, _OF_ALERT.format(arg="$1"), [alert_id], 1000, 0)
                    )
            return alerts, total

    async def acknowledge(
        self, alert_id: uuid.UUID, subject: str, comment: str, now: datetime
    ) -> alert_pb2.Alert:
        """FIRING → ACKNOWLEDGED (stops escalation); acknowledged stays as is; resolved is an error."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE alert.alerts SET status = $2, acknowledge_time = $3, acknowledged_by = $4,"
                " acknowledge_comment = $5, next_escalation_time = NULL, updated_at = $3"
                " WHERE alert_id = $1 AND status = $6",
                alert_id,
                _ACKNOWLEDGED,
                now,
                subject,
                comment,
                _FIRING,
            )
            alert = await self._get(conn, alert_id, now)
            if alert.status == _RESOLVED:
                raise AlertAlreadyResolved(str(alert_id))
            return alert

    async def resolve(
        self, alert_id: uuid.UUID, subject: str, comment: str, now: datetime
    ) -> alert_pb2.Alert:
        """Any open state → RESOLVED; a resolved alert is returned unchanged."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE alert.alerts SET status = 3, resolve_time = $2, resolved_by = $3,"
                " resolve_comment = $4,"
                " next_escalation_time = NULL, updated_at = $2 WHERE alert_id = $1 AND status <> 3",
                alert_id,
                now,
                subject,
                comment,
            )
            return await self._get(conn, alert_id, now)

    async def due_escalations(self, now: datetime, limit: int) -> list[tuple[alert_pb2.Alert, str]]:
        """Firing (unacknowledged) alerts whose next escalation is due, with their policy names."""
        rows = await self._pool.fetch(
            f"SELECT {_alert_columns('$1')} FROM alert.alerts a WHERE a.status = 1"  # noqa: S608  # fixed SQL fragments; values are $n parameters
            " AND a.next_escalation_time <= $1 ORDER BY a.next_escalation_time LIMIT $2",
            now,
            limit,
        )
        return [(_alert(row), row["escalation_policy"]) for row in rows]

    async def set_suppression(
        self, alert_id: uuid.UUID, inhibited_by: Sequence[str], muted: bool, *, pending: bool
    ) -> datetime | None:
        """Record that the alert is inhibited (by these fingerprints) or muted, and whether a notification
        is still owed once that ends (``pending``); the alert's new update time."""
        updated: datetime | None = await self._pool.fetchval(
            "UPDATE alert.alerts SET inhibited_by = $2, muted = $3, notify_pending = $4 WHERE alert_id = $1"
            " RETURNING updated_at",
            alert_id,
            list(inhibited_by),
            muted,
            pending,
        )
        return updated

    async def pending_notification(self, now: datetime, limit: int) -> list[alert_pb2.Alert]:
        """Firing alerts held back by a silence, an inhibition or a mute interval, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT {_alert_columns('$1')} FROM alert.alerts a WHERE a.notify_pending AND a.status = 1"  # noqa: S608  # fixed SQL fragments; values are $n parameters
            " ORDER BY a.first_seen_time LIMIT $2",
            now,
            limit,
        )
        return [_alert(row) for row in rows]

    async def firing_labels(self) -> list[tuple[str, dict[str, str]]]:
        """(fingerprint, matcher labels) of every open alert, for inhibition."""
        rows = await self._pool.fetch(
            f"SELECT a.fingerprint, {_MATCH_LABELS} AS labels FROM alert.alerts a WHERE a.status <> 3"  # noqa: S608  # fixed SQL fragments; values are $n parameters
        )
        return [(r["fingerprint"], json.loads(r["labels"])) for r in rows]

    # -- silences ----------------------------------------------------------------------------------------

    async def create_silence(
        self, silence: SilenceInput, created_by: str, now: datetime
    ) -> alert_pb2.Silence:
        """Store a new silence and return it with its state at ``now``."""
        silence_id = uuid.uuid4()
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO alert.silences (silence_id, matchers, start_time, end_time, created_by, comment,"
                " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                silence_id,
                matchers_json(silence.matchers),
                silence.start_time,
                silence.end_time,
                created_by,
                silence.comment,
                now,
            )
            return await self._get_silence(conn, silence_id, now)

    async def _get_silence(self, conn: Conn, silence_id: uuid.UUID, now: datetime) -> alert_pb2.Silence:
        row = await conn.fetchrow(
            f"SELECT {_SILENCE_COLUMNS} FROM alert.silences s WHERE s.silence_id = $2",  # noqa: S608  # fixed SQL fragments; values are $n parameters
            now,
            silence_id,
        )
        if row is None:
            raise SilenceNotFound(str(silence_id))
        return _silence(row, now)

    async def get_silence(self, silence_id: uuid.UUID, now: datetime) -> alert_pb2.Silence:
        """One silence with its state at ``now``."""
        async with self._pool.acquire() as conn:
            return await self._get_silence(conn, silence_id, now)

    async def list_silences(
        self, states: Sequence[SilenceState], now: datetime, limit: int, offset: int
    ) -> list[alert_pb2.Silence]:
        """Silences in ``states`` (all when empty), newest first."""
        where = " OR ".join(_STATE_CONDITIONS[s] for s in states) or "true"
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_SILENCE_COLUMNS} FROM alert.silences s WHERE {where}"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                " ORDER BY s.created_at DESC, s.silence_id DESC LIMIT $2 OFFSET $3",
                now,
                limit,
                offset,
            )
            return [_silence(row, now) for row in rows]

    async def update_silence(
        self, silence_id: uuid.UUID, changes: Mapping[str, Any], now: datetime
    ) -> alert_pb2.Silence:
        """Overwrite ``changes`` (matchers, start_time, end_time, comment); expired silences are refused.

        The caller has validated each value; the window is checked again here against the stored values
        it keeps, and a window that ends before it starts raises ``ValueError``.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM alert.silences WHERE silence_id = $1 FOR UPDATE", silence_id
            )
            if row is None:
                raise SilenceNotFound(str(silence_id))
            if row["end_time"] <= now:
                raise SilenceExpired(str(silence_id))
            start = changes.get("start_time", row["start_time"])
            end = changes.get("end_time", row["end_time"])
            if end <= start:
                raise ValueError("end_time must be after start_time")
            matchers = changes.get("matchers")
            await conn.execute(
                "UPDATE alert.silences SET matchers = coalesce($2::jsonb, matchers), start_time = $3,"
                " end_time = $4, comment = coalesce($5, comment), updated_at = $6 WHERE silence_id = $1",
                silence_id,
                None if matchers is None else matchers_json(matchers),
                start,
                end,
                changes.get("comment"),
                now,
            )
            return await self._get_silence(conn, silence_id, now)

    async def expire_silence(self, silence_id: uuid.UUID, now: datetime) -> None:
        """End a silence now; an expired silence stays as it is."""
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE alert.silences SET end_time = $2, start_time = least(start_time, $2), updated_at = $2"
                " WHERE silence_id = $1 AND end_time > $2",
                silence_id,
                now,
            )
            if status == "UPDATE 0":
                exists = await conn.fetchval(
                    "SELECT true FROM alert.silences WHERE silence_id = $1", silence_id
                )
                if not exists:
                    raise SilenceNotFound(str(silence_id))

    # -- deliveries --------------------------------------------------------------------------------------

    @staticmethod
    async def _deliveries(
        conn: Conn, where: str, args: Sequence[Any], limit: int, offset: int
    ) -> list[alert_pb2.Delivery]:
        n = len(args)
        rows = await conn.fetch(
            f"SELECT d.* FROM alert.deliveries d WHERE {where}"  # noqa: S608  # fixed SQL fragments; values are $n parameters
            f" ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
            *args,
            limit,
            offset,
        )
        if not rows:
            return []
        attempts = await conn.fetch(
            "SELECT * FROM alert.delivery_attempts WHERE delivery_id = ANY($1::uuid[])"
            " ORDER BY delivery_id, attempt_number",
            [row["delivery_id"] for row in rows],
        )
        by_delivery: dict[Any, list[asyncpg.Record]] = {}
        for attempt in attempts:
            by_delivery.setdefault(attempt["delivery_id"], []).append(attempt)
        return [_delivery(row, by_delivery.get(row["delivery_id"], [])) for row in rows]


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery claimed for an attempt."""

    delivery_id: uuid.UUID
    receiver: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class NewGroup:
    """An alert group created with one alert as its member, and its first notification when that goes
    out at once (``delivery_id`` set; ``handed`` = it leased to the caller, who sends it)."""

    columns: tuple[Any, ...]
    """key, receiver, receiver type, labels (JSON), last and next notify, changed, the three timings"""
    next_notify: datetime
    notified: int
    delivery_id: uuid.UUID | None
    notification_type: int
    payload: str | None  # JSON
    next_attempt_time: datetime
    handed: DueDelivery | None

    def args(self) -> tuple[Any, ...]:
        """The group's columns."""
        return self.columns

    def outcome_args(self) -> tuple[Any, ...]:
        """What the member was told, and the notification: id, type, payload, first attempt time."""
        return (self.notified, self.delivery_id, self.notification_type, self.payload, self.next_attempt_time)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at a delivery, and the state the delivery moves to."""

    delivery_id: uuid.UUID
    attempt_number: int
    attempt_time: datetime
    outcome: int
    latency_ms: float
    http_status_code: int
    error: str
    state: int
    next_attempt_time: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Validated ListDeliveries / RetryFailedDeliveries filters."""

    alert_id: uuid.UUID | None = None
    receiver: str = ""
    states: Sequence[int] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None


class DeliveryStore:
    """Deliveries and their attempts in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        alert_id: uuid.UUID,
        group_key: str,
        planned: Sequence[Any],
        payloads: Sequence[dict[str, Any]],
        now: datetime,
        *,
        escalation_level: int = 0,
        escalation_policy: str | None = None,
        next_escalation: datetime | None = None,
    ) -> list[uuid.UUID]:
        """Insert PENDING deliveries (one per planned receiver); set the alert's group key and escalation.

        ``escalation_policy`` (when not None) starts or moves the alert's escalation: its policy and when
        the next tier is due.
        """
        ids = [uuid.uuid4() for _ in planned]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO alert.deliveries (delivery_id, alert_id, group_key, receiver, receiver_type,"
                " notification_type, escalation_level, state, payload, next_attempt_time, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $10, 1, $7, $8, $9)",
                [
                    (
                        delivery_id,
                        alert_id,
                        p.group_key,
                        p.receiver,
                        p.receiver_type,
                        p.notification_type,
                        json.dumps({**payload, "notification_id": str(delivery_id)}),
                        p.due,
                        now,
                        escalation_level,
                    )
                    for delivery_id, p, payload in zip(ids, planned, payloads, strict=True)
                ],
            )
            if group_key:
                await conn.execute(
                    "UPDATE alert.alerts SET group_key = $2 WHERE alert_id = $1", alert_id, group_key
                )
            if escalation_policy is not None:
                await conn.execute(
                    "UPDATE alert.alerts SET escalation_policy = $2, escalation_level = $3,"
                    " next_escalation_time = $4, updated_at = $5 WHERE alert_id = $1 AND status = 1",
                    alert_id,
                    escalation_policy,
                    escalation_level,
                    next_escalation,
                    now,
                )
        return ids

    async def claim_due(
        self, now: datetime, limit: int, lease_s: float, exclude: Sequence[uuid.UUID] = ()
    ) -> list[DueDelivery]:
        """Deliveries due at ``now``, leased for ``lease_s`` so another instance does not take them too;
        ``exclude`` = the ones this instance is still sending (never sent twice at once, even if slow)."""
        rows = await self._pool.fetch(
            "UPDATE alert.deliveries d SET next_attempt_time = $1 + make_interval(secs => $3)"
            " WHERE d.delivery_id IN (SELECT delivery_id FROM alert.deliveries WHERE state IN (1, 2)"
            " AND next_attempt_time <= $1 AND delivery_id <> ALL($4::uuid[])"
            " ORDER BY next_attempt_time LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " RETURNING d.delivery_id, d.receiver, d.payload,"
            " (SELECT count(*) FROM alert.delivery_attempts a WHERE a.delivery_id = d.delivery_id)"
            " AS attempts",
            now,
            limit,
            lease_s,
            list(exclude),
        )
        return [
            DueDelivery(r["delivery_id"], r["receiver"], json.loads(r["payload"]), r["attempts"])
            for r in rows
        ]

    async def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Store attempts and their deliveries' new states (finish_time set when final), in one statement."""
        await self._pool.execute(
            "WITH a AS (INSERT INTO alert.delivery_attempts (delivery_id, attempt_number, attempt_time,"
            " outcome, latency_ms, http_status_code, error) SELECT * FROM unnest($1::uuid[], $2::int[],"
            " $3::timestamptz[], $4::smallint[], $5::float8[], $6::int[], $7::text[]))"
            " UPDATE alert.deliveries d SET state = u.state, next_attempt_time = u.next_attempt_time,"
            " finish_time = CASE WHEN u.state IN (3, 4, 5) THEN u.attempt_time END"
            " FROM unnest($1::uuid[], $8::smallint[], $9::timestamptz[], $3::timestamptz[])"
            " AS u(delivery_id, state, next_attempt_time, attempt_time) WHERE d.delivery_id = u.delivery_id",
            [a.delivery_id for a in attempts],
            [a.attempt_number for a in attempts],
            [a.attempt_time for a in attempts],
            [a.outcome for a in attempts],
            [a.latency_ms for a in attempts],
            [a.http_status_code for a in attempts],
            [a.error for a in attempts],
            [a.state for a in attempts],
            [a.next_attempt_time for a in attempts],
        )

    async def release(self, delivery_ids: Sequence[uuid.UUID], now: datetime) -> None:
        """Give up the lease of deliveries this instance will not send after all (it is stopping), so they
        are due at once for whoever runs next instead of when the lease would have run out."""
        await self._pool.execute(
            "UPDATE alert.deliveries SET next_attempt_time = $2"
            " WHERE delivery_id = ANY($1::uuid[]) AND state IN (1, 2)",
            list(delivery_ids),
            now,
        )

    def _where(self, where: DeliveryFilter, args: list[Any], time_column: str) -> str:
        conditions = ["true"]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if where.alert_id is not None:
            conditions.append(_OF_ALERT.format(arg=arg(where.alert_id)))
        if where.receiver:
            conditions.append(f"d.receiver = {arg(where.receiver)}")
        if where.states:
            conditions.append(f"d.state = ANY({arg(list(where.states))}::smallint[])")
        if where.start_time is not None:
            conditions.append(f"{time_column} >= {arg(where.start_time)}")
        if where.end_time is not None:
            conditions.append(f"{time_column} < {arg(where.end_time)}")
        return " AND ".join(conditions)

    async def list_deliveries(
        self, where: DeliveryFilter, limit: int, offset: int
    ) -> list[alert_pb2.Delivery]:
        """Deliveries matching ``where``, newest first, with their attempts."""
        args: list[Any] = []
        sql = self._where(where, args, "d.created_at")
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await AlertStore._deliveries(conn, sql, args, limit, offset)

    async def retry_failed(self, where: DeliveryFilter, now: datetime, *, validate_only: bool) -> list[str]:
        """Requeue FAILED deliveries matching ``where`` (due at once); their ids."""
        args: list[Any] = []
        sql = self._where(
            DeliveryFilter(where.alert_id, where.receiver, (4,), where.start_time, where.end_time),
            args,
            "d.finish_time",
        )
        if validate_only:
            query = f"SELECT d.delivery_id FROM alert.deliveries d WHERE {sql}"  # noqa: S608  # fixed SQL fragments; values are $n parameters
            rows = await self._pool.fetch(query, *args)
        else:
            args.append(now)
            rows = await self._pool.fetch(
                f"UPDATE alert.deliveries d SET state = 2, next_attempt_time = ${len(args)},"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                f" finish_time = NULL WHERE {sql} RETURNING d.delivery_id",
                *args,
            )
        return [str(r["delivery_id"]) for r in rows]


@dataclass(frozen=True, slots=True)
class Statistics:
    """GetAlertStatistics figures, before translation to the proto."""

    alerts_total: int
    occurrences_total: int
    deduplicated_total: int
    by_severity: list[tuple[int, int]]
    by_status: list[tuple[int, int]]
    by_kind: list[tuple[str, int]]
    mean_ack_s: float | None
    mean_resolve_s: float | None
    by_receiver: list[asyncpg.Record]
    buckets: list[tuple[datetime, int]]


class StatisticsStore:
    """Aggregates over alerts, raises and deliveries."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def statistics(
        self, start: datetime, end: datetime, matchers: Sequence[Matcher], bucket_s: float | None
    ) -> Statistics:
        """Figures for alerts first seen in [start, end) whose labels match ``matchers``."""
        match = f"alert.labels_match($3::jsonb, {_MATCH_LABELS})"
        in_range = f"a.first_seen_time >= $1 AND a.first_seen_time < $2 AND {match}"
        args = (start, end, matchers_json(matchers))
        async with self._pool.acquire() as conn:
            totals = await conn.fetchrow(
                "SELECT count(*) AS total,"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                " extract(epoch FROM avg(a.acknowledge_time - a.first_seen_time)) AS ack_s,"
                " extract(epoch FROM avg(a.resolve_time - a.first_seen_time)) AS resolve_s"
                f" FROM alert.alerts a WHERE {in_range}",
                *args,
            )
            assert totals is not None  # an aggregate always returns a row
            raises = await conn.fetchrow(
                "SELECT count(*) AS occurrences, count(*) FILTER (WHERE r.outcome = 2) AS deduplicated"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                " FROM alert.raises r JOIN alert.alerts a USING (alert_id)"
                f" WHERE r.raised_at >= $1 AND r.raised_at < $2 AND {match}",
                *args,
            )
            assert raises is not None
            grouped = await conn.fetch(
                "SELECT 'severity' AS what, a.severity::text AS value, count(*) AS n"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                f" FROM alert.alerts a WHERE {in_range} GROUP BY a.severity"
                " UNION ALL SELECT 'status', a.status::text, count(*)"
                f" FROM alert.alerts a WHERE {in_range} GROUP BY a.status"
                " UNION ALL SELECT 'kind', coalesce(a.labels ->> 'kind', ''), count(*)"
                f" FROM alert.alerts a WHERE {in_range} GROUP BY 2 ORDER BY 1, 2",
                *args,
            )
            receivers = await conn.fetch(
                "WITH d AS (SELECT d.* FROM alert.deliveries d JOIN alert.alerts a USING (alert_id)"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                f" WHERE d.created_at >= $1 AND d.created_at < $2 AND {match})"
                " SELECT d.receiver, min(d.receiver_type) AS receiver_type, count(*) AS total,"
                " count(*) FILTER (WHERE d.state = 3) AS succeeded,"
                " count(*) FILTER (WHERE d.state = 4) AS failed,"
                " count(*) FILTER (WHERE d.state IN (1, 2)) AS pending,"
                " (SELECT count(*) FROM alert.delivery_attempts t JOIN d d2 USING (delivery_id)"
                "  WHERE d2.receiver = d.receiver) AS attempts,"
                " (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY t.latency_ms)"
                "  FROM alert.delivery_attempts t JOIN d d2 USING (delivery_id)"
                "  WHERE d2.receiver = d.receiver) AS p50,"
                " (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY t.latency_ms)"
                "  FROM alert.delivery_attempts t JOIN d d2 USING (delivery_id)"
                "  WHERE d2.receiver = d.receiver) AS p99"
                " FROM d GROUP BY d.receiver ORDER BY d.receiver",
                *args,
            )
            buckets: list[tuple[datetime, int]] = []
            if bucket_s:
                rows = await conn.fetch(
                    "SELECT date_bin(make_interval(secs => $4), a.first_seen_time, $1) AS bucket,"  # noqa: S608  # fixed SQL fragments; values are $n parameters
                    " count(*) AS n"
                    f" FROM alert.alerts a WHERE {in_range} GROUP BY 1 ORDER BY 1",
                    *args,
                    bucket_s,
                )
                buckets = [(r["bucket"], r["n"]) for r in rows]
        return Statistics(
            alerts_total=totals["total"],
            occurrences_total=raises["occurrences"],
            deduplicated_total=raises["deduplicated"],
            by_severity=[(int(r["value"]), r["n"]) for r in grouped if r["what"] == "severity"],
            by_status=[(int(r["value"]), r["n"]) for r in grouped if r["what"] == "status"],
            by_kind=[(r["value"], r["n"]) for r in grouped if r["what"] == "kind"],
            mean_ack_s=None if totals["ack_s"] is None else float(totals["ack_s"]),
            mean_resolve_s=None if totals["resolve_s"] is None else float(totals["resolve_s"]),
            by_receiver=list(receivers),
            buckets=buckets,
        )
