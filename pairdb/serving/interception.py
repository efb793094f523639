"""The one server interceptor: wraps every method's handler, once, in what must run around each call.

A Wrapper turns a method's behaviour (a coroutine function for unary calls,
an async generator function for server streams) into one that does something
around it: guard the request, bind its id, count and time it. The interceptor
builds each method's wrapped handler the first time the method is called and
keeps it, so a call pays only for the wrappers' own work: no interceptor
chain to await, no handler rebuilt per call. Only methods that exist are
kept, so unknown names cannot grow the cache.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

Handler = Any  # grpc.RpcMethodHandler: grpc-stubs types its behaviours as sync callables
# What every gRPC handler is given (the stubs leave its type open).
ServicerContext = grpc.aio.ServicerContext[Any, Any]
Unary = Callable[[Any, ServicerContext], Awaitable[Any]]
Stream = Callable[[Any, ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]


class Wrapper(Protocol):
    def unary(self, method: str, inner: Unary) -> Unary: ...

    def stream(self, method: str, inner: Stream) -> Stream: ...


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        wrappers: Sequence[Wrapper],
        deserializer: Callable[[Deserializer], Deserializer] | None = None,
    ) -> None:
        """wrappers: outermost first. deserializer: wraps each method's request parser."""
        self._wrappers = list(reversed(wrappers))
        self._deserializer = deserializer
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = await continuation(details)
            if handler is None or handler.request_streaming:  # unknown method: UNIMPLEMENTED
                return handler
            handler = self._handlers[method] = self._wrap(method, handler)
        return handler

    def _wrap(self, method: str, handler: Handler) -> Handler:
        parse = handler.request_deserializer
        if parse is not None and self._deserializer is not None:
            parse = self._deserializer(parse)
        if handler.unary_unary is not None:
            unary: Unary = handler.unary_unary
            for wrapper in self._wrappers:
                unary = wrapper.unary(method, unary)
            return grpc.unary_unary_rpc_method_handler(unary, parse, handler.response_serializer)
        if handler.unary_stream is not None:
            stream: Stream = handler.unary_stream
            for wrapper in self._wrappers:
                stream = wrapper.stream(method, stream)
            return grpc.unary_stream_rpc_method_handler(stream, parse, handler.response_serializer)
        return handler
