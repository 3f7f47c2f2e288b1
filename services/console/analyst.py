"""The analyst REST façade: traffic metrics, passages, violations, anomalies and CSV export.

Each route checks its permission, turns the query into the analytics request and calls AnalyticsService
through the mesh with the caller's own token; a gRPC error comes back as 4xx/5xx JSON naming the field.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures, which name
# dependencies built inside the router function.
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse
from google.protobuf.message import Message

from itsmesh.v1 import analytics_pb2, common_pb2, events_pb2
from services.console.access import RouteGuard
from services.console.analyst_query import bucket, enum_value, enum_values, sort_order, time_range
from services.console.operations import as_json
from services.console.upstream import CALL_TIMEOUT_S, Upstreams, forwarded

EXPORT_TIMEOUT_S: Final = 120.0
"""Deadline of a whole CSV export."""
_NO_CACHE: Final = {"Cache-Control": "no-cache"}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"description": "a parameter is invalid; `field` names it"},
    401: {"description": "no or invalid token"},
    403: {"description": "the token lacks the route's permission"},
    501: {"description": "analytics does not implement this query"},
    503: {"description": "analytics is not reachable"},
}
_BREAKDOWN: Final = {
    "camera": analytics_pb2.METRICS_BREAKDOWN_CAMERA,
    "lane": analytics_pb2.METRICS_BREAKDOWN_LANE,
    "zone": analytics_pb2.METRICS_BREAKDOWN_ZONE,
}

CameraIds = Annotated[list[str], Query(alias="camera_id", description="Camera id; repeat for several.")]
OptionalIds = Annotated[list[str] | None, Query(description="Repeat for several; none = all.")]
Start = Annotated[datetime, Query(description="Start of the range (ISO 8601; no zone = UTC), inclusive.")]
End = Annotated[datetime | None, Query(description="End of the range, exclusive (none = now).")]
Severity = Annotated[str | None, Query(description="info, low, medium, high or critical: at least this.")]


@dataclass
class MetricsSelection:
    """Which metrics: the query parameters GetTrafficMetrics and ExportMetrics share."""

    camera_ids: CameraIds
    start: Start
    end: End = None
    bucket_s: Annotated[int | None, Query(description="Bucket in seconds: 10 … 86400, a multiple of 10.")] = (
        None
    )
    metric: Annotated[list[str] | None, Query(description="vehicle_count, mean_speed, …; none = all.")] = None
    breakdown: Annotated[
        Literal["camera", "lane", "zone"], Query(description="One series per camera, lane or zone.")
    ] = "camera"
    lane_id: OptionalIds = None
    time_zone: Annotated[str, Query(description="IANA zone aligning buckets of 1 h and more.")] = ""

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of either request."""
        return {
            "camera_ids": self.camera_ids,
            "time_range": time_range(self.start, self.end),
            "metrics": enum_values(
                analytics_pb2.TrafficMetricField, "TRAFFIC_METRIC_FIELD", self.metric, "metric"
            ),
            "breakdown": _BREAKDOWN[self.breakdown],
            "lane_ids": self.lane_id or [],
            "time_zone": self.time_zone,
            **bucket(self.bucket_s),
        }


