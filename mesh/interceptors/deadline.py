"""The deadline of each RPC as the default of the mesh calls its handler makes, as a link of the chain.

The same job as ``mesh.deadline.DeadlinePropagationInterceptor``, done inside ``server_interceptors``'
single grpc.aio hop (``propagate_deadline=True``) instead of a hop of its own.
"""

from __future__ import annotations

from typing import Any

from mesh.deadline import adopt_deadline
from mesh.interceptors._rpc import Context, Proceed, RpcInfo, WrappingServerInterceptor


class DeadlineLink(WrappingServerInterceptor):
    """Sets ``mesh.deadline.current_deadline()`` from the RPC's deadline before the handler runs."""

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        adopt_deadline(context)
        return await proceed()
