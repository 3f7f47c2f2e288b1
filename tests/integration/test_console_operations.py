"""The console's dashboard routes against real streaming and alert services through the mesh, with auth."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2

from itsmesh.v1 import alert_pb2, alert_pb2_grpc, common_pb2, streaming_pb2, streaming_pb2_grpc
from mesh.registry import open_redis
from services.streaming.thumbnails import ThumbnailStore
from tests.integration.auth_stack import bearer
from tests.integration.console_stack import ConsoleStack, console_stack, eventually
from tests.integration.streaming_host import camera

pytestmark = pytest.mark.integration

JPEG = b"\xff\xd8\xff\xe0" + b"console-thumbnail" + b"\xff\xd9"


async def register_camera(stack: ConsoleStack, token: str) -> str:
    camera_id = f"cam-{uuid.uuid4().hex[:10]}"
    address = f"127.0.0.1:{stack.services['streaming'].grpc_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        await streaming_pb2_grpc.StreamingServiceStub(channel).RegisterCamera(
            streaming_pb2.RegisterCameraRequest(camera=camera(camera_id)), metadata=bearer(token), timeout=10
        )
    return camera_id


async def raise_alert(stack: ConsoleStack, token: str, camera_id: str) -> alert_pb2.Alert:
    address = f"127.0.0.1:{stack.services['alert'].grpc_port}"
    request = alert_pb2.RaiseAlertRequest(
        client_alert_id=uuid.uuid4().hex,
        labels={"kind": "camera_offline", "camera_id": camera_id},
        annotations={"summary": f"camera {camera_id} offline"},
        severity=common_pb2.SEVERITY_CRITICAL,
        source="tests",
    )
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await alert_pb2_grpc.AlertServiceStub(channel).RaiseAlert(
            request, metadata=bearer(token), timeout=10
        )
    return answer.alert


async def test_thumbnails_come_from_streaming_with_the_callers_token(infra):
    async with console_stack(infra, services=("streaming",)) as stack:
        operator, viewer = await stack.token("operator"), await stack.token("viewer")
        camera_id = await register_camera(stack, operator)
        redis = open_redis(infra.redis_url)
        try:
            stamp = timestamp_pb2.Timestamp()
            stamp.GetCurrentTime()
            frame = streaming_pb2.LatestFrame(camera_id=camera_id, sequence=7, capture_time=stamp, jpeg=JPEG)
            await ThumbnailStore(redis).put(frame)
        finally:
            await redis.aclose()
        async with stack.client(viewer) as client:

            async def listed():
                response = await client.get("/api/cameras", params={"page_size": 1000})
                return response if response.status_code == 200 else None

            response = await eventually(listed, what="camera list through the mesh")
            ids = [c["camera_id"] for c in response.json()["cameras"]]
            assert camera_id in ids
            assert response.json()["registered_count"] >= 1
            assert response.headers["cache-control"] == "no-cache"

            thumbnail = await client.get(f"/api/cameras/{camera_id}/thumbnail")
            assert thumbnail.status_code == 200
            assert thumbnail.headers["content-type"] == "image/jpeg"
            assert thumbnail.content == JPEG
            assert thumbnail.headers["x-frame-sequence"] == "7"

            missing = await client.get("/api/cameras/cam-never-seen/thumbnail")
            assert missing.status_code == 404
            assert missing.json()["reason"] == "NO_RECENT_FRAME"
        async with stack.client() as anonymous:
            refused = await anonymous.get(f"/api/cameras/{camera_id}/thumbnail")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
        async with stack.client(await stack.token("device")) as device:
            assert (await device.get(f"/api/cameras/{camera_id}/thumbnail")).status_code == 403


async def test_the_alert_feed_lists_open_alerts_and_only_an_operator_acknowledges(infra):
    async with console_stack(infra, services=("alert",)) as stack:
        operator, viewer = await stack.token("operator"), await stack.token("viewer")
        alert = await raise_alert(stack, operator, f"cam-{uuid.uuid4().hex[:8]}")
        async with stack.client(viewer) as client:

            async def feed():
                response = await client.get("/api/alerts", params={"limit": 1000})
                return response if response.status_code == 200 else None

            listed = (await eventually(feed, what="alert feed through the mesh")).json()
            mine = next(a for a in listed["alerts"] if a["alert_id"] == alert.alert_id)
            assert mine["status"] == "ALERT_STATUS_FIRING"
            assert mine["severity"] == "SEVERITY_CRITICAL"
            assert listed["alerts"][0]["severity"] == "SEVERITY_CRITICAL", "most severe first"

            refused = await client.post(f"/api/alerts/{alert.alert_id}/acknowledge", json={"comment": "x"})
            assert refused.status_code == 403
        async with stack.client(operator) as client:
            acked = await client.post(f"/api/alerts/{alert.alert_id}/acknowledge", json={"comment": "on it"})
            assert acked.status_code == 200, acked.text
            assert acked.json()["status"] == "ALERT_STATUS_ACKNOWLEDGED"
            assert acked.json()["acknowledge_comment"] == "on it"
            missing = await client.post(f"/api/alerts/{uuid.uuid4()}/acknowledge", json={})
            assert missing.status_code == 404
            assert missing.json()["error"] == "not_found"
            bad = await client.get("/api/alerts", params={"status": "sleeping"})
            assert bad.status_code == 400
            assert bad.json()["field"] == "status.0"


async def test_the_status_vector_counts_cameras_and_alerts_and_summarises_each_service(infra):
    async with console_stack(infra, services=("streaming", "alert")) as stack:
        operator, viewer = await stack.token("operator"), await stack.token("viewer")
        await register_camera(stack, operator)
        await raise_alert(stack, operator, f"cam-{uuid.uuid4().hex[:8]}")
        async with stack.client(viewer) as client:

            async def counted():
                vector = (await client.get("/api/status")).json()
                services = vector.get("services", {})
                ready = (
                    vector["overview"]["firing_alerts"]
                    and vector["overview"]["cameras_registered"]
                    and services.get("streaming", {}).get("rps") is not None
                )
                return vector if ready else None

            vector = await eventually(counted, timeout=20, what="counts and per-service rates")
        assert vector["overview"]["open_alerts"] >= vector["overview"]["firing_alerts"] >= 1
        assert vector["overview"]["cameras_streaming"] == 0
        assert vector["sessions"]["camera_streams"] == 0
        assert vector["traffic"]["frames_per_second"] == 0
        streaming = vector["services"]["streaming"]
        assert streaming["status"] == "healthy"
        assert streaming["instances_up"] == streaming["instances_total"] >= 1
        # The console itself calls ListCameraStatuses every second with its service token, so streaming
        # serves traffic and its p99 is measured from its own latency histogram.
        assert streaming["rps"] > 0
        # One instance: the service row is that instance's figures (errors depend on the machine's load:
        # a count call that overruns its deadline under load is an error on the server's side too).
        (only,) = [c for c in vector["components"] if c["type"] == "streaming"]
        assert streaming["rps"] == only["details"]["rps"]
        assert streaming["error_rate"] == pytest.approx(only["details"]["error_rate"], abs=1e-4)
        assert 0 <= streaming["error_rate"] <= 1
        assert streaming["latency_p99_ms"] is not None
        assert streaming["latency_p99_ms"] > 0