@dataclass
class Page:
    """A time range and one page of a list, newest or oldest first."""

    start: Start
    end: End = None
    order: Annotated[Literal["newest", "oldest"], Query(description="Order by time.")] = "newest"
    page_size: Annotated[int, Query(ge=0, le=10000, description="0 = the service's default.")] = 0
    page_token: Annotated[str, Query(description="next_page_token of the previous page.")] = ""

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of a List… request."""
        return {
            "time_range": time_range(self.start, self.end),
            "order": sort_order(self.order),
            "page_size": self.page_size,
            "page_token": self.page_token,
        }


def _json(answer: Message) -> JSONResponse:
    return JSONResponse(as_json(answer), headers=_NO_CACHE)


def analyst_router(guard: RouteGuard, upstreams: Upstreams) -> APIRouter:
    """Routes under /api/analytics."""
    router = APIRouter(tags=["analytics"], responses=_ERRORS)

    @router.get("/api/analytics/metrics", summary="Traffic metrics per camera, lane or zone in time buckets")
    async def metrics(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/analytics/metrics"))],
        selection: Annotated[MetricsSelection, Depends()],
        object_class: OptionalIds = None,
        page_size: Annotated[int, Query(ge=0, le=10000, description="Buckets per page; 0 = 1000.")] = 0,
        page_token: str = "",
    ) -> JSONResponse:
        request = analytics_pb2.GetTrafficMetricsRequest(
            object_classes=enum_values(common_pb2.ObjectClass, "OBJECT_CLASS", object_class, "object_class"),
            page_size=page_size,
            page_token=page_token,
            **selection.fields(),
        )
        call = upstreams.analytics.GetTrafficMetrics(
            request, metadata=forwarded(authorization), timeout=CALL_TIMEOUT_S
        )
        return _json(await call)

    @router.get(
        "/api/analytics/metrics/export",
        summary="Traffic metrics as a CSV download (same selection as /api/analytics/metrics, no paging)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}}},
    )
    async def export(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/analytics/metrics/export"))],
        selection: Annotated[MetricsSelection, Depends()],
    ) -> StreamingResponse:
        request = analytics_pb2.ExportMetricsRequest(
            format=analytics_pb2.EXPORT_FORMAT_CSV, **selection.fields()
        )
        call = upstreams.analytics.ExportMetrics(
            request, metadata=forwarded(authorization), timeout=EXPORT_TIMEOUT_S
        )
        chunks = call.__aiter__()
        # The first chunk is read before answering: an error (bad range, no permission) becomes the HTTP
        # status instead of a broken 200 download.
        first = await anext(chunks, None)
        content_type = (first.content_type if first is not None else "") or "text/csv; charset=utf-8"
        filename = (first.filename if first is not None else "") or "metrics.csv"

        async def body() -> AsyncIterator[bytes]:
            if first is not None:
                yield first.chunk
            async for chunk in chunks:
                yield chunk.chunk

        headers = {**_NO_CACHE, "Content-Disposition": f'attachment; filename="{_safe(filename)}"'}
        return StreamingResponse(body(), media_type=content_type, headers=headers)

    @router.get("/api/analytics/passages", summary="Vehicle passages (counting-line crossings with speed)")
    async def passages(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/analytics/passages"))],
        page: Annotated[Page, Depends()],
        camera_id: OptionalIds = None,
        lane_id: OptionalIds = None,
        line_id: OptionalIds = None,
        object_class: OptionalIds = None,
        min_speed_kmh: float | None = None,
        max_speed_kmh: float | None = None,
        wrong_way_only: bool = False,
    ) -> JSONResponse:
        request = analytics_pb2.ListPassagesRequest(
            camera_ids=camera_id or [],
            lane_ids=lane_id or [],
            line_ids=line_id or [],
            object_classes=enum_values(common_pb2.ObjectClass, "OBJECT_CLASS", object_class, "object_class"),
            min_speed_kmh=min_speed_kmh,
            max_speed_kmh=max_speed_kmh,
            wrong_way_only=wrong_way_only,
            **page.fields(),
        )
        call = upstreams.analytics.ListPassages(
            request, metadata=forwarded(authorization), timeout=CALL_TIMEOUT_S
        )
        return _json(await call)

    @router.get("/api/analytics/violations", summary="Rule violations (camera and telemetry)")
    async def violations(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/analytics/violations"))],
        page: Annotated[Page, Depends()],
        camera_id: OptionalIds = None,
        device_id: OptionalIds = None,
        kind: OptionalIds = None,
        min_severity: Severity = None,
        track_id: str = "",
    ) -> JSONResponse:
        request = analytics_pb2.ListViolationsRequest(
            camera_ids=camera_id or [],
            device_ids=device_id or [],
            kinds=enum_values(events_pb2.ViolationKind, "VIOLATION_KIND", kind, "kind"),
            min_severity=_severity(min_severity),
            track_id=track_id,
            **page.fields(),
        )
        call = upstreams.analytics.ListViolations(
            request, metadata=forwarded(authorization), timeout=CALL_TIMEOUT_S
        )
        return _json(await call)

    @router.get("/api/analytics/anomalies", summary="Flow and speed anomalies")
    async def anomalies(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/analytics/anomalies"))],
        page: Annotated[Page, Depends()],
        camera_id: OptionalIds = None,
        lane_id: OptionalIds = None,
        kind: OptionalIds = None,
        min_severity: Severity = None,
    ) -> JSONResponse:
        request = analytics_pb2.ListAnomaliesRequest(
            camera_ids=camera_id or [],
            lane_ids=lane_id or [],
            kinds=enum_values(events_pb2.AnomalyKind, "ANOMALY_KIND", kind, "kind"),
            min_severity=_severity(min_severity),
            **page.fields(),
        )
        call = upstreams.analytics.ListAnomalies(
            request, metadata=forwarded(authorization), timeout=CALL_TIMEOUT_S
        )
        return _json(await call)

    return router


def _severity(name: str | None) -> Any:
    return 0 if not name else enum_value(common_pb2.Severity, "SEVERITY", name, "min_severity")


def _safe(filename: str) -> str:
    """A file name safe inside a quoted Content-Disposition value."""
    return "".join(c for c in filename if c.isalnum() or c in "._-") or "metrics.csv"
