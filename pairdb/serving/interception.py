"""Server interceptors that run something around every RPC, unary and server-streaming alike.

An interceptor here is one async context manager per call: entered before the
handler runs, exited after its last response (or its error).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Handler = Any  # grpc.RpcMethodHandler: grpc-stubs types its behaviours as sync callables
# What every gRPC handler is given (the stubs leave its type open).
ServicerContext = grpc.aio.ServicerContext[Any, Any]
# (full method name, call context) -> what to run around the call
Around = Callable[[str, ServicerContext], AbstractAsyncContextManager[None]]


class AroundInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, around: Around) -> None:
        self._around = around

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler = await continuation(details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED
            return handler
        around, method = self._around, details.method
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: ServicerContext) -> Any:
                async with around(method, context):
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                async with around(method, context):
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
