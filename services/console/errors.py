"""The console's one mapping of failures to HTTP answers: its own auth errors and the services' gRPC errors.

A gRPC status becomes the HTTP status a REST client expects (INVALID_ARGUMENT → 400, NOT_FOUND → 404,
UNAVAILABLE → 503 …) with a JSON body carrying the code, message, reason and the field violations, each
field named as the REST caller spelled it (``end``, not ``time_range.end_time``) beside the proto path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import grpc
from fastapi.responses import JSONResponse

from mesh.status import (
    StatusDetails,
    StatusError,
    details_from_trailers,
    http_status,
    status_details,
    status_trailers,
)

REST_FIELDS: Final[Mapping[str, str]] = {
    "camera_ids": "camera_id",
    "device_ids": "device_id",
    "lane_ids": "lane_id",
    "line_ids": "line_id",
    "object_classes": "object_class",
    "kinds": "kind",
    "metrics": "metric",
    "time_range": "start",
    "time_range.start_time": "start",
    "time_range.end_time": "end",
    "bucket": "bucket_s",
}
"""Proto field path → the REST parameter carrying it, where the two differ."""

_INDEX: Final = re.compile(r"\[\d+\]")
_NO_CACHE: Final = {"Cache-Control": "no-cache"}


def rest_field(proto_field: str) -> str:
    """The REST parameter for a proto field path (``camera_ids[2]`` → ``camera_id``)."""
    bare = _INDEX.sub("", proto_field)
    return REST_FIELDS.get(bare, bare)


def error_body(details: StatusDetails) -> tuple[int, dict[str, Any], dict[str, str]]:
    """HTTP status, JSON body and headers for a failed call's decoded status."""
    status = http_status(details.code)
    violations = [
        {"field": rest_field(name), "rpc_field": name, "description": why}
        for name, why in details.field_violations
    ]
    body: dict[str, Any] = {
        "error": details.code.name.lower(),
        "error_description": details.message,
        "reason": details.reason or details.code.name,
        "field": violations[0]["field"] if violations else None,
        "field_violations": violations,
    }
    headers = dict(_NO_CACHE)
    if details.retry_delay_s is not None:
        headers["Retry-After"] = str(max(1, round(details.retry_delay_s)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return status, body, headers


def invalid_argument(field: str, description: str) -> StatusError:
    """A 400 naming one REST parameter, raised where the console itself validates a request."""
    return StatusError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {description}", field_violations=[(field, description)]
    )


def status_error_response(error: StatusError) -> JSONResponse:
    """The HTTP answer for the console's own StatusError (auth, validation)."""
    details = details_from_trailers(error.grpc_code, error.message, status_trailers(error.status))
    status, body, headers = error_body(details)
    return JSONResponse(body, status_code=status, headers=headers)


def rpc_error_response(error: grpc.aio.AioRpcError) -> JSONResponse:
    """The HTTP answer for a failed call to another service."""
    status, body, headers = error_body(status_details(error))
    return JSONResponse(body, status_code=status, headers=headers)
