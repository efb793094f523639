"""Request ids: one per client request, carried from the coordinator to storage nodes and into logs.

A coordinator takes the caller's `x-request-id` metadata or makes one; every
storage-node call it makes on that request's behalf carries it on, and every
log line of either process names it (structlog contextvars).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import AsyncIterator
from typing import Any

import structlog

from pairdb.serving.interception import ServicerContext, Stream, Unary

HEADER = "x-request-id"
_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current() -> str:
    return _current.get()


def bind(request_id: str) -> None:
    _current.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)


def outgoing() -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata passing the current request id on, if there is one."""
    rid = _current.get()
    return ((HEADER, rid),) if rid else None


def _from(context: ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == HEADER and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return os.urandom(8).hex()


class RequestIds:
    """Wrapper binding each call's request id for its duration (each RPC runs in its own task)."""

    def unary(self, method: str, inner: Unary) -> Unary:
        async def bound(request: Any, context: ServicerContext) -> Any:
            bind(_from(context))
            return await inner(request, context)

        return bound

    def stream(self, method: str, inner: Stream) -> Stream:
        async def bound(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
            bind(_from(context))
            async for reply in inner(request, context):
                yield reply

        return bound
