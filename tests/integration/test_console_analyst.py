"""The analyst REST façade against a real analytics service through the mesh, with real tokens."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.console_stack import console_stack, eventually

pytestmark = pytest.mark.integration

ROUTES = (
    "/api/analytics/metrics",
    "/api/analytics/metrics/export",
    "/api/analytics/passages",
    "/api/analytics/violations",
    "/api/analytics/anomalies",
)


def last_hour(**extra: object) -> dict[str, object]:
    end = datetime.now(UTC).replace(microsecond=0)
    return {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat(), **extra}


async def test_each_route_needs_a_token_and_its_own_permission(infra):
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    async with console_stack(infra, services=("analytics",)) as stack:
        async with stack.client() as anonymous:
            for route in ROUTES:
                response = await anonymous.get(route, params=last_hour(camera_id=camera))
                assert response.status_code == 401, route
                assert response.json()["error"] == "unauthenticated"
        async with stack.client(await stack.token("viewer")) as viewer:
            # A viewer may read metrics (metrics:read) but not passages, violations, anomalies or exports.
            for route in ROUTES[1:]:
                response = await viewer.get(route, params=last_hour(camera_id=camera))
                assert response.status_code == 403, route
                assert response.json()["error"] == "permission_denied"

            async def metrics():
                response = await viewer.get(ROUTES[0], params=last_hour(camera_id=camera, bucket_s=60))
                return response if response.status_code != 503 else None  # until discovery lists analytics

            response = await eventually(metrics, what="analytics reachable through the mesh")
            assert response.status_code == 200, response.text
            assert response.json().get("buckets", []) == []


async def test_the_callers_token_is_what_analytics_sees(infra, tmp_path):
    # No service credentials in this console's data dir: a call it made on its own would carry no token and
    # analytics (which requires one) would refuse it; an answer proves the caller's token was forwarded.
    async with (
        console_stack(infra, services=("analytics",), data_dir=tmp_path) as stack,
        stack.client(await stack.token("analyst")) as analyst,
    ):

        async def passages():
            response = await analyst.get("/api/analytics/passages", params=last_hour())
            return response if response.status_code != 503 else None

        response = await eventually(passages, what="analytics reachable through the mesh")
        assert response.status_code == 200, response.text
        assert isinstance(response.json().get("passages", []), list)  # other tests' passages may be there
        for route, params in (
            ("/api/analytics/violations", last_hour(kind="speeding", min_severity="high")),
            ("/api/analytics/anomalies", last_hour(kind="flow_drop_to_zero", order="oldest")),
        ):
            answer = await analyst.get(route, params=params)
            assert answer.status_code == 200, (route, answer.text)


async def test_analytics_errors_come_back_as_4xx_naming_the_rest_parameter(infra):
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    async with (
        console_stack(infra, services=("analytics",)) as stack,
        stack.client(await stack.token("analyst")) as analyst,
    ):
        now = datetime.now(UTC).replace(microsecond=0)
        reversed_range = {
            "camera_id": camera,
            "start": now.isoformat(),
            "end": (now - timedelta(hours=1)).isoformat(),
        }

        async def rejected():
            response = await analyst.get("/api/analytics/metrics", params=reversed_range)
            return response if response.status_code != 503 else None

        response = await eventually(rejected, what="analytics reachable through the mesh")
        assert response.status_code == 400, response.text
        body = response.json()
        assert body["error"] == "invalid_argument"
        assert body["field"] == "end"
        assert body["field_violations"][0]["rpc_field"] == "time_range.end_time"

        odd_bucket = await analyst.get(
            "/api/analytics/metrics", params=last_hour(camera_id=camera, bucket_s=15)
        )
        assert odd_bucket.status_code == 400
        assert odd_bucket.json()["field"] == "bucket_s"

        no_camera = await analyst.get("/api/analytics/metrics", params=last_hour())
        assert no_camera.status_code == 400
        assert no_camera.json()["field"] == "camera_id"

        # Checked by the console before any call: enum names and time formats.
        unknown_kind = await analyst.get("/api/analytics/violations", params=last_hour(kind="jaywalking"))
        assert unknown_kind.status_code == 400
        assert unknown_kind.json()["field"] == "kind"
        assert "speeding" in unknown_kind.json()["field_violations"][0]["description"]
        bad_time = await analyst.get("/api/analytics/passages", params={"start": "yesterday"})
        assert bad_time.status_code == 400
        assert bad_time.json()["field"] == "start"

        export_error = await analyst.get("/api/analytics/metrics/export", params=reversed_range)
        assert export_error.status_code == 400, "an export that cannot start is an error, not a broken 200"
        assert export_error.json()["field"] == "end"


async def test_the_csv_export_streams_a_file_with_its_header_row(infra):
    camera = f"cam-{uuid.uuid4().hex[:8]}"
    async with (
        console_stack(infra, services=("analytics",)) as stack,
        stack.client(await stack.token("analyst")) as analyst,
    ):

        async def exported():
            response = await analyst.get(
                "/api/analytics/metrics/export", params=last_hour(camera_id=camera, bucket_s=60)
            )
            return response if response.status_code != 503 else None

        response = await eventually(exported, what="analytics reachable through the mesh")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    assert camera in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:4] == ["camera_id", "lane_id", "zone_id", "bucket_start_time"]


async def test_analytics_not_running_is_503_not_a_hang(infra):
    async with (
        console_stack(infra, services=()) as stack,
        stack.client(await stack.token("analyst")) as analyst,
    ):
        response = await analyst.get("/api/analytics/passages", params=last_hour())
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"
