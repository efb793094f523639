"""Request ids: one per client request, carried from the coordinator to storage nodes and into logs.

A coordinator takes the caller's `x-request-id` metadata or makes one; every
storage-node call it makes on that request's behalf carries it on, and every
log line of either process names it (structlog contextvars).
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

HEADER = "x-request-id"
_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

Handler = Any  # grpc.RpcMethodHandler: grpc-stubs types its behaviours as sync callables


def current() -> str:
    return _current.get()


def bind(request_id: str) -> None:
    _current.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)


def outgoing() -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata passing the current request id on, if there is one."""
    rid = _current.get()
    return ((HEADER, rid),) if rid else None


def _from(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == HEADER and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return uuid.uuid4().hex[:16]


class RequestIdInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler = await continuation(details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                bind(_from(context))  # each RPC runs in its own task: its own context
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                bind(_from(context))
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
