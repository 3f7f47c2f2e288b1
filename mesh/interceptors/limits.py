"""A concurrency limit: at most N RPCs at once, the rest told to come back shortly.

Shedding at the door keeps latency bounded when callers outrun the server: an over-limit RPC is answered
at once with RESOURCE_EXHAUSTED, a ``RetryInfo`` (how long to wait) and an ``ErrorInfo`` with reason
``CONCURRENCY_LIMIT``, instead of queueing behind the others until its deadline passes. A stream holds its
slot for as long as it is open. Health checks and reflection never take a slot, so an overloaded instance
still answers its probes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import grpc

from mesh.interceptors._rpc import (
    Context,
    Proceed,
    RpcInfo,
    WrappingServerInterceptor,
    is_infrastructure_method,
)
from mesh.status import abort_with

CONCURRENCY_LIMIT_REASON: Final = "CONCURRENCY_LIMIT"
"""``ErrorInfo.reason`` of an RPC shed by the limit."""

DEFAULT_RETRY_DELAY_S: Final = 0.1


class ConcurrencyLimiter:
    """Counts RPCs in flight against a fixed limit; pure bookkeeping, no I/O and no waiting."""

    __slots__ = ("_in_flight", "_rejected", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the concurrency limit must be at least 1")
        self.limit = limit
        self._in_flight = 0
        self._rejected = 0

    @property
    def in_flight(self) -> int:
        """RPCs holding a slot now."""
        return self._in_flight

    @property
    def rejected(self) -> int:
        """RPCs refused since start."""
        return self._rejected

    def try_acquire(self) -> bool:
        """Take a slot if one is free; False (and counted as rejected) if the limit is reached."""
        if self._in_flight >= self.limit:
            self._rejected += 1
            return False
        self._in_flight += 1
        return True

    def release(self) -> None:
        """Give back a slot taken by ``try_acquire``."""
        if self._in_flight == 0:
            raise RuntimeError("release() without a matching try_acquire()")
        self._in_flight -= 1


class ConcurrencyLimitInterceptor(WrappingServerInterceptor):
    """Answers RESOURCE_EXHAUSTED with RetryInfo once ``limiter.limit`` RPCs are already running."""

    def __init__(
        self,
        max_concurrent: int,
        *,
        retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
        exempt: Callable[[str], bool] = is_infrastructure_method,
    ) -> None:
        super().__init__()
        if not retry_delay_s >= 0:
            raise ValueError("retry_delay_s must be a non-negative number")
        self.limiter = ConcurrencyLimiter(max_concurrent)
        self._retry_delay_s = retry_delay_s
        self._exempt = exempt

    def applies_to(self, path: str) -> bool:
        return not self._exempt(path)

    async def around(self, info: RpcInfo, context: Context, proceed: Proceed) -> Any:
        limiter = self.limiter
        if not limiter.try_acquire():
            await abort_with(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server is at its limit of {limiter.limit} concurrent RPCs; retry shortly",
                reason=CONCURRENCY_LIMIT_REASON,
                metadata={"limit": str(limiter.limit), "method": info.name},
                retry_delay_s=self._retry_delay_s,
            )
        try:
            return await proceed()
        finally:
            limiter.release()
