"""gRPC front of the alert service: proto ↔ domain translation and input validation.

Every error leaves through ``mesh.status`` with details: INVALID_ARGUMENT with a BadRequest naming each
bad field, NOT_FOUND, FAILED_PRECONDITION (acknowledging a resolved alert, updating an expired
silence), UNAVAILABLE + RetryInfo when PostgreSQL cannot be reached or the instance is draining,
RESOURCE_EXHAUSTED + RetryInfo for a watcher that fell too far behind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from itsmesh.v1 import alert_pb2, alert_pb2_grpc, common_pb2
from mesh.interceptors import current_principal
from mesh.pg_pool import DATABASE_DOWN
from mesh.status import StatusError, errors_as_status, raise_for_violations, status_error
from services.alert.changes import ChangeFeed
from services.alert.errors import AlertAlreadyResolved, AlertNotFound, SilenceExpired, SilenceNotFound
from services.alert.group_store import GroupStore
from services.alert.matchers import (
    LABEL_NAME,
    Matcher,
    MatchType,
    SilenceState,
    all_match,
    matcher_violations,
)
from services.alert.notifier import SEVERITY_NAMES, Notifier
from services.alert.routing import RoutingConfig, RoutingConfigError
from services.alert.routing_source import RoutingSource
from services.alert.store import (
    AlertFilter,
    AlertStore,
    DeliveryFilter,
    DeliveryStore,
    RaiseInput,
    SilenceInput,
    Statistics,
    StatisticsStore,
    matchers_json,
)

Context = grpc.aio.ServicerContext[Any, Any]
Clock = Callable[[], datetime]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
RETRY_DELAY_S = 1.0
MAX_CLIENT_ALERT_ID = 128
MAX_LABELS = 64
MAX_LABEL_VALUE = 1024
MAX_COMMENT = 4096
SILENCE_FIELDS = frozenset({"matchers", "start_time", "end_time", "comment"})


def utc_now() -> datetime:
    """The wall clock, timezone-aware (the default clock of the servicer)."""
    return datetime.now(UTC)


class AlertServicer(alert_pb2_grpc.AlertServiceServicer):
    """Answers every RPC of itsmesh.v1.AlertService; stores are attached by the database resource."""

    def __init__(self, clock: Clock = utc_now, routing: RoutingSource | None = None) -> None:
        self.store: AlertStore | None = None
        self.deliveries: DeliveryStore | None = None
        self.groups: GroupStore | None = None
        self.notifier: Notifier | None = None
        self.statistics: StatisticsStore | None = None
        self.changes = ChangeFeed()
        # Set by the service: share a change with the other instances; wake the suppression checker.
        self.share_change: Callable[[alert_pb2.WatchAlertsResponse], None] = lambda change: None
        self.suppression_may_have_ended: Callable[[], None] = lambda: None
        self.draining = asyncio.Event()  # the host's: set on SIGTERM, so watch streams end and clients move
        self.clock = clock
        self.routing = routing or RoutingSource(None)

    def _store(self) -> AlertStore:
        if self.store is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "the alert store is starting", retry_delay_s=1.0)
        return self.store

    def _group_store(self) -> GroupStore:
        if self.groups is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "the alert store is starting", retry_delay_s=1.0)
        return self.groups

    def _delivery_store(self) -> DeliveryStore:
        if self.deliveries is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "the alert store is starting", retry_delay_s=1.0)
        return self.deliveries

    def _changed(self, change_type: int, alert: alert_pb2.Alert, now: datetime) -> None:
        change = alert_pb2.WatchAlertsResponse(change_type=change_type, alert=alert)  # type: ignore[arg-type]
        change.alert.ClearField("deliveries")
        change.change_time.FromDatetime(now)
        self.changes.publish(change)
        self.share_change(change)

    async def apply_raise(self, raised: RaiseInput) -> tuple[alert_pb2.Alert, int]:
        """Store a validated raise, tell watchers, and notify receivers of a new or resolved alert."""
        now = self.clock()
        alert_id = uuid.uuid4()
        first_group = self.notifier.first_group(raised, alert_id, now) if self.notifier is not None else None
        alert, outcome, grouped = await self._store().raise_alert(
            raised, now, alert_id=alert_id, first_group=first_group
        )
        if self.notifier is not None:
            if outcome == alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED:
                self.notifier.seen_resolved(alert)
            elif outcome != alert_pb2.RAISE_ALERT_OUTCOME_REPLAYED:
                self.notifier.seen_open(alert)
        if grouped and first_group is not None and self.notifier is not None:
            self.notifier.first_group_created(first_group, now)  # notified in the raise's own statement
        elif outcome in (alert_pb2.RAISE_ALERT_OUTCOME_CREATED, alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED):
            # notified first, so watchers see whether it fired inhibited or muted
            resolved = outcome == alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED
            # a new alert whose raise did not create its planned group: that group exists already
            await self._notify(alert, resolved=resolved, now=now, group_exists=first_group is not None)
            if resolved:
                self.suppression_may_have_ended()  # it may have inhibited others
        change_types: dict[int, int] = {
            alert_pb2.RAISE_ALERT_OUTCOME_CREATED: alert_pb2.ALERT_CHANGE_TYPE_CREATED,
            alert_pb2.RAISE_ALERT_OUTCOME_DEDUPLICATED: alert_pb2.ALERT_CHANGE_TYPE_REPEATED,
            alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED: alert_pb2.ALERT_CHANGE_TYPE_RESOLVED,
        }
        if outcome in change_types:
            self._changed(change_types[outcome], alert, now)
        return alert, outcome

    def escalated(self, alert: alert_pb2.Alert, now: datetime) -> None:
        """Tell watchers that ``alert`` reached its next escalation tier."""
        self._changed(alert_pb2.ALERT_CHANGE_TYPE_ESCALATED, alert, now)

    def suppression_changed(self, alert: alert_pb2.Alert, now: datetime) -> None:
        """Tell watchers that ``alert``'s inhibition or mute changed (e.g. it is notified after all)."""
        self._changed(alert_pb2.ALERT_CHANGE_TYPE_SUPPRESSION_CHANGED, alert, now)

    async def _notify(
        self, alert: alert_pb2.Alert, *, resolved: bool, now: datetime, group_exists: bool = False
    ) -> None:
        if self.notifier is not None:
            await self.notifier.on_change(alert, resolved=resolved, now=now, group_exists=group_exists)

    # --- alerts ---------------------------------------------------------------------------------------

    async def RaiseAlert(
        self, request: alert_pb2.RaiseAlertRequest, context: Context
    ) -> alert_pb2.RaiseAlertResponse:
        async with _errors(context):
            alert, outcome = await self.apply_raise(_raise_input(request))
            return alert_pb2.RaiseAlertResponse(alert=alert, outcome=outcome)  # type: ignore[arg-type]
        raise AssertionError("unreachable")

    async def GetAlert(self, request: alert_pb2.GetAlertRequest, context: Context) -> alert_pb2.Alert:
        async with _errors(context):
            alert_id = _uuid(request.alert_id, "alert_id")
            raise_for_violations(_enum_violations(request.view, alert_pb2.AlertView.values(), "view"))
            full = request.view != alert_pb2.ALERT_VIEW_BASIC
            return await self._store().get_alert(alert_id, self.clock(), deliveries=full)
        raise AssertionError("unreachable")

    async def ListAlerts(
        self, request: alert_pb2.ListAlertsRequest, context: Context
    ) -> alert_pb2.ListAlertsResponse:
        async with _errors(context):
            where = _alert_filter(request)
            limit = _page_size(request.page_size)
            digest = _digest(request, ("page_size", "page_token"))
            offset = _decode_token(request.page_token, digest)
            alerts, total = await self._store().list_alerts(
                where, self.clock(), limit, offset, deliveries=request.view == alert_pb2.ALERT_VIEW_FULL
            )
            more = offset + len(alerts) < total
            return alert_pb2.ListAlertsResponse(
                alerts=alerts,
                total_size=total,
                next_page_token=_encode_token(offset + len(alerts), digest) if more else "",
            )
        raise AssertionError("unreachable")

    async def AcknowledgeAlert(
        self, request: alert_pb2.AcknowledgeAlertRequest, context: Context
    ) -> alert_pb2.Alert:
        async with _errors(context):
            alert_id = _uuid(request.alert_id, "alert_id")
            raise_for_violations(_length_violations(request.comment, MAX_COMMENT, "comment"))
            now = self.clock()
            alert = await self._store().acknowledge(alert_id, _subject(), request.comment, now)
            if alert.acknowledge_time.ToDatetime(tzinfo=UTC) == now:  # acknowledged by this call
                self._changed(alert_pb2.ALERT_CHANGE_TYPE_ACKNOWLEDGED, alert, now)
            return alert
        raise AssertionError("unreachable")

    async def ResolveAlert(self, request: alert_pb2.ResolveAlertRequest, context: Context) -> alert_pb2.Alert:
        async with _errors(context):
            alert_id = _uuid(request.alert_id, "alert_id")
            raise_for_violations(_length_violations(request.comment, MAX_COMMENT, "comment"))
            now = self.clock()
            alert = await self._store().resolve(alert_id, _subject(), request.comment, now)
            if alert.resolve_time.ToDatetime(tzinfo=UTC) == now:  # resolved by this call
                if self.notifier is not None:
                    self.notifier.seen_resolved(alert)
                await self._notify(alert, resolved=True, now=now)
                self._changed(alert_pb2.ALERT_CHANGE_TYPE_RESOLVED, alert, now)
                self.suppression_may_have_ended()  # it may have inhibited others
            return alert
        raise AssertionError("unreachable")

    async def WatchAlerts(
        self, request: alert_pb2.WatchAlertsRequest, context: Context
    ) -> AsyncIterator[alert_pb2.WatchAlertsResponse]:
        async with _errors(context):
            problems = matcher_violations(_triples(request.matchers), "matchers")
            for i, status in enumerate(request.statuses):
                problems += _enum_violations(status, common_pb2.AlertStatus.values(), f"statuses[{i}]")
            problems += _enum_violations(request.min_severity, common_pb2.Severity.values(), "min_severity")
            raise_for_violations(problems)
            watch = _WatchFilter(
                _matchers(request.matchers),
                frozenset(s for s in request.statuses if s),
                request.min_severity,
                request.include_suppressed,
            )
            with self.changes.subscribe() as subscription:  # before the snapshot, so nothing falls between
                if request.send_initial_snapshot:
                    open_states = [common_pb2.ALERT_STATUS_FIRING, common_pb2.ALERT_STATUS_ACKNOWLEDGED]
                    where = AlertFilter(
                        statuses=sorted(watch.statuses & set(open_states)) if watch.statuses else open_states,
                        min_severity=watch.min_severity,
                        matchers=watch.matchers,
                        include_suppressed=watch.include_suppressed,
                    )
                    offset = 0
                    while True:
                        page, total = await self._store().list_alerts(
                            where, self.clock(), MAX_PAGE_SIZE, offset, deliveries=False
                        )
                        for alert in page:
                            subscription.fresh(alert)  # queued changes it already contains are skipped
                            yield alert_pb2.WatchAlertsResponse(
                                change_type=alert_pb2.ALERT_CHANGE_TYPE_SNAPSHOT, alert=alert
                            )
                        offset += len(page)
                        if not page or offset >= total:
                            break
                    yield alert_pb2.WatchAlertsResponse(change_type=alert_pb2.ALERT_CHANGE_TYPE_SNAPSHOT_END)
                while True:
                    getter = asyncio.ensure_future(subscription.queue.get())
                    overflow = asyncio.ensure_future(subscription.overflowed.wait())
                    draining = asyncio.ensure_future(self.draining.wait())
                    try:
                        done, _ = await asyncio.wait(
                            {getter, overflow, draining}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:  # also when the client goes away mid-wait
                        for task in (getter, overflow, draining):
                            task.cancel()
                    if getter in done:
                        change = getter.result()
                        if subscription.fresh(change.alert) and watch.accepts(change.alert):
                            yield change
                    elif draining in done:
                        raise status_error(
                            grpc.StatusCode.UNAVAILABLE,
                            "this instance is shutting down; watch again",
                            reason="DRAINING",
                            retry_delay_s=0.0,
                        )
                    elif subscription.queue.empty():
                        raise status_error(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "this watcher fell too far behind; watch again with send_initial_snapshot",
                            reason="WATCHER_TOO_SLOW",
                            retry_delay_s=1.0,
                        )

    async def ListAlertGroups(
        self, request: alert_pb2.ListAlertGroupsRequest, context: Context
    ) -> alert_pb2.ListAlertGroupsResponse:
        async with _errors(context):
            raise_for_violations(matcher_violations(_triples(request.matchers), "matchers"))
            limit = _page_size(request.page_size)
            digest = _digest(request, ("page_size", "page_token"))
            offset = _decode_token(request.page_token, digest)
            groups = await self._group_store().list_groups(
                request.receiver, matchers_json(_matchers(request.matchers)), self.clock(), limit + 1, offset
            )
            return alert_pb2.ListAlertGroupsResponse(
                groups=groups[:limit],
                next_page_token=_encode_token(offset + limit, digest) if len(groups) > limit else "",
            )
        raise AssertionError("unreachable")

    async def GetAlertStatistics(
        self, request: alert_pb2.GetAlertStatisticsRequest, context: Context
    ) -> alert_pb2.AlertStatistics:
        async with _errors(context):
            problems = matcher_violations(_triples(request.matchers), "matchers")
            time_range = request.time_range
            if not request.HasField("time_range") or not time_range.HasField("start_time"):
                problems.append(("time_range.start_time", "required"))
            now = self.clock()
            start = _time(time_range.start_time) if time_range.HasField("start_time") else now
            end = _time(time_range.end_time) if time_range.HasField("end_time") else now
            if end <= start:
                problems.append(("time_range.end_time", "must be after start_time"))
            bucket_s: float | None = None
            if request.HasField("bucket"):
                bucket_s = request.bucket.ToNanoseconds() / 1e9
                if not 60 <= bucket_s <= 86400:
                    problems.append(("bucket", "must be between 1 minute and 1 day"))
            raise_for_violations(problems)
            stats = await self._statistics().statistics(start, end, _matchers(request.matchers), bucket_s)
            return _statistics_proto(stats, start, end)
        raise AssertionError("unreachable")

    def _statistics(self) -> StatisticsStore:
        if self.statistics is None:
            raise status_error(grpc.StatusCode.UNAVAILABLE, "the alert store is starting", retry_delay_s=1.0)
        return self.statistics

    # --- silences -------------------------------------------------------------------------------------

    async def CreateSilence(
        self, request: alert_pb2.CreateSilenceRequest, context: Context
    ) -> alert_pb2.Silence:
        async with _errors(context):
            now = self.clock()
            silence = request.silence
            problems = _silence_matcher_violations(silence.matchers, "silence.matchers")
            start = _time(silence.start_time) if silence.HasField("start_time") else now
            if not silence.HasField("end_time"):
                problems.append(("silence.end_time", "required"))
            elif _time(silence.end_time) <= start:
                problems.append(("silence.end_time", "must be after start_time"))
            elif _time(silence.end_time) <= now:
                problems.append(("silence.end_time", "must be in the future"))
            problems += _comment_violations(silence.comment, "silence.comment")
            raise_for_violations(problems)
            created = SilenceInput(
                matchers=_matchers(silence.matchers),
                start_time=start,
                end_time=_time(silence.end_time),
                comment=silence.comment.strip(),
            )
            return await self._store().create_silence(created, _subject(), now)
        raise AssertionError("unreachable")

    async def GetSilence(self, request: alert_pb2.GetSilenceRequest, context: Context) -> alert_pb2.Silence:
        async with _errors(context):
            return await self._store().get_silence(_uuid(request.silence_id, "silence_id"), self.clock())
        raise AssertionError("unreachable")

    async def ListSilences(
        self, request: alert_pb2.ListSilencesRequest, context: Context
    ) -> alert_pb2.ListSilencesResponse:
        async with _errors(context):
            problems: list[tuple[str, str]] = []
            for i, state in enumerate(request.states):
                problems += _enum_violations(state, alert_pb2.SilenceState.values(), f"states[{i}]")
            raise_for_violations(problems)
            states = sorted({SilenceState(s) for s in request.states if s})
            limit = _page_size(request.page_size)
            digest = _digest(request, ("page_size", "page_token"))
            offset = _decode_token(request.page_token, digest)
            silences = await self._store().list_silences(states, self.clock(), limit + 1, offset)
            more = len(silences) > limit
            return alert_pb2.ListSilencesResponse(
                silences=silences[:limit],
                next_page_token=_encode_token(offset + limit, digest) if more else "",
            )
        raise AssertionError("unreachable")

    async def UpdateSilence(
        self, request: alert_pb2.UpdateSilenceRequest, context: Context
    ) -> alert_pb2.Silence:
        async with _errors(context):
            silence = request.silence
            silence_id = _uuid(silence.silence_id, "silence.silence_id")
            paths = list(request.update_mask.paths)
            problems: list[tuple[str, str]] = []
            if not paths:
                problems.append(("update_mask", "name at least one of " + ", ".join(sorted(SILENCE_FIELDS))))
            for i, path in enumerate(paths):
                if path not in SILENCE_FIELDS:
                    problems.append((f"update_mask.paths[{i}]", f"{path!r} cannot be updated"))
            changes: dict[str, Any] = {}
            if "matchers" in paths:
                problems += _silence_matcher_violations(silence.matchers, "silence.matchers")
                changes["matchers"] = silence.matchers
            for name in ("start_time", "end_time"):
                if name in paths:
                    if silence.HasField(name):
                        changes[name] = _time(getattr(silence, name))
                    else:
                        problems.append((f"silence.{name}", "required when named in update_mask"))
            if "comment" in paths:
                problems += _comment_violations(silence.comment, "silence.comment")
                changes["comment"] = silence.comment.strip()
            raise_for_violations(problems)
            if "matchers" in changes:
                changes["matchers"] = _matchers(silence.matchers)
            try:
                updated = await self._store().update_silence(silence_id, changes, self.clock())
                self.suppression_may_have_ended()
                return updated
            except ValueError as exc:
                raise_for_violations([("silence.end_time", str(exc))])
                raise
        raise AssertionError("unreachable")

    async def DeleteSilence(
        self, request: alert_pb2.DeleteSilenceRequest, context: Context
    ) -> empty_pb2.Empty:
        async with _errors(context):
            await self._store().expire_silence(_uuid(request.silence_id, "silence_id"), self.clock())
            self.suppression_may_have_ended()
            return empty_pb2.Empty()
        raise AssertionError("unreachable")

    # --- deliveries -----------------------------------------------------------------------------------

    async def ListDeliveries(
        self, request: alert_pb2.ListDeliveriesRequest, context: Context
    ) -> alert_pb2.ListDeliveriesResponse:
        async with _errors(context):
            where = _delivery_filter(request.alert_id, request.receiver, request.states, request)
            limit = _page_size(request.page_size)
            digest = _digest(request, ("page_size", "page_token"))
            offset = _decode_token(request.page_token, digest)
            found = await self._delivery_store().list_deliveries(where, limit + 1, offset)
            return alert_pb2.ListDeliveriesResponse(
                deliveries=found[:limit],
                next_page_token=_encode_token(offset + limit, digest) if len(found) > limit else "",
            )
        raise AssertionError("unreachable")

    async def RetryFailedDeliveries(
        self, request: alert_pb2.RetryFailedDeliveriesRequest, context: Context
    ) -> alert_pb2.RetryFailedDeliveriesResponse:
        async with _errors(context):
            where = _delivery_filter(request.alert_id, request.receiver, (), request)
            ids = await self._delivery_store().retry_failed(
                where, self.clock(), validate_only=request.validate_only
            )
            return alert_pb2.RetryFailedDeliveriesResponse(requeued_count=len(ids), delivery_ids=ids[:1000])
        raise AssertionError("unreachable")

    # --- routing configuration -------------------------------------------------------------------------

    async def GetRoutingConfig(
        self, request: alert_pb2.GetRoutingConfigRequest, context: Context
    ) -> alert_pb2.RoutingConfig:
        return self._routing_config()

    async def ReloadRoutingConfig(
        self, request: alert_pb2.ReloadRoutingConfigRequest, context: Context
    ) -> alert_pb2.RoutingConfig:
        async with _errors(context):
            try:
                config = self.routing.reload(
                    self.clock(), request.yaml or None, validate_only=request.validate_only
                )
            except RoutingConfigError as exc:
                raise status_error(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"invalid routing configuration: {exc}",
                    field_violations=[("yaml", f"{where}: {why}") for where, why in exc.problems],
                    reason="INVALID_ROUTING_CONFIG",
                ) from exc
            if request.validate_only:
                return _routing_proto(config, "", None)
            return self._routing_config()
        raise AssertionError("unreachable")

    def _routing_config(self) -> alert_pb2.RoutingConfig:
        source = self.routing
        loaded = source.loaded
        message = (
            _routing_proto(loaded.config, loaded.source_path, loaded.load_time)
            if loaded is not None
            else alert_pb2.RoutingConfig(source_path=str(source.path or ""))
        )
        message.last_reload_error = source.last_reload_error
        if source.last_reload_time is not None:
            message.last_reload_time.FromDatetime(source.last_reload_time)
        return message


def _routing_proto(
    config: RoutingConfig, source_path: str, load_time: datetime | None
) -> alert_pb2.RoutingConfig:
    types = {
        "webhook": alert_pb2.RECEIVER_TYPE_WEBHOOK,
        "slack": alert_pb2.RECEIVER_TYPE_SLACK,
        "email": alert_pb2.RECEIVER_TYPE_EMAIL,
        "kafka": alert_pb2.RECEIVER_TYPE_KAFKA,
    }
    message = alert_pb2.RoutingConfig(
        config_hash=config.config_hash,
        yaml=config.redacted_text(),
        source_path=source_path,
        receivers=[
            alert_pb2.ReceiverInfo(name=r.name, type=types[r.type], target=r.target)
            for r in config.receivers.values()
        ],
        route_count=config.root.count(),
        inhibit_rule_count=len(config.inhibit_rules),
        mute_time_interval_names=sorted(config.mute_time_intervals),
        escalation_policy_names=sorted(config.escalation_policies),
    )
    if load_time is not None:
        message.load_time.FromDatetime(load_time)
    return message


# --- errors ---------------------------------------------------------------------------------------------


def _errors(context: Context) -> errors_as_status:
    """Maps domain and driver errors raised inside an RPC body to statuses with details."""
    return errors_as_status(context, _status_of)


def _status_of(exc: BaseException) -> StatusError | None:
    if isinstance(exc, AlertNotFound):
        return status_error(
            grpc.StatusCode.NOT_FOUND, f"alert {exc} does not exist", reason="ALERT_NOT_FOUND"
        )
    if isinstance(exc, SilenceNotFound):
        return status_error(
            grpc.StatusCode.NOT_FOUND, f"silence {exc} does not exist", reason="SILENCE_NOT_FOUND"
        )
    if isinstance(exc, AlertAlreadyResolved):
        return status_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"alert {exc} is resolved and cannot be acknowledged",
            reason="ALERT_RESOLVED",
        )
    if isinstance(exc, SilenceExpired):
        return status_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"silence {exc} has expired and cannot be updated; create a new one",
            reason="SILENCE_EXPIRED",
        )
    if isinstance(exc, DATABASE_DOWN):
        return status_error(
            grpc.StatusCode.UNAVAILABLE, "the database is unavailable", retry_delay_s=RETRY_DELAY_S
        )
    return None


