"""Silence CRUD, states over time, and how silences hide alerts, against a real alert service."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2

from itsmesh.v1 import alert_pb2
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


def _silence(clock, matchers, *, start_in_s=0.0, hours=1.0, comment="lens cleaning, ticket 4711"):
    silence = alert_pb2.Silence(matchers=matchers, comment=comment)
    silence.start_time.FromDatetime(clock.now + timedelta(seconds=start_in_s))
    silence.end_time.FromDatetime(clock.now + timedelta(seconds=start_in_s, hours=hours))
    return alert_pb2.CreateSilenceRequest(silence=silence)


async def test_an_active_silence_marks_matching_alerts_and_hides_them_from_lists(stub, clock):
    camera = new_camera()
    offline = (await stub.RaiseAlert(raise_request(camera, kind="camera_offline"))).alert
    speeding = (await stub.RaiseAlert(raise_request(camera, kind="speeding"))).alert
    regex = alert_pb2.LabelMatcher(name="kind", value="camera_.*", type=alert_pb2.LABEL_MATCH_TYPE_REGEX)
    silence = await stub.CreateSilence(_silence(clock, [camera_matcher(camera), regex]))
    assert silence.state == alert_pb2.SILENCE_STATE_ACTIVE
    assert silence.created_by == "anonymous"
    assert silence.silenced_alert_count == 1
    silenced = await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=offline.alert_id))
    assert silenced.silenced
    assert list(silenced.silenced_by) == [silence.silence_id]
    assert not (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=speeding.alert_id))).silenced
    listed = await stub.ListAlerts(alert_pb2.ListAlertsRequest(matchers=[camera_matcher(camera)]))
    assert [a.alert_id for a in listed.alerts] == [speeding.alert_id]
    everything = await stub.ListAlerts(
        alert_pb2.ListAlertsRequest(matchers=[camera_matcher(camera)], include_suppressed=True)
    )
    assert everything.total_size == 2


async def test_a_silence_is_pending_then_active_then_expired(stub, clock):
    camera = new_camera()
    alert = (await stub.RaiseAlert(raise_request(camera))).alert
    silence = await stub.CreateSilence(_silence(clock, [camera_matcher(camera)], start_in_s=60, hours=1))
    assert silence.state == alert_pb2.SILENCE_STATE_PENDING
    assert not (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert.alert_id))).silenced
    clock.advance(61)
    assert (await stub.GetSilence(alert_pb2.GetSilenceRequest(silence_id=silence.silence_id))).state == (
        alert_pb2.SILENCE_STATE_ACTIVE
    )
    assert (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert.alert_id))).silenced
    clock.advance(3600)
    assert (await stub.GetSilence(alert_pb2.GetSilenceRequest(silence_id=silence.silence_id))).state == (
        alert_pb2.SILENCE_STATE_EXPIRED
    )
    assert not (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert.alert_id))).silenced


async def test_update_extends_a_silence_and_delete_expires_it(stub, clock):
    camera = new_camera()
    silence = await stub.CreateSilence(_silence(clock, [camera_matcher(camera)], hours=1))
    changed = alert_pb2.Silence(silence_id=silence.silence_id, comment="extended for the crew")
    changed.end_time.FromDatetime(clock.now + timedelta(hours=5))
    updated = await stub.UpdateSilence(
        alert_pb2.UpdateSilenceRequest(
            silence=changed, update_mask=field_mask_pb2.FieldMask(paths=["end_time", "comment"])
        )
    )
    assert updated.end_time.ToDatetime() - silence.end_time.ToDatetime() == timedelta(hours=4)
    assert updated.comment == "extended for the crew"
    assert updated.matchers == silence.matchers  # not in the mask
    await stub.DeleteSilence(alert_pb2.DeleteSilenceRequest(silence_id=silence.silence_id))
    await stub.DeleteSilence(alert_pb2.DeleteSilenceRequest(silence_id=silence.silence_id))  # no-op
    expired = await stub.GetSilence(alert_pb2.GetSilenceRequest(silence_id=silence.silence_id))
    assert expired.state == alert_pb2.SILENCE_STATE_EXPIRED
    error = await expect_rpc_error(
        stub.UpdateSilence(
            alert_pb2.UpdateSilenceRequest(
                silence=changed, update_mask=field_mask_pb2.FieldMask(paths=["end_time"])
            )
        )
    )
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "SILENCE_EXPIRED"


async def test_list_silences_filters_by_state_newest_first_and_pages(stub, clock):
    camera = new_camera()
    active = await stub.CreateSilence(_silence(clock, [camera_matcher(camera)]))
    clock.advance(1)
    pending = await stub.CreateSilence(_silence(clock, [camera_matcher(camera)], start_in_s=600))
    listed = await stub.ListSilences(
        alert_pb2.ListSilencesRequest(
            states=[alert_pb2.SILENCE_STATE_PENDING, alert_pb2.SILENCE_STATE_ACTIVE]
        )
    )
    ids = [s.silence_id for s in listed.silences]
    assert ids.index(pending.silence_id) < ids.index(active.silence_id)
    only_pending = await stub.ListSilences(
        alert_pb2.ListSilencesRequest(states=[alert_pb2.SILENCE_STATE_PENDING])
    )
    assert all(s.state == alert_pb2.SILENCE_STATE_PENDING for s in only_pending.silences)
    first = await stub.ListSilences(alert_pb2.ListSilencesRequest(page_size=1))
    assert len(first.silences) == 1
    second = await stub.ListSilences(
        alert_pb2.ListSilencesRequest(page_size=1, page_token=first.next_page_token)
    )
    assert second.silences[0].silence_id != first.silences[0].silence_id


async def test_silence_validation_names_each_field(stub, clock):
    empty = await expect_rpc_error(
        stub.CreateSilence(alert_pb2.CreateSilenceRequest(silence=alert_pb2.Silence()))
    )
    assert {name for name, _ in empty.field_violations} == {
        "silence.matchers",
        "silence.end_time",
        "silence.comment",
    }
    catch_all = alert_pb2.LabelMatcher(name="kind", value=".*", type=alert_pb2.LABEL_MATCH_TYPE_REGEX)
    broad = await expect_rpc_error(stub.CreateSilence(_silence(clock, [catch_all])))
    assert broad.field_violations[0][0] == "silence.matchers"
    assert "empty string" in broad.field_violations[0][1]
    bad_regex = alert_pb2.LabelMatcher(name="kind", value="cam(", type=alert_pb2.LABEL_MATCH_TYPE_REGEX)
    regex = await expect_rpc_error(stub.CreateSilence(_silence(clock, [bad_regex])))
    assert regex.field_violations[0][0] == "silence.matchers[0].value"
    backwards = _silence(clock, [camera_matcher("c")])
    backwards.silence.end_time.FromDatetime(clock.now - timedelta(minutes=1))
    window = await expect_rpc_error(stub.CreateSilence(backwards))
    assert window.field_violations == (("silence.end_time", "must be after start_time"),)
    no_mask = await expect_rpc_error(
        stub.UpdateSilence(alert_pb2.UpdateSilenceRequest(silence=alert_pb2.Silence(silence_id="x")))
    )
    assert no_mask.field_violations[0][0] == "silence.silence_id"
    missing = await expect_rpc_error(
        stub.GetSilence(alert_pb2.GetSilenceRequest(silence_id="00000000-0000-0000-0000-000000000000"))
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
