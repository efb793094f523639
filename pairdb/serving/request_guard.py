"""Guards every gRPC server of pairdb (coordinator and storage node) against malformed requests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from pairdb.serving.interception import ServicerContext

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in grpc-stubs


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler of a server (the coordinator's too) so that

    - a request that does not parse (bad wire format, invalid UTF-8) gets INVALID_ARGUMENT:
      grpc.aio answers it with UNKNOWN ("Unexpected DecodeError"), a server bug to the caller;
    - an aborted call frees its request at once: grpc keeps the abort exception on the call, in
      a reference cycle, and the exception's traceback keeps every handler frame and its request
      (up to 64 MB) alive until a full garbage collection, so bad large requests piled up.
    """

    def __init__(self) -> None:
        # Wrapped once per method; only methods that exist, so unknown names cannot grow it.
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        if method not in self._handlers:
            handler = await continuation(handler_call_details)
            if handler is None:  # no such method: grpc answers UNIMPLEMENTED
                return handler
            self._handlers[method] = _guarded(handler)
        return self._handlers[method]


@dataclass(frozen=True, slots=True)
class _Malformed:
    reason: str


def _guarded(handler: Handler) -> Handler:
    parse = handler.request_deserializer
    if parse is None or handler.request_streaming:
        return handler

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return _Malformed(str(exc))

    # Typed by grpc-stubs as sync callables; ours are coroutines and async generators.
    unary: Any = handler.unary_unary
    if unary is not None:

        async def unary_unary(request: Any, context: ServicerContext) -> Any:
            try:
                await _refuse_malformed(request, context)
                return await unary(request, context)
            except grpc.aio.AbortError as exc:
                del request
                raise _detached(exc) from None

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)
    stream: Any = handler.unary_stream

    async def unary_stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
        try:
            await _refuse_malformed(request, context)
            async for reply in stream(request, context):
                yield reply
        except grpc.aio.AbortError as exc:
            del request
            raise _detached(exc) from None

    return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)


async def _refuse_malformed(request: object, context: ServicerContext) -> None:
    if isinstance(request, _Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.reason}")


def _detached(exc: grpc.aio.AbortError) -> grpc.aio.AbortError:
    """exc without the frames it holds; grpc needs the same exception object back."""
    exc.__context__ = None
    return exc.with_traceback(None)
