"""Guards every gRPC server of pairdb (coordinator and storage node) against malformed requests.

- a request that does not parse (bad wire format, invalid UTF-8) gets INVALID_ARGUMENT:
  grpc.aio answers it with UNKNOWN ("Unexpected DecodeError"), a server bug to the caller;
- an aborted call frees its request at once: grpc keeps the abort exception on the call, in
  a reference cycle, and the exception's traceback keeps every handler frame and its request
  (up to 64 MB) alive until a full garbage collection, so bad large requests piled up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from pairdb.serving.interception import Deserializer, ServicerContext, Stream, Unary


@dataclass(frozen=True, slots=True)
class _Malformed:
    reason: str


def deserializer(parse: Deserializer) -> Deserializer:
    """parse, but a request that does not parse becomes a _Malformed the guard refuses."""

    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return deserialize


class RequestGuard:
    """The outermost wrapper: refuses malformed requests, detaches aborted calls from their frames."""

    def unary(self, method: str, inner: Unary) -> Unary:
        async def guarded(request: Any, context: ServicerContext) -> Any:
            try:
                if type(request) is _Malformed:
                    await _refuse(request, context)
                return await inner(request, context)
            except grpc.aio.AbortError as exc:
                del request
                raise _detached(exc) from None

        return guarded

    def stream(self, method: str, inner: Stream) -> Stream:
        async def guarded(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            try:
                if type(request) is _Malformed:
                    await _refuse(request, context)
                async for reply in inner(request, context):
                    yield reply
            except grpc.aio.AbortError as exc:
                del request
                raise _detached(exc) from None

        return guarded


async def _refuse(request: _Malformed, context: ServicerContext) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.reason}")


def _detached(exc: grpc.aio.AbortError) -> grpc.aio.AbortError:
    """exc without the frames it holds; grpc needs the same exception object back."""
    exc.__context__ = None
    return exc.with_traceback(None)
