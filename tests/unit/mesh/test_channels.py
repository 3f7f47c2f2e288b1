"""The per-endpoint channel pool: lazy channels, cached multicallables, retirement after the last call.

Channels connect lazily, so none of this needs a server.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mesh.channels import ChannelPool

ADDRESS = "127.0.0.1:1"
METHOD = "/itsmesh.v1.StreamingService/GetCamera"


async def _is_closed(channel: grpc.aio.Channel) -> bool:
    try:
        channel.unary_unary(METHOD)(b"", timeout=0.01).cancel()
    except grpc.aio.UsageError:
        return True
    return False


async def test_a_channel_is_opened_once_per_address_and_its_multicallables_are_cached():
    pool = ChannelPool()
    try:
        assert pool.existing(ADDRESS) is None
        endpoint = pool.get(ADDRESS)
        assert pool.get(ADDRESS) is endpoint
        assert pool.existing(ADDRESS) is endpoint
        assert ADDRESS in pool
        assert endpoint.unary_unary(METHOD, None, None) is endpoint.unary_unary(METHOD, None, None)
        assert endpoint.stream_stream(METHOD, None, None) is not endpoint.unary_unary(METHOD, None, None)
        assert pool.addresses == [ADDRESS]
    finally:
        await pool.close()


async def test_a_retired_channel_closes_once_its_last_call_ends():
    pool = ChannelPool(close_grace_s=30.0)
    try:
        endpoint = pool.get(ADDRESS)
        endpoint.call_started()
        endpoint.call_started()
        pool.retire(ADDRESS)
        assert ADDRESS not in pool
        assert pool.get(ADDRESS) is not endpoint, "a new channel replaces the retiring one"
        endpoint.call_ended()
        await asyncio.sleep(0.05)
        assert not await _is_closed(endpoint.channel), "one call still runs on it"
        endpoint.call_ended()
        await asyncio.sleep(0.05)
        assert await _is_closed(endpoint.channel)
        pool.retire("127.0.0.1:2")  # never opened: nothing happens
    finally:
        await pool.close()


async def test_a_retired_channel_closes_after_the_grace_even_if_calls_still_run():
    pool = ChannelPool(close_grace_s=0.05)
    try:
        endpoint = pool.get(ADDRESS)
        endpoint.call_started()
        pool.retire(ADDRESS)
        await asyncio.sleep(0.2)
        assert await _is_closed(endpoint.channel)
    finally:
        await pool.close()


async def test_close_closes_open_and_retiring_channels_and_opens_no_more():
    pool = ChannelPool(close_grace_s=30.0)
    retiring = pool.get(ADDRESS)
    retiring.call_started()
    pool.retire(ADDRESS)
    still_open = pool.get("127.0.0.1:2")
    await pool.close()
    assert await _is_closed(retiring.channel)
    assert await _is_closed(still_open.channel)
    with pytest.raises(RuntimeError, match="closed"):
        pool.get(ADDRESS)


def test_grace_must_not_be_negative():
    with pytest.raises(ValueError, match="close_grace_s"):
        ChannelPool(close_grace_s=-1.0)
