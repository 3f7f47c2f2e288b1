"""The request deadline carried in a context variable, and the server interceptor that sets it."""

from __future__ import annotations

import asyncio
import inspect
import math
import time

import grpc
import pytest

from mesh.deadline import (
    DeadlinePropagationInterceptor,
    current_deadline,
    deadline_scope,
    effective_deadline,
    time_remaining,
)


@pytest.mark.parametrize(
    ("timeout", "inherited", "expected"),
    [
        (None, None, None),
        (2.0, None, 102.0),
        (None, 101.5, 101.5),
        (2.0, 101.5, 101.5),
        (0.5, 101.5, 100.5),
        (-1.0, None, 100.0),
    ],
)
def test_the_effective_deadline_is_the_earlier_of_timeout_and_inherited(timeout, inherited, expected):
    assert effective_deadline(100.0, timeout, inherited) == expected


def test_no_deadline_outside_a_request():
    assert current_deadline() is None
    assert time_remaining() is None


def test_deadline_scope_narrows_but_never_widens_and_restores():
    with deadline_scope(5.0) as outer:
        assert outer is not None
        assert current_deadline() == outer
        with deadline_scope(60.0) as wider:
            assert wider == outer
        with deadline_scope(1.0) as inner:
            assert inner is not None
            assert inner < outer
            remaining = time_remaining()
            assert remaining is not None
            assert 0.9 < remaining <= 1.0
        with deadline_scope(None) as unchanged:
            assert unchanged == outer
        assert current_deadline() == outer
    assert current_deadline() is None


class _Context:
    """Just enough of a grpc.aio.ServicerContext for the interceptor: the time left on the call."""

    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


async def _intercept(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def continuation(_details):
        return handler

    wrapped = await DeadlinePropagationInterceptor().intercept_service(continuation, None)
    assert wrapped is not None
    return wrapped


async def test_unary_handlers_run_with_the_calls_deadline():
    async def behaviour(request, context):
        return time_remaining()

    wrapped = await _intercept(grpc.unary_unary_rpc_method_handler(behaviour))
    assert inspect.iscoroutinefunction(wrapped.unary_unary)
    seen = await asyncio.create_task(wrapped.unary_unary(None, _Context(2.0)))
    assert seen is not None
    assert 1.9 < seen <= 2.0
    assert await asyncio.create_task(wrapped.unary_unary(None, _Context(None))) is None


async def test_async_generator_handlers_stay_generators_and_see_the_deadline():
    async def behaviour(request, context):
        yield current_deadline()

    wrapped = await _intercept(grpc.unary_stream_rpc_method_handler(behaviour))
    assert inspect.isasyncgenfunction(wrapped.unary_stream)

    async def first() -> float | None:
        async for item in wrapped.unary_stream(None, _Context(3.0)):
            return item
        return math.nan

    before = time.monotonic()
    deadline = await asyncio.create_task(first())
    assert deadline is not None
    assert before + 2.9 < deadline <= time.monotonic() + 3.0


async def test_plain_function_handlers_are_left_untouched():
    def behaviour(request, context):
        return None

    wrapped = await _intercept(grpc.stream_unary_rpc_method_handler(behaviour))
    assert wrapped.stream_unary is behaviour, "a placeholder must stay recognisable to the outer interceptors"


async def test_unknown_methods_pass_through_as_none():
    async def continuation(_details):
        return None

    assert await DeadlinePropagationInterceptor().intercept_service(continuation, None) is None
