"""Dashboard routes that read the services for the caller: camera list, thumbnails, alert feed, acknowledge.

Each call carries the caller's token, so a viewer sees what a viewer may see and only an operator can
acknowledge; the services enforce it, the console checks the route permission first.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route signatures, which name
# dependencies built inside the router function.
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from itsmesh.v1 import alert_pb2, common_pb2, streaming_pb2
from services.console.access import RouteGuard
from services.console.upstream import CALL_TIMEOUT_S, Upstreams, forwarded

_NO_CACHE: Final = {"Cache-Control": "no-cache"}
_ALERT_STATUS: Final = {
    "firing": common_pb2.ALERT_STATUS_FIRING,
    "acknowledged": common_pb2.ALERT_STATUS_ACKNOWLEDGED,
    "resolved": common_pb2.ALERT_STATUS_RESOLVED,
}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "no or invalid token"},
    403: {"description": "the token lacks the route's permission"},
    503: {"description": "the service is not reachable"},
}


def as_json(message: Message) -> dict[str, Any]:
    """A proto message as JSON with proto field names and enum names."""
    return MessageToDict(message, preserving_proto_field_name=True)


def operations_router(guard: RouteGuard, upstreams: Upstreams) -> APIRouter:
    """Routes under /api/cameras and /api/alerts."""
    router = APIRouter()

    @router.get(
        "/api/cameras",
        tags=["dashboard"],
        summary="Live status of every camera (streaming service), for the thumbnail grid",
        responses=_ERRORS,
    )
    async def cameras(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/cameras"))],
        page_size: Annotated[int, Query(ge=0, le=1000)] = 0,
        page_token: str = "",
    ) -> Any:
        request = streaming_pb2.ListCameraStatusesRequest(page_size=page_size, page_token=page_token)
        answer = await upstreams.streaming.ListCameraStatuses(
            request, metadata=forwarded(authorization), timeout=CALL_TIMEOUT_S
        )
        body = {
            "cameras": [as_json(s) for s in answer.statuses],
            "online_count": answer.online_count,
            "registered_count": answer.registered_count,
            "next_page_token": answer.next_page_token,
        }
        return _json(body)

    @router.get(
        "/api/cameras/{camera_id}/thumbnail",
        tags=["dashboard"],
        summary="The camera's latest frame as JPEG (kept about 30 s by streaming)",
        response_class=Response,
        responses={**_ERRORS, 200: {"content": {"image/jpeg": {}}}, 404: {"description": "no recent frame"}},
    )
    async def thumbnail(
        authorization: Annotated[
            str | None, Depends(guard.require("GET /api/cameras/{camera_id}/thumbnail"))
        ],
        camera_id: Annotated[str, Path(min_length=1, max_length=128)],
    ) -> Response:
        frame = await upstreams.streaming.GetLatestFrame(
            streaming_pb2.GetLatestFrameRequest(camera_id=camera_id),
            metadata=forwarded(authorization),
            timeout=CALL_TIMEOUT_S,
        )
        headers = {**_NO_CACHE, "X-Frame-Sequence": str(frame.sequence)}
        if frame.HasField("capture_time"):
            headers["X-Capture-Time"] = frame.capture_time.ToJsonString()
        return Response(frame.jpeg, media_type="image/jpeg", headers=headers)

    @router.get(
        "/api/alerts",
        tags=["dashboard"],
        summary="Open alerts (alert service), most severe first, for the alert feed",
        responses=_ERRORS,
    )
    async def alerts(
        authorization: Annotated[str | None, Depends(guard.require("GET /api/alerts"))],
        status: Annotated[list[Literal["firing", "acknowledged", "resolved"]] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> Any:
        statuses = [_ALERT_STATUS[s] for s in status or ("firing", "acknowledged")]
        answer = await upstreams.alert.ListAlerts(
            alert_pb2.ListAlertsRequest(statuses=statuses, page_size=limit),
            metadata=forwarded(authorization),
            timeout=CALL_TIMEOUT_S,
        )
        ordered = sorted(
            answer.alerts,
            key=lambda a: (
                a.status != common_pb2.ALERT_STATUS_FIRING,
                -a.severity,
                -a.last_seen_time.seconds,
            ),
        )
        return _json({"alerts": [as_json(a) for a in ordered], "total_size": answer.total_size})

    @router.post(
        "/api/alerts/{alert_id}/acknowledge",
        tags=["dashboard"],
        summary="Acknowledge an alert (operator); the alert service records who did",
        responses={**_ERRORS, 404: {"description": "no such alert"}},
    )
    async def acknowledge(
        authorization: Annotated[
            str | None, Depends(guard.require("POST /api/alerts/{alert_id}/acknowledge"))
        ],
        alert_id: Annotated[str, Path(min_length=1, max_length=128)],
        comment: Annotated[str, Body(embed=True, max_length=1000)] = "",
    ) -> Any:
        alert = await upstreams.alert.AcknowledgeAlert(
            alert_pb2.AcknowledgeAlertRequest(alert_id=alert_id, comment=comment),
            metadata=forwarded(authorization),
            timeout=CALL_TIMEOUT_S,
        )
        return _json(as_json(alert))

    return router


def _json(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers=_NO_CACHE)
