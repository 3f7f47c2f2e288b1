"""The request check every server runs inside its interceptor chain: unusable requests
(``mesh.request_checks``) end with INVALID_ARGUMENT naming the field before any handler sees them."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from mesh.interceptors._rpc import Context
from mesh.request_checks import request_violations
from mesh.status import StatusError, abort_with_error, raise_for_violations


async def reject_unusable_requests(request: Any, context: Context) -> None:
    """Abort with INVALID_ARGUMENT (BadRequest details) when ``request`` has violations; else return."""
    if not isinstance(request, Message):
        return  # a raw-bytes handler (no deserializer) reads its own input
    violations = request_violations(request)
    if violations:
        try:
            raise_for_violations(violations)
        except StatusError as error:
            await abort_with_error(context, error)
