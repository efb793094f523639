"""Every pairdb server bounds the RPCs it runs at once: the next ones are refused, not queued."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from pairdb.serving.server import new_server

METHOD = "/test.Blocking/Wait"


async def test_rpcs_beyond_the_bound_get_resource_exhausted_and_the_bound_frees_up() -> None:
    release = asyncio.Event()
    both_started = asyncio.Event()
    started = 0

    async def wait(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await release.wait()
        return request

    server = new_server(maximum_concurrent_rpcs=2)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Blocking", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD, None, None)
            held = [asyncio.ensure_future(call(b"x", timeout=30)) for _ in range(2)]
            await both_started.wait()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"y", timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            assert await asyncio.gather(*held) == [b"x", b"x"]
            assert await call(b"z", timeout=30) == b"z"  # room again
    finally:
        await server.stop(None)
