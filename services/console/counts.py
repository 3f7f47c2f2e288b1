"""Cameras streaming, frames per second and open alerts for the status vector, asked of the services.

Called once per tick with the console's service token. Each figure comes from one read; a service that
does not answer leaves its figures out (shown as n/a), never stale.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from itsmesh.v1 import alert_pb2, common_pb2, streaming_pb2
from services.console.upstream import Upstreams

CAMERA_PAGE: Final = 1000
"""Camera statuses read per tick for the frame rate (the streaming API's page limit)."""
COUNT_TIMEOUT_S: Final = 0.7


async def _cameras(upstreams: Upstreams) -> dict[str, Any]:
    answer = await upstreams.streaming.ListCameraStatuses(
        streaming_pb2.ListCameraStatusesRequest(page_size=CAMERA_PAGE), timeout=COUNT_TIMEOUT_S
    )
    return {
        "cameras_streaming": answer.online_count,
        "cameras_registered": answer.registered_count,
        "frames_per_second": round(sum(s.frames_per_second for s in answer.statuses), 3),
    }


async def _alerts(upstreams: Upstreams) -> dict[str, Any]:
    open_request = alert_pb2.ListAlertsRequest(
        statuses=[common_pb2.ALERT_STATUS_FIRING, common_pb2.ALERT_STATUS_ACKNOWLEDGED], page_size=1
    )
    firing_request = alert_pb2.ListAlertsRequest(statuses=[common_pb2.ALERT_STATUS_FIRING], page_size=1)
    opened, firing = await asyncio.gather(
        upstreams.alert.ListAlerts(open_request, timeout=COUNT_TIMEOUT_S),
        upstreams.alert.ListAlerts(firing_request, timeout=COUNT_TIMEOUT_S),
    )
    return {"open_alerts": opened.total_size, "firing_alerts": firing.total_size}


async def mesh_counts(upstreams: Upstreams) -> dict[str, Any]:
    """Whatever of the figures the services gave; a failing service's figures are left out."""
    results = await asyncio.gather(_cameras(upstreams), _alerts(upstreams), return_exceptions=True)
    counts: dict[str, Any] = {}
    for result in results:
        if isinstance(result, dict):
            counts.update(result)
        elif not isinstance(result, Exception):  # cancellation passes through
            raise result
    return counts