# --- validation and translation -------------------------------------------------------------------------


def _subject() -> str:
    principal = current_principal()
    return principal.subject if principal is not None else "anonymous"


def _uuid(value: str, field: str) -> uuid.UUID:
    if not value:
        raise_for_violations([(field, "required")])
    try:
        return uuid.UUID(value)
    except ValueError:
        raise_for_violations([(field, "must be a UUID")])
        raise AssertionError("unreachable") from None


def _time(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _enum_violations(value: int, known: Iterable[int], field: str) -> list[tuple[str, str]]:
    return [] if value in known else [(field, f"unknown value {value}")]


def _length_violations(value: str, most: int, field: str) -> list[tuple[str, str]]:
    return [(field, f"at most {most} characters")] if len(value) > most else []


def _comment_violations(comment: str, field: str) -> list[tuple[str, str]]:
    if not comment.strip():
        return [(field, "required: say why the silence exists")]
    return _length_violations(comment, MAX_COMMENT, field)


def _label_violations(labels: Mapping[str, str], field: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if len(labels) > MAX_LABELS:
        problems.append((field, f"at most {MAX_LABELS} labels"))
    for name, value in sorted(labels.items()):
        if not LABEL_NAME.match(name):
            problems.append(
                (f"{field}[{name!r}]", "label names are a letter or _, then letters, digits or _")
            )
        elif len(value) > MAX_LABEL_VALUE:
            problems.append((f"{field}[{name!r}]", f"at most {MAX_LABEL_VALUE} characters"))
    return problems


def _raise_input(request: alert_pb2.RaiseAlertRequest) -> RaiseInput:
    problems: list[tuple[str, str]] = []
    if not request.client_alert_id:
        problems.append(("client_alert_id", "required"))
    else:
        problems += _length_violations(request.client_alert_id, MAX_CLIENT_ALERT_ID, "client_alert_id")
    labels = dict(request.labels)
    if not labels.get("kind"):
        problems.append(("labels", "must include a non-empty `kind` label"))
    if "severity" in labels:
        problems.append(("labels['severity']", "set the typed `severity` field instead of a label"))
    problems += _label_violations(labels, "labels")
    for name, value in request.annotations.items():
        problems += _length_violations(value, 16 * MAX_LABEL_VALUE, f"annotations[{name!r}]")
    if request.severity == common_pb2.SEVERITY_UNSPECIFIED:
        problems.append(("severity", "required"))
    else:
        problems += _enum_violations(request.severity, common_pb2.Severity.values(), "severity")
    start = _time(request.start_time) if request.HasField("start_time") else None
    end = _time(request.end_time) if request.HasField("end_time") else None
    if start is not None and end is not None and end < start:
        problems.append(("end_time", "must not be before start_time"))
    raise_for_violations(problems)
    return RaiseInput(
        client_alert_id=request.client_alert_id,
        labels=labels,
        annotations=dict(request.annotations),
        severity=request.severity,
        source=request.source,
        start_time=start,
        end_time=end,
        evidence=request.evidence.SerializeToString(deterministic=True)
        if request.HasField("evidence")
        else b"",
    )


def _triples(matchers: Iterable[alert_pb2.LabelMatcher]) -> list[tuple[str, str, int]]:
    return [(m.name, m.value, m.type) for m in matchers]


def _matchers(matchers: Iterable[alert_pb2.LabelMatcher]) -> list[Matcher]:
    return [Matcher.create(m.name, m.value, MatchType(m.type or MatchType.EQUAL)) for m in matchers]


def _silence_matcher_violations(
    matchers: Iterable[alert_pb2.LabelMatcher], field: str
) -> list[tuple[str, str]]:
    given = list(matchers)
    if not given:
        return [(field, "at least one matcher is required")]
    problems = matcher_violations(_triples(given), field)
    if not problems and all(m.matches({}) for m in _matchers(given)):
        problems.append(
            (field, "at least one matcher must not match the empty string (it would silence everything)")
        )
    return problems


def _alert_filter(request: alert_pb2.ListAlertsRequest) -> AlertFilter:
    problems: list[tuple[str, str]] = []
    for i, status in enumerate(request.statuses):
        problems += _enum_violations(status, common_pb2.AlertStatus.values(), f"statuses[{i}]")
    problems += _enum_violations(request.min_severity, common_pb2.Severity.values(), "min_severity")
    problems += matcher_violations(_triples(request.matchers), "matchers")
    problems += _enum_violations(request.order, common_pb2.SortOrder.values(), "order")
    problems += _enum_violations(request.view, alert_pb2.AlertView.values(), "view")
    start = end = None
    if request.HasField("time_range"):
        if request.time_range.HasField("start_time"):
            start = _time(request.time_range.start_time)
        if request.time_range.HasField("end_time"):
            end = _time(request.time_range.end_time)
        if start is not None and end is not None and end <= start:
            problems.append(("time_range.end_time", "must be after start_time"))
    raise_for_violations(problems)
    return AlertFilter(
        statuses=sorted({s for s in request.statuses if s}),
        min_severity=request.min_severity,
        matchers=_matchers(request.matchers),
        start_time=start,
        end_time=end,
        include_suppressed=request.include_suppressed,
        newest_first=request.order != common_pb2.SORT_ORDER_OLDEST_FIRST,
    )


@dataclass(frozen=True, slots=True)
class _WatchFilter:
    matchers: list[Matcher]
    statuses: frozenset[int]
    min_severity: int
    include_suppressed: bool

    def accepts(self, alert: alert_pb2.Alert) -> bool:
        if self.statuses and alert.status not in self.statuses:
            return False
        if alert.severity < self.min_severity:
            return False
        if not self.include_suppressed and (alert.silenced or alert.inhibited or alert.muted):
            return False
        labels = {**alert.labels, "severity": SEVERITY_NAMES.get(alert.severity, "")}
        return all_match(self.matchers, labels)


def _statistics_proto(stats: Statistics, start: datetime, end: datetime) -> alert_pb2.AlertStatistics:
    message = alert_pb2.AlertStatistics(
        alerts_total=stats.alerts_total,
        occurrences_total=stats.occurrences_total,
        deduplicated_total=stats.deduplicated_total,
        by_severity=[alert_pb2.SeverityCount(severity=s, count=n) for s, n in stats.by_severity],  # type: ignore[arg-type]
        by_status=[alert_pb2.StatusCount(status=s, count=n) for s, n in stats.by_status],  # type: ignore[arg-type]
        by_kind=[alert_pb2.KindCount(kind=k, count=n) for k, n in stats.by_kind],
        by_receiver=[
            alert_pb2.ReceiverStatistics(
                receiver=r["receiver"],
                receiver_type=r["receiver_type"],
                deliveries_total=r["total"],
                deliveries_succeeded=r["succeeded"],
                deliveries_failed=r["failed"],
                deliveries_pending=r["pending"],
                attempts_total=r["attempts"],
                latency_p50_ms=r["p50"] or 0.0,
                latency_p99_ms=r["p99"] or 0.0,
            )
            for r in stats.by_receiver
        ],
    )
    message.time_range.start_time.FromDatetime(start)
    message.time_range.end_time.FromDatetime(end)
    if stats.mean_ack_s is not None:
        message.mean_time_to_acknowledge.FromNanoseconds(round(stats.mean_ack_s * 1e9))
    if stats.mean_resolve_s is not None:
        message.mean_time_to_resolve.FromNanoseconds(round(stats.mean_resolve_s * 1e9))
    for bucket_start, count in stats.buckets:
        item = message.buckets.add(count=count)
        item.bucket_start_time.FromDatetime(bucket_start)
    return message


def _delivery_filter(alert_id: str, receiver: str, states: Iterable[int], request: Any) -> DeliveryFilter:
    problems: list[tuple[str, str]] = []
    parsed_id = _uuid(alert_id, "alert_id") if alert_id else None
    chosen = list(states)
    for i, state in enumerate(chosen):
        problems += _enum_violations(state, alert_pb2.DeliveryState.values(), f"states[{i}]")
    start = end = None
    if request.HasField("time_range"):
        if request.time_range.HasField("start_time"):
            start = _time(request.time_range.start_time)
        if request.time_range.HasField("end_time"):
            end = _time(request.time_range.end_time)
        if start is not None and end is not None and end <= start:
            problems.append(("time_range.end_time", "must be after start_time"))
    raise_for_violations(problems)
    return DeliveryFilter(parsed_id, receiver, sorted({s for s in chosen if s}), start, end)


def _page_size(size: int) -> int:
    if size < 0:
        raise_for_violations([("page_size", "must not be negative")])
    if size > MAX_PAGE_SIZE:
        raise_for_violations([("page_size", f"at most {MAX_PAGE_SIZE}")])
    return size or DEFAULT_PAGE_SIZE


def _digest(request: Any, paging_fields: Iterable[str]) -> str:
    """A digest of the request's filters, so a page token is only accepted with the same filters."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in paging_fields:
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]


def _encode_token(offset: int, digest: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "f": digest}).encode()).decode()


def _decode_token(token: str, digest: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, token_digest = data["o"], data["f"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise_for_violations([("page_token", "not a token this server issued")])
        raise AssertionError("unreachable") from None
    if token_digest != digest or not isinstance(offset, int) or offset < 0:
        raise_for_violations([("page_token", "only valid with the same filters")])
    return int(offset)
