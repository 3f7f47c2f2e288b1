"""RaiseAlert dedup and idempotency, acknowledge, resolve, GetAlert and ListAlerts against a real alert
service and PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from itsmesh.v1 import alert_pb2, common_pb2
from tests.integration.alert_host import (
    MovableClock,
    alert_host,
    alert_stub,
    camera_matcher,
    new_camera,
    raise_request,
)
from tests.integration.auth_stack import expect_rpc_error

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clock():
    return MovableClock()


@pytest.fixture(scope="module")
async def host(infra, clock):
    async with alert_host(infra, clock) as running:
        yield running


@pytest.fixture
async def stub(host):
    async with alert_stub(host) as client:
        yield client


async def test_a_repeat_with_the_same_labels_updates_count_and_last_seen_instead_of_creating(stub, clock):
    camera = new_camera()
    first = await stub.RaiseAlert(raise_request(camera))
    assert first.outcome == alert_pb2.RAISE_ALERT_OUTCOME_CREATED
    assert first.alert.status == common_pb2.ALERT_STATUS_FIRING
    assert first.alert.occurrence_count == 1
    clock.advance(30)
    second = await stub.RaiseAlert(
        raise_request(camera, severity=common_pb2.SEVERITY_CRITICAL, annotations={"summary": "still down"})
    )
    assert second.outcome == alert_pb2.RAISE_ALERT_OUTCOME_DEDUPLICATED
    assert second.alert.alert_id == first.alert.alert_id
    assert second.alert.occurrence_count == 2
    assert second.alert.last_seen_time.ToDatetime() > first.alert.last_seen_time.ToDatetime()
    assert second.alert.first_seen_time == first.alert.first_seen_time
    assert second.alert.severity == common_pb2.SEVERITY_CRITICAL
    assert second.alert.annotations["summary"] == "still down"
    third = await stub.RaiseAlert(raise_request(camera, severity=common_pb2.SEVERITY_LOW))
    assert third.alert.severity == common_pb2.SEVERITY_CRITICAL  # the highest seen while firing


async def test_replaying_a_client_alert_id_changes_nothing(stub):
    request = raise_request(new_camera())
    first = await stub.RaiseAlert(request)
    replay = await stub.RaiseAlert(request)
    assert replay.outcome == alert_pb2.RAISE_ALERT_OUTCOME_REPLAYED
    assert replay.alert.alert_id == first.alert.alert_id
    assert replay.alert.occurrence_count == 1


async def test_concurrent_raises_of_one_fingerprint_make_one_alert(stub):
    camera = new_camera()
    responses = await asyncio.gather(*(stub.RaiseAlert(raise_request(camera)) for _ in range(20)))
    assert len({r.alert.alert_id for r in responses}) == 1
    latest = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=responses[0].alert.alert_id))
    assert latest.occurrence_count == 20


async def test_different_labels_make_different_alerts(stub):
    camera = new_camera()
    offline = await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))
    degraded = await stub.RaiseAlert(raise_request(camera, kind="camera_quality_degraded"))
    assert offline.alert.alert_id != degraded.alert.alert_id
    assert offline.alert.fingerprint != degraded.alert.fingerprint


async def test_an_end_time_in_the_past_resolves_and_a_later_raise_opens_a_new_alert(stub, clock):
    camera = new_camera()
    opened = await stub.RaiseAlert(raise_request(camera))
    ended = raise_request(camera)
    ended.end_time.FromDatetime(clock.now)
    resolved = await stub.RaiseAlert(ended)
    assert resolved.outcome == alert_pb2.RAISE_ALERT_OUTCOME_RESOLVED
    assert resolved.alert.alert_id == opened.alert.alert_id
    assert resolved.alert.status == common_pb2.ALERT_STATUS_RESOLVED
    assert resolved.alert.resolved_by == "auto"
    reopened = await stub.RaiseAlert(raise_request(camera))
    assert reopened.outcome == alert_pb2.RAISE_ALERT_OUTCOME_CREATED
    assert reopened.alert.alert_id != opened.alert.alert_id


async def test_acknowledge_then_resolve(stub, clock):
    raised = await stub.RaiseAlert(raise_request(new_camera()))
    alert_id = raised.alert.alert_id
    clock.advance(5)
    acked = await stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=alert_id, comment="crew"))
    assert acked.status == common_pb2.ALERT_STATUS_ACKNOWLEDGED
    assert acked.acknowledged_by == "anonymous"  # auth is off here; the token subject otherwise
    assert acked.acknowledge_comment == "crew"
    again = await stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=alert_id, comment="other"))
    assert again.acknowledge_comment == "crew"  # unchanged
    clock.advance(5)
    resolved = await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=alert_id, comment="replaced"))
    assert resolved.status == common_pb2.ALERT_STATUS_RESOLVED
    assert resolved.resolve_comment == "replaced"
    twice = await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=alert_id, comment="x"))
    assert twice.resolve_comment == "replaced"
    late = await expect_rpc_error(stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=alert_id)))
    assert late.code == grpc.StatusCode.FAILED_PRECONDITION
    assert late.reason == "ALERT_RESOLVED"


async def test_get_alert_returns_evidence_and_an_empty_delivery_history(stub):
    request = raise_request(new_camera())
    request.evidence.links.add(title="frame 12", url="http://example/frame/12")
    raised = await stub.RaiseAlert(request)
    alert = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=raised.alert.alert_id))
    assert alert.evidence.links[0].title == "frame 12"
    assert list(alert.deliveries) == []
    assert alert.labels["camera_id"] == request.labels["camera_id"]


async def test_unknown_alert_is_not_found_and_a_bad_id_names_the_field(stub):
    missing = await expect_rpc_error(
        stub.GetAlert(alert_pb2.GetAlertRequest(alert_id="00000000-0000-0000-0000-000000000000"))
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    bad = await expect_rpc_error(stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id="nope")))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.field_violations == (("alert_id", "must be a UUID"),)


async def test_raise_validation_names_every_bad_field(stub):
    request = alert_pb2.RaiseAlertRequest(labels={"camera_id": "c", "9x": "y", "severity": "high"})
    error = await expect_rpc_error(stub.RaiseAlert(request))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    fields = {name for name, _ in error.field_violations}
    assert fields == {"client_alert_id", "labels", "labels['severity']", "labels['9x']", "severity"}


async def test_list_alerts_filters_and_pages(stub, clock):
    camera = new_camera()
    ids = []
    for kind in ("a_kind", "b_kind", "c_kind", "d_kind", "e_kind"):
        clock.advance(1)
        ids.append((await stub.RaiseAlert(raise_request(camera, kind=kind))).alert.alert_id)
    await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=ids[0]))
    base = alert_pb2.ListAlertsRequest(matchers=[camera_matcher(camera)], page_size=2)
    pages, token = [], ""
    while True:
        request = alert_pb2.ListAlertsRequest()
        request.CopyFrom(base)
        request.page_token = token
        page = await stub.ListAlerts(request)
        assert page.total_size == 5
        pages.append([a.alert_id for a in page.alerts])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == list(reversed(ids))  # newest first
    firing = await stub.ListAlerts(
        alert_pb2.ListAlertsRequest(
            matchers=[camera_matcher(camera)],
            statuses=[common_pb2.ALERT_STATUS_FIRING],
            order=common_pb2.SORT_ORDER_OLDEST_FIRST,
        )
    )
    assert [a.alert_id for a in firing.alerts] == ids[1:]
    regex = await stub.ListAlerts(
        alert_pb2.ListAlertsRequest(
            matchers=[
                camera_matcher(camera),
                alert_pb2.LabelMatcher(name="kind", value="[bc]_.*", type=alert_pb2.LABEL_MATCH_TYPE_REGEX),
                alert_pb2.LabelMatcher(name="severity", value="high"),
            ]
        )
    )
    assert sorted(a.alert_id for a in regex.alerts) == sorted(ids[1:3])
    severe = await stub.ListAlerts(
        alert_pb2.ListAlertsRequest(
            matchers=[camera_matcher(camera)], min_severity=common_pb2.SEVERITY_CRITICAL
        )
    )
    assert severe.total_size == 0


async def test_a_page_token_only_works_with_the_same_filters(stub):
    camera = new_camera()
    for kind in ("x1", "x2"):
        await stub.RaiseAlert(raise_request(camera, kind=kind))
    first = await stub.ListAlerts(alert_pb2.ListAlertsRequest(matchers=[camera_matcher(camera)], page_size=1))
    error = await expect_rpc_error(
        stub.ListAlerts(alert_pb2.ListAlertsRequest(page_token=first.next_page_token))
    )
    assert error.field_violations[0][0] == "page_token"
    bad_regex = await expect_rpc_error(
        stub.ListAlerts(
            alert_pb2.ListAlertsRequest(
                matchers=[
                    alert_pb2.LabelMatcher(name="kind", value="(", type=alert_pb2.LABEL_MATCH_TYPE_REGEX)
                ]
            )
        )
    )
    assert bad_regex.field_violations[0][0] == "matchers[0].value"
