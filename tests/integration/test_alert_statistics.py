"""GetAlertStatistics over a time range: totals, repeats, breakdowns, mean times, buckets, receivers."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from itsmesh.v1 import alert_pb2, common_pb2
from mesh.status import status_details
from tests.integration.alert_host import MovableClock, alert_host, alert_stub, new_camera, raise_request
from tests.integration.alert_receiver import webhook_receiver

pytestmark = pytest.mark.integration


async def test_statistics_count_alerts_repeats_and_deliveries_in_the_range(infra):
    clock = MovableClock()
    kind = f"stats_{uuid.uuid4().hex[:8]}"
    async with (
        webhook_receiver() as hook,
        alert_host(infra, clock, delivery_poll_interval_s=0.02) as host,
        alert_stub(host) as stub,
    ):
        config = {
            "receivers": [{"name": "ops", "webhook": {"url": hook.url()}}],
            "route": {"receiver": "ops", "group_wait": 0, "group_interval": "1m", "group_by": ["camera_id"]},
        }
        await stub.ReloadRoutingConfig(alert_pb2.ReloadRoutingConfigRequest(yaml=json.dumps(config)))
        start = clock.now
        first = (await stub.RaiseAlert(raise_request(new_camera(), kind=kind))).alert
        camera = new_camera()
        second = (
            await stub.RaiseAlert(raise_request(camera, kind=kind, severity=common_pb2.SEVERITY_LOW))
        ).alert
        await stub.RaiseAlert(raise_request(camera, kind=kind, severity=common_pb2.SEVERITY_LOW))  # a repeat
        for alert_id in (first.alert_id, second.alert_id):  # notified before the clock moves on
            deadline = asyncio.get_running_loop().time() + 10
            while not (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert_id))).deliveries:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)
        clock.advance(60)
        await stub.AcknowledgeAlert(alert_pb2.AcknowledgeAlertRequest(alert_id=first.alert_id))
        clock.advance(60)
        await stub.ResolveAlert(alert_pb2.ResolveAlertRequest(alert_id=second.alert_id))
        # two firing notifications and one resolution, each recorded as succeeded
        for alert_id, expected in ((first.alert_id, 1), (second.alert_id, 2)):
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                found = (await stub.GetAlert(alert_pb2.GetAlertRequest(alert_id=alert_id))).deliveries
                if sum(d.state == alert_pb2.DELIVERY_STATE_SUCCEEDED for d in found) == expected:
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.02)

        request = alert_pb2.GetAlertStatisticsRequest(
            matchers=[alert_pb2.LabelMatcher(name="kind", value=kind)],
            bucket=duration_pb2.Duration(seconds=60),
        )
        request.time_range.start_time.FromDatetime(start)
        request.time_range.end_time.FromDatetime(start + timedelta(hours=1))
        stats = await stub.GetAlertStatistics(request)
        assert stats.alerts_total == 2
        assert stats.occurrences_total == 3
        assert stats.deduplicated_total == 1
        assert {c.severity: c.count for c in stats.by_severity} == {
            common_pb2.SEVERITY_HIGH: 1,
            common_pb2.SEVERITY_LOW: 1,
        }
        assert {c.status: c.count for c in stats.by_status} == {
            common_pb2.ALERT_STATUS_ACKNOWLEDGED: 1,
            common_pb2.ALERT_STATUS_RESOLVED: 1,
        }
        assert [(k.kind, k.count) for k in stats.by_kind] == [(kind, 2)]
        assert stats.mean_time_to_acknowledge.seconds == 60
        assert stats.mean_time_to_resolve.seconds == 120
        assert [b.count for b in stats.buckets] == [2]
        [ops] = stats.by_receiver
        assert (ops.receiver, ops.deliveries_total, ops.attempts_total) == ("ops", 3, 3)
        assert ops.deliveries_succeeded == 3
        assert ops.latency_p99_ms >= ops.latency_p50_ms > 0

        missing = alert_pb2.GetAlertStatisticsRequest()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetAlertStatistics(missing)
        assert status_details(caught.value).field_violations[0][0] == "time_range.start_time"
